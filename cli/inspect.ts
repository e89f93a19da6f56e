/** `hollowc inspect`: the block table and valid cuts of a UNet (cli/api/inspect.ts). */
import { Command } from 'commander';
import { inspectJson, inspectText } from './api/inspect';
import { loadUNet } from './api/unet';

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('show the block structure, parameter counts and valid cuts of a UNet (.onnx)')
    .argument('<model>', 'UNet exported to ONNX, a folder holding model.onnx, or a pipeline folder (external data is referenced, never read)')
    .option('--json', 'print one JSON object instead of tables')
    .action((file: string, opts: { json?: boolean }) => {
      const unet = loadUNet(file);
      process.stdout.write(opts.json ? JSON.stringify(inspectJson(unet.analysis), null, 2) + '\n' : inspectText(unet.analysis, unet.file));
    });
}
