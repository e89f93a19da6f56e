/**
 * export: what the run trained, for other tools. A LoRA: run/lora.safetensors (diffusers) and
 * run/lora-kohya.safetensors for the original UNet. Base weights (`train base`): the fine-tuned UNet,
 * any LoRA folded in, as an ONNX pipeline folder run/pipeline/ (the source's other components beside
 * it; generate --model) and as a diffusers UNet folder run/unet-diffusers/.
 */
import * as fs from 'fs';
import * as path from 'path';
import { exportLora } from '../../train/export-lora';
import { DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE } from '../run-folder';
import { Stage, killPoint } from '../stage-runner';
import { StageContext, manifestOf, trainedParts } from './context';

/** A file of each export, whose presence says it was written whole (every export is renamed into place). */
const PIPELINE_UNET = path.join('unet', 'model.onnx');
const DIFFUSERS_WEIGHTS = 'diffusion_pytorch_model.safetensors';

export function exportStage(ctx: StageContext): Stage {
  const { s, dirs } = ctx;
  const loraFiles = [DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE].map((f) => path.join(dirs.out, f));
  const unetFiles = [path.join(dirs.pipeline, PIPELINE_UNET), path.join(dirs.diffusersUnet, DIFFUSERS_WEIGHTS)];
  const expected = () => {
    const parts = trainedParts(manifestOf(ctx));
    return [...(parts.lora ? loraFiles : []), ...(parts.base ? unetFiles : [])];
  };
  return {
    name: 'export',
    key: ctx.keys.export,
    valid: () => expected().every((f) => fs.existsSync(f)),
    clean: () => [...loraFiles, dirs.pipeline, dirs.diffusersUnet].forEach((f) => fs.rmSync(f, { recursive: true, force: true })),
    run: async () => {
      const m = manifestOf(ctx);
      const parts = trainedParts(m);
      const said: string[] = [];
      if (parts.lora) {
        const d = exportLora({ out: dirs.compiled, format: 'diffusers', output: loraFiles[0] });
        killPoint('export');
        exportLora({ out: dirs.compiled, format: 'kohya', output: loraFiles[1] });
        said.push(
          `${DIFFUSERS_LORA_FILE} (diffusers, scale ${m.lora.alpha}/${m.lora.rank} folded in) and ${KOHYA_LORA_FILE} (kohya): ${d.modules} modules, ${d.parameters.toLocaleString('en-US')} parameters`,
        );
      }
      if (parts.base) {
        const u = ctx.exportUnet(dirs.compiled, s.folder.dir, { onnx: dirs.pipeline, diffusers: dirs.diffusersUnet });
        said.push(
          `the fine-tuned UNet${parts.lora ? ' (LoRA folded in)' : ''} as an ONNX pipeline folder ${path.basename(dirs.pipeline)}/ and a diffusers UNet folder ${path.basename(dirs.diffusersUnet)}/: ${u.changed} of ${u.parameters} tensors changed`,
        );
      }
      return { summary: said.join('; ') };
    },
  };
}
