/** `hollowc precompute`: precompute.onnx over the training data into the store. */
import { Command } from 'commander';
import { HollowcError } from '../compiler/errors';
import { CompileManifest, SAMPLE, readManifest } from '../compiler/manifest';
import { latentShapeProblem } from '../models/latent-sizes';
import { ExecutionProvider } from '../runtime/ort/session';
import { precompute } from '../runtime/store/precompute';
import { formatBytes, progressFromFirstUpdate } from '../runtime/progress';
import { TrainingData, loadTrainingData } from '../runtime/store/training-data';
import { TuningCli, out, parseCount, parseSeed, sessionOptions, tuning } from './options';

interface PrecomputeCli extends TuningCli {
  data: string;
  count: number;
  instancePrompt?: string;
  classPrompt?: string;
  classLatents?: string;
  timeIds?: string;
  seed?: number;
  store?: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

/**
 * Before any work: latents of a size the UNet cannot take fail deep in onnxruntime (in training:
 * precompute.onnx is the down path only). Where train.onnx fixes the latent shape, precompute's
 * own check names the spec line instead.
 */
function checkLatentSides(manifest: CompileManifest, data: TrainingData): void {
  const multiple = manifest.model.latentMultiple;
  const sample = manifest.artifacts.train?.inputs.find((i) => i.name === SAMPLE);
  if (multiple === undefined || sample?.shape.every((d) => typeof d === 'number')) return;
  for (const [latents, file] of [
    [data.instanceLatents, data.sources.latents],
    [data.classLatents, data.sources.classLatents],
  ] as const) {
    const problem = latents.length ? latentShapeProblem('latent', latents[0].shape, multiple) : undefined;
    if (problem) throw new HollowcError(problem, file);
  }
}

export function registerPrecompute(program: Command): void {
  const command = program
    .command('precompute')
    .description('run precompute.onnx (base UNet up to the hollow activation) over latents into the training store')
    .argument('<out>', 'a compiled folder')
    .requiredOption(
      '--data <path>',
      'data folder (latents/*.npy, instance_prompt.npy, class_prompt.npy, optional class_latents/) or one latents batch file',
    )
    .option('--count <n>', 'records the store should hold (instance and class samples together)', parseCount, 200)
    .option('--instance-prompt <file>', 'instance prompt embeddings (.npy [T, D] or .safetensors)')
    .option('--class-prompt <file>', 'class prompt embeddings (.npy [T, D] or .safetensors)')
    .option('--class-latents <path>', 'prior-preservation latents (folder of .npy or one batch file)')
    .option('--time-ids <file>', 'SDXL time_ids (.npy, 6 values)')
    .option('--seed <n>', "noise and timestep seed (default: the spec's seed)", parseSeed)
    .option('--store <dir>', 'store folder (default <out>/store)');
  sessionOptions(command).action(async (dir: string, o: PrecomputeCli) => {
    const data = loadTrainingData(o.data, {
      instancePrompt: o.instancePrompt,
      classPrompt: o.classPrompt,
      classLatents: o.classLatents,
      timeIds: o.timeIds,
    });
    checkLatentSides(readManifest(dir), data);
    const progress = progressFromFirstUpdate('precompute');
    const r = await precompute({
      out: dir,
      data,
      count: o.count,
      seed: o.seed,
      storeDir: o.store,
      ep: o.ep,
      fallbackToCpu: o.cpuFallback,
      session: tuning(o),
      onRecord: (done) => {
        progress.update(done, o.count);
      },
    }).finally(() => progress.finish());
    if (r.repaired.bytes) out(`repaired the store: dropped ${formatBytes(r.repaired.bytes)} of a torn last record`);
    out(
      r.added
        ? `precomputed ${r.added} sample${r.added === 1 ? '' : 's'} in ${r.seconds.toFixed(1)} s${r.existing ? ` (continuing from ${r.existing} on disk)` : ''}`
        : `the store already holds ${r.records} samples (>= --count ${o.count}); nothing to do`,
    );
    out(
      `  data: ${data.instanceLatents.length} instance + ${data.classLatents.length} class latents [${data.instanceLatents[0].shape.join(', ')}]`,
    );
    out(`  store: ${r.storeDir}`);
    out(
      `  ${r.records} records x ${formatBytes(r.recordBytes)} per sample = ${formatBytes(r.records * r.recordBytes)} (${formatBytes(r.totalBytes)} with header and conditioning)`,
    );
  });
}
