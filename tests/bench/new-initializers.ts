/**
 * Issue 12's check for weight-sized copies made by onnxruntime's graph optimizer: writes the
 * optimized graph of an artifact at a level (optimizedModelFilePath) and lists the initializers
 * it has that the artifact does not (constant folding of a Cast/Transpose/Reshape/Expand, or a
 * layout change), largest first. On a model with external weights the optimized copy goes to a
 * temporary external file. Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/new-initializers.js <model.onnx> [basic|extended|all] ['{"session.key":"value"}']
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { loadModel } from '../../compiler/serde';
import { sessionExtra } from '../../runtime/ort/session';

async function main(argv: string[]): Promise<void> {
  const [file, level = 'basic', config = '{}'] = argv;
  // Next to the artifact: the optimized graph keeps pointing at the artifact's external weights.
  const optimized = path.join(path.dirname(file), `${path.basename(file, '.onnx')}.optimized.onnx`);
  try {
    const session = await ort.InferenceSession.create(file, {
      graphOptimizationLevel: level as 'basic',
      enableCpuMemArena: false,
      enableMemPattern: false,
      optimizedModelFilePath: optimized,
      extra: sessionExtra({
        'session.optimized_model_external_initializers_file_name': `${path.basename(optimized)}_data`,
        'session.optimized_model_external_initializers_min_size_in_bytes': String(1 << 20),
        ...(JSON.parse(config) as Record<string, string>),
      }),
    });
    await session.release();
    const before = new Set(
      loadModel(file)
        .graph.initializers()
        .map((v) => v.name),
    );
    const after = loadModel(optimized).graph.initializers();
    const sizeOf = (v: (typeof after)[number]) =>
      (v.type?.shape ?? []).reduce<number>((a, d) => a * (typeof d === 'number' ? d : 1), 1) * 4;
    const added = after.filter((v) => !before.has(v.name)).sort((a, b) => sizeOf(b) - sizeOf(a));
    const total = added.reduce((s, v) => s + sizeOf(v), 0);
    console.log(
      `${file} at ${level}: ${added.length} new initializers, ${(total / 2 ** 20).toFixed(1)} MiB (as float32); ${before.size - after.filter((v) => before.has(v.name)).length} of the artifact's ${before.size} gone`,
    );
    for (const v of added.slice(0, 25)) {
      const consumers = loadModel(optimized)
        .graph.nodes.filter((n) => n.inputs.some((i) => i?.name === v.name))
        .map((n) => n.opType);
      console.log(
        `  ${(sizeOf(v) / 2 ** 20).toFixed(2)} MiB  [${v.type?.shape?.join(', ')}] ${v.name}  -> ${[...new Set(consumers)].join(', ')}`,
      );
    }
  } finally {
    for (const f of [optimized, `${optimized}_data`]) fs.rmSync(f, { force: true });
  }
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
