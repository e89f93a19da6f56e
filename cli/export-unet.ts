/** `hollowc export-unet`: a fine-tuned UNet (`train base`, LoRA folded in) as a diffusers UNet folder or an ONNX UNet. */
import { Command, Option } from 'commander';
import { UNET_EXPORT_FORMATS, UnetExportFormat, exportUnet } from './api/export-unet';
import { out } from './options';

export function registerExportUnet(program: Command): void {
  program
    .command('export-unet')
    .description(
      'write the fine-tuned UNet (trained base weights, any trained LoRA folded in) as a diffusers UNet folder (UNet2DConditionModel.from_pretrained) or as an ONNX UNet (the source graph with the new weights)',
    )
    .argument('<out>', 'a compiled folder a run trained in')
    .addOption(
      new Option('--format <format>', 'diffusers: config.json + diffusion_pytorch_model.safetensors; onnx: model.onnx + model.onnx_data')
        .choices([...UNET_EXPORT_FORMATS])
        .default('diffusers'),
    )
    .requiredOption('-o, --output <folder>', 'folder to write (replaced when it exists)')
    .option('--model <unet.onnx>', 'the source UNet, when it moved since compile (checked against its sha256)')
    .option('--config <config.json>', 'diffusers: the UNet config (default: config.json beside the source model)')
    .option('--pipeline <folder>', 'onnx: write a pipeline folder with this UNet, its other components hard-linked from <folder>')
    .action((dir: string, o: { format: UnetExportFormat; output: string; model?: string; config?: string; pipeline?: string }) => {
      const r = exportUnet({ out: dir, format: o.format, output: o.output, model: o.model, config: o.config, pipeline: o.pipeline });
      out(
        `wrote ${r.output} (${o.format}): ${r.parameters} parameters, ${r.changed} of them fine-tuned; ${r.files.filter((f) => !f.includes('/') || f.startsWith('unet/')).join(', ')}`,
      );
    });
}
