/**
 * Builds full-size UNets (streaming weights to disk) and reports time and peak RSS, one child
 * process per model so each peak is that model's alone. Not run by jest.
 *
 *   npx tsc -p . && node dist/tests/bench/build-full.js [sd15 sd21 sdxl] [--dir /tmp/x] [--keep] [--run]
 *
 * --run also loads the built model in onnxruntime (CPU, arena and prepacking off) and runs one
 * batch-1 step at 32x32 latents, checking the output is finite. Output folders are deleted
 * afterwards unless --keep.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FAMILIES, FamilyName, isFamilyName } from '../../models/families';
import { buildUNet } from '../../models/builder/unet';

const MiB = 2 ** 20;

async function runOnce(family: FamilyName, dir: string, run: boolean): Promise<void> {
  const config = FAMILIES[family].full.config;
  const r = await buildUNet(config, { outDir: dir, seed: 0 });
  const buildRss = process.resourceUsage().maxRSS * 1024;
  const report: Record<string, unknown> = {
    family,
    parameters: r.parameterCount,
    graphBytes: fs.statSync(r.file).size,
    dataBytes: fs.statSync(r.dataFile).size,
    buildSeconds: Number(r.seconds.toFixed(2)),
    buildPeakRssMiB: Math.round(buildRss / MiB),
  };
  if (run) {
    // Imported here so that a build-only run does not load onnxruntime (its RSS would count).
    const ort = await import('onnxruntime-node');
    const { unetSignature } = await import('../../models/builder/unet');
    const t0 = Date.now();
    const session = await ort.InferenceSession.create(r.file, {
      executionProviders: ['cpu'],
      enableCpuMemArena: false,
      extra: { session: { disable_prepacking: '1' } },
    });
    const loadSeconds = (Date.now() - t0) / 1000;
    const dims: Record<string, number> = { batch: 1, height: 32, width: 32, sequence: 77 };
    const feeds: Record<string, import('onnxruntime-node').Tensor> = {};
    for (const input of unetSignature(config).inputs) {
      const shape = input.shape.map((d) => (typeof d === 'string' ? dims[d] : d));
      const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
      for (let i = 0; i < data.length; i++)
        data[i] = input.name === 'timestep' ? 500 : input.name === 'time_ids' ? 1024 : Math.sin(i * 0.37);
      feeds[input.name] = new ort.Tensor('float32', data, shape);
    }
    const t1 = Date.now();
    const out = (await session.run(feeds)).out_sample.data as Float32Array;
    let finite = true;
    let sq = 0;
    for (const v of out) {
      if (!Number.isFinite(v)) finite = false;
      sq += v * v;
    }
    Object.assign(report, {
      ortLoadSeconds: loadSeconds,
      ortStepSeconds: (Date.now() - t1) / 1000,
      outputFinite: finite,
      outputRms: Number(Math.sqrt(sq / out.length).toFixed(4)),
      peakRssWithOrtMiB: Math.round((process.resourceUsage().maxRSS * 1024) / MiB),
    });
    await session.release();
  }
  console.log(JSON.stringify(report));
}

async function main(argv: string[]): Promise<void> {
  const one = argv.indexOf('--one');
  const run = argv.includes('--run');
  if (one >= 0) {
    await runOnce(argv[one + 1] as FamilyName, argv[one + 2], run);
    return;
  }
  const dirAt = argv.indexOf('--dir');
  const base = dirAt >= 0 ? argv[dirAt + 1] : fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-bench-'));
  const families = argv.filter((a, i) => isFamilyName(a) && argv[i - 1] !== '--dir');
  for (const family of families.length ? families : (['sd15', 'sd21', 'sdxl'] as FamilyName[])) {
    const dir = path.join(base, family);
    const child = spawnSync(process.execPath, [__filename, '--one', family, dir, ...(run ? ['--run'] : [])], {
      stdio: ['ignore', 'pipe', 'inherit'],
      encoding: 'utf8',
    });
    process.stdout.write(child.stdout);
    if (child.status !== 0) process.stdout.write(`${family}: exit ${child.status}\n`);
    if (!argv.includes('--keep')) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
