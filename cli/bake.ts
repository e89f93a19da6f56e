/** `hollowc bake`: a trained LoRA folded into a compiled folder's infer.onnx (cli/api/bake.ts). */
import { Command } from 'commander';
import { bakeCompiled } from './api/bake';

export function registerBake(program: Command): void {
  program
    .command('bake')
    .description('write infer.onnx with trained LoRA folded into the weights only the personalized path uses')
    .argument('<out>', 'a compiled output folder')
    .requiredOption('--lora <file>', 'trained LoRA (safetensors, peft or kohya keys)')
    .option('-o, --output <file>', 'baked model file (default <out>/infer-baked.onnx)')
    .action((out: string, opts: { lora: string; output?: string }) => {
      const result = bakeCompiled(out, opts.lora, opts.output);
      process.stdout.write(
        `baked ${opts.lora} into ${result.file}: ${result.folded} layers folded into their weights, ${result.kept} kept as low-rank branches (weights shared with the base path)\n`,
      );
    });
}
