/** `hollowc export-lora`: the trained LoRA as a peft or kohya file for the original UNet. */
import { Command, Option } from 'commander';
import { exportLora } from '../runtime/export-lora';
import { LoraFormat } from '../runtime/lora-file';
import { out } from './options';

export function registerExportLora(program: Command): void {
  program
    .command('export-lora')
    .description('write the trained LoRA for the original UNet in peft (diffusers) or kohya (A1111, ComfyUI) layout')
    .argument('<out>', 'a compiled folder')
    .addOption(new Option('--format <format>', 'key layout').choices(['peft', 'kohya']).default('peft'))
    .requiredOption('-o, --output <file>', 'LoRA file to write (.safetensors)')
    .option('--from <source>', '"checkpoint" (the last training checkpoint), a checkpoint file, or a LoRA file (default <out>/lora.safetensors)')
    .action((dir: string, o: { format: LoraFormat; output: string; from?: string }) => {
      const r = exportLora({ out: dir, format: o.format, output: o.output, from: o.from });
      out(`wrote ${r.file} (${o.format}): ${r.modules} modules, ${r.parameters.toLocaleString('en-US')} parameters, from ${r.source}`);
    });
}
