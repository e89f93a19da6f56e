/** `hollowc export-lora`: the trained LoRA as a diffusers, peft or kohya file for the original UNet. */
import { Command, Option } from 'commander';
import { exportLora } from '../runtime/train/export-lora';
import { LORA_FORMATS, LoraFormat } from '../runtime/formats/lora-file';
import { out } from './options';

export function registerExportLora(program: Command): void {
  program
    .command('export-lora')
    .description(
      'write the trained LoRA for the original UNet in diffusers (load_lora_weights, any version), peft or kohya (A1111, ComfyUI) layout',
    )
    .argument('<out>', 'a compiled folder (refused while another hollowc, e.g. a train run, writes it)')
    .addOption(new Option('--format <format>', 'key layout').choices([...LORA_FORMATS]).default('peft'))
    .requiredOption('-o, --output <file>', 'LoRA file to write (.safetensors)')
    .option(
      '--from <source>',
      '"checkpoint" (the last training checkpoint), a checkpoint file, or a LoRA file (default <out>/lora.safetensors)',
    )
    .action((dir: string, o: { format: LoraFormat; output: string; from?: string }) => {
      const r = exportLora({ out: dir, format: o.format, output: o.output, from: o.from });
      out(
        `wrote ${r.file} (${o.format}): ${r.modules} modules, ${r.parameters.toLocaleString('en-US')} parameters, from ${r.source} (${r.run})`,
      );
      if (r.note) process.stderr.write(`hollowc: note: ${r.note}\n`);
    });
}
