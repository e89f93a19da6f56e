/**
 * Issue 12 part 2's cost of `base int8` on a full-size model: one grads.onnx step of two compiled
 * folders that differ only in their `base` line, on the same synthetic inputs (LoRA A and B
 * nonzero, so every gradient is), and the loss and LoRA-gradient errors of the int8 one relative
 * to the fp32 one. Each folder runs in turn (one session alive at a time). Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/int8-error.js <fp32 folder> <int8 folder> [--threads 2]
 */
import * as ort from 'onnxruntime-node';
import { LOSS, readManifest } from '../../compiler/manifest';
import { createSession } from '../../runtime/ort/session';
import { describeTrainGraph } from '../../runtime/train/step-graph';
import { trainingSession } from '../../runtime/train/step-session';
import { relativeError } from '../support/fixture';
import { syntheticValue } from './synthetic';

async function gradsOf(folder: string, threads: number): Promise<Record<string, Float32Array>> {
  const manifest = readManifest(folder);
  const graph = describeTrainGraph(folder, manifest, undefined, 'host');
  const session = await createSession(graph.file, trainingSession({ session: { intraOpThreads: threads } }));
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const input of graph.inputs.values()) {
      const shape = input.shape.map((d) => (typeof d === 'number' ? d : 1));
      feeds[input.name] = new ort.Tensor(
        'float32',
        Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => syntheticValue(input.name, i)),
        shape,
      );
    }
    const out = await session.run(feeds);
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, Float32Array.from(v.data as Float32Array)]));
  } finally {
    await session.release();
  }
}

async function main(argv: string[]): Promise<void> {
  const [fp32, int8] = argv;
  const threads = argv.includes('--threads') ? Number(argv[argv.indexOf('--threads') + 1]) : 2;
  const a = await gradsOf(fp32, threads);
  const b = await gradsOf(int8, threads);
  const names = Object.keys(a).filter((k) => k !== LOSS);
  const errors = names.map((k) => ({ k, e: relativeError(b[k], a[k]) })).sort((x, y) => y.e - x.e);
  const mean = errors.reduce((s, x) => s + x.e, 0) / errors.length;
  const median = errors[Math.floor(errors.length / 2)].e;
  console.log(
    `loss fp32 ${a[LOSS][0]} int8 ${b[LOSS][0]} (relative ${Math.abs(b[LOSS][0] - a[LOSS][0]) / Math.abs(a[LOSS][0])}); ` +
      `${errors.length} LoRA gradients, relative error: mean ${mean.toExponential(2)}, median ${median.toExponential(2)}, worst ${errors[0].e.toExponential(2)} (${errors[0].k})`,
  );
  console.log(
    `A gradients: mean ${avg(errors.filter((x) => x.k.includes('lora_A')))}, B gradients: mean ${avg(errors.filter((x) => x.k.includes('lora_B')))}`,
  );
}

const avg = (xs: { e: number }[]) => (xs.reduce((s, x) => s + x.e, 0) / xs.length).toExponential(2);

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
