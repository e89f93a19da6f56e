/** compile: the UNet and the spec (a preset, or --spec) -> run/compiled/. */
import * as fs from 'fs';
import * as path from 'path';
import { MANIFEST_FILE } from '../../../compiler/manifest';
import { writeFileAtomic } from '../../../compiler/atomic-files';
import { LORA_INIT_FILE } from '../../formats/lora-format';
import { Stage, killPoint } from '../stage-runner';
import { StageContext, trainedWords } from './context';

export function compileStage(ctx: StageContext): Stage {
  const { dirs } = ctx;
  return {
    name: 'compile',
    key: ctx.keys.compile,
    valid: () => fs.existsSync(path.join(dirs.compiled, MANIFEST_FILE)) && fs.existsSync(path.join(dirs.compiled, LORA_INIT_FILE)),
    clean: () => fs.rmSync(dirs.compiled, { recursive: true, force: true }),
    run: async () => {
      writeFileAtomic(dirs.spec, ctx.s.specText);
      const m = ctx.compile(ctx.s.folder.unet.model, dirs.spec, dirs.compiled);
      ctx.findings.manifest = m;
      killPoint('compile');
      const cut = m.cut ? `hollowed ${m.cut.hollowed.join(' ')} (${(100 * m.cut.fraction).toFixed(1)}% of the UNet)` : 'no hollow';
      const what = trainedWords(m);
      return {
        summary: `${cut}; training holds ${m.parameters.heldDuringTraining.toLocaleString('en-US')} of ${m.parameters.full.toLocaleString('en-US')} parameters; trains ${[what.lora, what.base].filter(Boolean).join(' and ')}, ${what.optimizer}`,
      };
    },
  };
}
