/** `hollowc compile`: a UNet and a .hollow spec into a folder of artifacts (cli/api/compile-spec.ts). */
import { Command } from 'commander';
import { CompileOptions, compileFromSpec } from './api/compile-spec';
import { RewriteSites, rewriteSummary } from '../passes/compile-unet';

export function registerCompile(program: Command): void {
  program
    .command('compile')
    .description('compile a UNet and a .hollow spec into precompute/train/grads/infer artifacts')
    .argument('<unet>', 'UNet exported to ONNX')
    .argument('<spec>', '.hollow spec')
    .requiredOption('-o, --out <dir>', 'output folder')
    .option('--lora-init <file>', "initial LoRA weights (safetensors, peft or kohya keys) instead of the spec's init")
    .option('-v, --verbose', 'log each artifact as it is built')
    .action((unet: string, spec: string, opts: CompileOptions) => {
      const started = Date.now();
      let rewrites: RewriteSites[] = [];
      const m = compileFromSpec(unet, spec, { ...opts, onRewrites: (s) => (rewrites = s) });
      const held = m.parameters.heldDuringTraining;
      const lines = [
        `compiled ${unet} (${m.family}, ${m.parameters.full.toLocaleString('en-US')} parameters) into ${opts.out}/ in ${((Date.now() - started) / 1000).toFixed(1)} s`,
        m.cut
          ? `  hollow: ${m.cut.hollowed.join(' ')} (${m.cut.removedParameters.toLocaleString('en-US')} parameters, ${(100 * m.cut.fraction).toFixed(1)}%), activation [${m.cut.hollowActivation.shape.join(', ')}]`
          : '  hollow: none (plain LoRA on the whole UNet)',
        `  held during training: ${held.toLocaleString('en-US')} base parameters + ${m.parameters.lora.toLocaleString('en-US')} LoRA parameters (rank ${m.lora.rank}, ${m.lora.targets.filter((t) => t.trained).length} layers)`,
        `  artifacts: ${Object.keys(m.artifacts)
          .map((a) => `${a}.onnx`)
          .join(' ')} + ${m.weights.join(' ')} + manifest.json + lora-init.safetensors`,
        ...rewriteSummary(rewrites),
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });
}
