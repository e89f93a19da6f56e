/**
 * Writes what tests/bench/export-unet-check.py compares: a fine-tuned sd15-tiny fixture
 * (tests/support/fine-tuned.ts) exported by export-unet in both forms, and the ONNX UNet's output
 * on the fixture's inputs (case 1 and the batch-2 case 2) as .npy.
 *
 *   node -r ./tests/support/register-ts.js tests/bench/export-unet-check.ts <dir>
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { exportUnet } from '../../cli/api/export-unet';
import { writeNpy } from '../../runtime/formats/npy';
import { fixtureInputs } from '../support/fixture';
import { fineTunedFixture } from '../support/fine-tuned';

async function main(): Promise<void> {
  const dir = path.resolve(process.argv[2] ?? 'export-unet-check');
  fs.mkdirSync(dir, { recursive: true });
  const tuned = fineTunedFixture(dir);
  exportUnet({ out: tuned.out, format: 'diffusers', output: path.join(dir, 'diffusers'), config: tuned.config });
  exportUnet({ out: tuned.out, format: 'onnx', output: path.join(dir, 'onnx') });
  const session = await ort.InferenceSession.create(path.join(dir, 'onnx', 'model.onnx'), { executionProviders: ['cpu'] });
  for (const batch of [1, 2] as const) {
    const r = await session.run(fixtureInputs(batch));
    writeNpy(path.join(dir, `onnx_out${batch}.npy`), { dtype: 'float32', shape: r.out_sample.dims as number[], data: r.out_sample.data as Float32Array });
  }
  await session.release();
  console.log(dir);
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
