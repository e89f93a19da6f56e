/** export: run/lora.safetensors (diffusers) and run/lora-kohya.safetensors for the original UNet. */
import * as fs from 'fs';
import * as path from 'path';
import { exportLora } from '../../train/export-lora';
import { DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE } from '../run-folder';
import { Stage, killPoint } from '../stage-runner';
import { StageContext, manifestOf } from './context';

export function exportStage(ctx: StageContext): Stage {
  const { dirs } = ctx;
  const files = [DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE].map((f) => path.join(dirs.out, f));
  return {
    name: 'export',
    key: ctx.keys.export,
    valid: () => files.every((f) => fs.existsSync(f)),
    clean: () => files.forEach((f) => fs.rmSync(f, { force: true })),
    run: async () => {
      const d = exportLora({ out: dirs.compiled, format: 'diffusers', output: files[0] });
      killPoint('export');
      exportLora({ out: dirs.compiled, format: 'kohya', output: files[1] });
      const m = manifestOf(ctx);
      return {
        summary: `${DIFFUSERS_LORA_FILE} (diffusers, scale ${m.lora.alpha}/${m.lora.rank} folded in) and ${KOHYA_LORA_FILE} (kohya): ${d.modules} modules, ${d.parameters.toLocaleString('en-US')} parameters`,
      };
    },
  };
}
