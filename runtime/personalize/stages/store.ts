/** store: precompute.onnx over the instance and class samples -> run/compiled/store/. */
import * as fs from 'fs';
import * as path from 'path';
import { ProgressLine, formatBytes } from '../../progress';
import { precompute } from '../../store/precompute';
import { Store } from '../../store/store';
import { loadTrainingData } from '../../store/training-data';
import { TRAIN_DIR } from '../../train/checkpoint';
import { TRAINED_LORA_FILE } from '../../formats/lora-format';
import { TRAINED_BASE_FILE } from '../../train/base-weights';
import { Stage, killPoint } from '../stage-runner';
import { StageContext } from './context';

export function storeStage(ctx: StageContext): Stage {
  const { s, dirs } = ctx;
  return {
    name: 'store',
    key: ctx.keys.store,
    valid: () => {
      if (!Store.exists(dirs.store)) return false;
      const { store } = Store.open(dirs.store, { readOnly: true });
      try {
        return store.count === s.samples;
      } finally {
        store.close();
      }
    },
    clean: () =>
      [dirs.store, ...[TRAIN_DIR, TRAINED_LORA_FILE, TRAINED_BASE_FILE].map((f) => path.join(dirs.compiled, f))].forEach((p) =>
        fs.rmSync(p, { recursive: true, force: true }),
      ),
    run: async () => {
      const data = loadTrainingData(dirs.data);
      const bar = new ProgressLine('precompute', s.samples, ctx.progress);
      const r = await precompute({
        out: dirs.compiled,
        data,
        count: s.samples,
        seed: s.seed,
        ep: s.options.ep,
        fallbackToCpu: s.options.fallbackToCpu,
        session: s.trainTuning,
        onRecord: (done) => {
          bar.update(done);
          if (done === Math.ceil(s.samples / 2)) killPoint('store');
        },
      });
      bar.finish();
      const kinds = data.classLatents.length
        ? `${data.instanceLatents.length} instance and ${data.classLatents.length} class latents, alternating`
        : `${data.instanceLatents.length} instance latents`;
      return {
        summary: `precomputed ${r.added} sample(s) (${r.existing} already there; ${kinds}): ${formatBytes(r.recordBytes)} each, ${formatBytes(r.totalBytes)} in all`,
      };
    },
  };
}
