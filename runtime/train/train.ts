/**
 * `hollowc train`: runs the training step (step-graph.ts) — train.onnx with AdamW in the graph,
 * or grads.onnx with AdamW on the host (the default when the folder has grads.onnx) — over the
 * precompute store, in the order of record-order.ts, writing
 * checkpoints and the loss log (checkpoint.ts) and, at the end, `<out>/lora.safetensors` (peft
 * keys). Class (prior-preservation) records get loss_weight = prior_weight. A checkpoint holds
 * all a resume needs to continue bit for bit.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { withFolderLockAsync } from '../../compiler/folder-lock';
import type { CompileManifest } from '../../compiler/manifest';
import { loadManifest } from '../ort/artifacts';
import {
  CHECKPOINT_FILE,
  CHECKPOINT_STATE_FILE,
  LOSS_LOG_FILE,
  ParamState,
  TRAIN_DIR,
  TrainState,
  readCheckpoint,
  truncateLossLog,
  writeCheckpoint,
} from './checkpoint';
import { LoraModuleValues, writeLoraFile } from '../formats/lora-file';
import { TRAINED_LORA_FILE } from '../formats/lora-format';
import { SampleOrder } from './record-order';
import { ExecutionProvider, SessionTuning, createSession, withArtifactConfig } from '../ort/session';
import { planRecord } from '../store/precompute';
import { Store } from '../store/store';
import { STORE_DIR } from '../store/store-format';
import {
  OptimizerMode,
  StepRunner,
  TrainGraph,
  chooseOptimizer,
  dataFeeds,
  describeTrainGraph,
  evaluationBatches,
  initialParams,
  lossAtRest,
  trainingSession,
} from './step-graph';

export interface TrainOptions {
  out: string;
  /** Total steps the run should reach (default: the spec's `train steps`). */
  steps?: number;
  /** Continue from `<out>/train/checkpoint.safetensors`. */
  resume?: boolean;
  /** Discard an existing checkpoint and start over. */
  restart?: boolean;
  /** Default: the spec's `train checkpoint_every` (= steps: only at the end). */
  checkpointEvery?: number;
  /** Default: the spec's optimizer lr (on resume: the checkpoint's). */
  lr?: number;
  /** Default: the spec's seed (on resume: the checkpoint's). */
  seed?: number;
  storeDir?: string;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
  session?: SessionTuning;
  /**
   * Where AdamW runs: 'graph' (train.onnx, one session.run per step) or 'host' (grads.onnx, then
   * AdamW in place on the host: less memory). Default: host when the folder has grads.onnx.
   */
  optimizer?: OptimizerMode;
  /** After every step; throwing from it stops the run right there (tests simulate a kill so). */
  onStep?: (info: StepInfo) => void;
  /** After every checkpoint write. */
  onCheckpoint?: (step: number, file: string) => void;
  /**
   * Also measure the loss over the first `batches` batches of the store (in store order, lr = 0)
   * before the first step and after the last, on the training session itself.
   */
  evaluate?: { batches: number; instanceOnly?: boolean };
  /**
   * The weight of class (prior-preservation) samples in the loss, instead of the spec's: the
   * graphs take it as a per-sample input, so changing it needs no new compile.
   */
  priorWeight?: number;
}

export interface StepInfo {
  step: number;
  steps: number;
  loss: number;
  /** Steps done by this run and seconds it has spent on them. */
  runSteps: number;
  runSeconds: number;
}

export interface TrainResult {
  startStep: number;
  step: number;
  losses: { step: number; loss: number }[];
  checkpointFile: string;
  loraFile: string;
  seconds: number;
  /** Seconds spent in the steps themselves (no session start, no evaluation). */
  stepSeconds: number;
  batch: number;
  /** The optimizer mode the run used. */
  optimizer: OptimizerMode;
  evaluation?: { before: number; after: number; batches: number };
}

/** LoRA values by module, as lora-file.ts writes them, from train.onnx parameter values. */
export function loraModules(manifest: CompileManifest, values: Map<string, Float32Array>): LoraModuleValues[] {
  return manifest.lora.targets
    .filter((t) => t.trained && values.has(t.lora_A.name))
    .map((t) => ({
      module: t.module,
      a: { shape: t.lora_A.shape, data: values.get(t.lora_A.name)! },
      b: { shape: t.lora_B.shape, data: values.get(t.lora_B.name)! },
    }));
}

/** Where a run starts: fresh from lora-init, or from the checkpoint when resuming. */
interface StartingPoint {
  params: ParamState[];
  step: number;
  seed: number;
  lr: number;
}

function startingPoint(options: TrainOptions, manifest: CompileManifest, graph: TrainGraph, store: Store): StartingPoint {
  const trainDir = path.join(options.out, TRAIN_DIR);
  const checkpointFile = path.join(trainDir, CHECKPOINT_FILE);
  const settings = manifest.training;
  const haveCheckpoint = fs.existsSync(checkpointFile);
  if (!options.resume) {
    if (haveCheckpoint && !options.restart) {
      const s = readCheckpoint(checkpointFile).state;
      throw new HollowcError(
        `a training run is checkpointed here at step ${s.step}: pass --resume to continue it or --restart to discard it`,
        trainDir,
      );
    }
    for (const f of [CHECKPOINT_FILE, CHECKPOINT_STATE_FILE, LOSS_LOG_FILE]) fs.rmSync(path.join(trainDir, f), { force: true });
    return {
      params: initialParams(options.out, manifest, graph),
      step: 0,
      seed: options.seed ?? settings.seed,
      lr: options.lr ?? settings.lr,
    };
  }
  if (!haveCheckpoint)
    throw new HollowcError(`nothing to resume: no ${CHECKPOINT_FILE} (a run writes one every --checkpoint-every steps)`, trainDir);
  const cp = readCheckpoint(checkpointFile);
  const s = cp.state;
  if (options.seed !== undefined && options.seed !== s.seed)
    throw new HollowcError(
      `--seed ${options.seed} differs from the checkpoint's seed ${s.seed}: a resumed run keeps its seed`,
      checkpointFile,
    );
  if (s.storeRecords !== store.count || s.storeFingerprint !== store.header.fingerprint) {
    throw new HollowcError(
      `the store changed since this checkpoint (${s.storeRecords} records then, ${store.count} now): resume needs the same store, or start over with --restart`,
      checkpointFile,
    );
  }
  if (s.batch !== graph.batch)
    throw new HollowcError(
      `the checkpoint was trained with batch ${s.batch}, ${path.basename(graph.file)} now takes ${graph.batch}`,
      checkpointFile,
    );
  const params = graph.params.map((p) => {
    const v = cp.params.get(p.name);
    if (!v || v.shape.join() !== p.shape.join())
      throw new HollowcError(`the checkpoint has no ${p.name} of shape [${p.shape}]: it belongs to another compile`, checkpointFile);
    return { name: p.name, shape: p.shape, value: v.value, expAvg: v.expAvg, expAvgSq: v.expAvgSq };
  });
  truncateLossLog(path.join(trainDir, LOSS_LOG_FILE), s.step);
  return { params, step: s.step, seed: s.seed, lr: options.lr ?? s.lr };
}

function positiveInteger(value: number, flag: string): number {
  if (!(Number.isInteger(value) && value > 0)) throw new HollowcError(`${flag} must be a positive integer, got ${value}`);
  return value;
}

/** Steps start.step+1 .. steps on `session`, appending to the loss log and checkpointing every `every` steps. */
async function runSteps(
  session: ort.InferenceSession,
  run: {
    options: TrainOptions;
    graph: TrainGraph;
    store: Store;
    start: StartingPoint;
    steps: number;
    every: number;
    priorWeight: number;
    optimizer: CompileManifest['training']['optimizer'];
  },
): Promise<{ losses: TrainResult['losses']; seconds: number }> {
  const { options, graph, store, start, steps, every } = run;
  const runner = new StepRunner(session, graph, run.optimizer);
  const trainDir = path.join(options.out, TRAIN_DIR);
  const checkpointFile = path.join(trainDir, CHECKPOINT_FILE);
  const order = new SampleOrder(start.seed, store.count, graph.batch);
  const stateAt = (step: number): TrainState => ({
    version: 1,
    step,
    seed: start.seed,
    lr: start.lr,
    batch: graph.batch,
    storeRecords: store.count,
    storeFingerprint: store.header.fingerprint,
    position: order.positionAfter(step),
    params: start.params.map((p) => p.name),
  });
  const losses: TrainResult['losses'] = [];
  let lastCheckpoint = options.resume ? start.step : -1;
  fs.mkdirSync(trainDir, { recursive: true });
  const lossFd = fs.openSync(path.join(trainDir, LOSS_LOG_FILE), 'a');
  const runStart = Date.now();
  try {
    for (let step = start.step + 1; step <= steps; step++) {
      const records = order.batchFor(step).map((i) => store.read(i));
      const loss = await runner.step(dataFeeds(graph, store, records, run.priorWeight), start.params, start.lr, step, (l) => {
        if (Number.isFinite(l)) return;
        const kept =
          lastCheckpoint > 0
            ? `the last good checkpoint (step ${lastCheckpoint}) is kept in ${checkpointFile}`
            : 'no checkpoint was written yet';
        throw new HollowcError(
          `step ${step}: the loss is ${l} (records ${records.map((r) => r.index).join(', ')}); training stopped and ${kept}. Lower --lr or check the data`,
        );
      });
      losses.push({ step, loss });
      const runSeconds = (Date.now() - runStart) / 1000;
      fs.writeSync(lossFd, JSON.stringify({ step, loss, lr: start.lr, elapsed_s: Number(runSeconds.toFixed(3)) }) + '\n');
      if (step % every === 0 || step === steps) {
        fs.fsyncSync(lossFd);
        const file = writeCheckpoint(trainDir, stateAt(step), start.params);
        options.onCheckpoint?.(step, file);
        lastCheckpoint = step;
      }
      options.onStep?.({ step, steps, loss, runSteps: step - start.step, runSeconds });
    }
  } finally {
    fs.closeSync(lossFd);
  }
  return { losses, seconds: (Date.now() - runStart) / 1000 };
}

/** Holds the folder's writer lock (compiler/folder-lock.ts) for the whole run. */
export function train(options: TrainOptions): Promise<TrainResult> {
  return withFolderLockAsync(options.out, 'hollowc train', () => trainUnlocked(options));
}

async function trainUnlocked(options: TrainOptions): Promise<TrainResult> {
  const started = Date.now();
  const out = options.out;
  const manifest = loadManifest(out);
  const settings = manifest.training;
  // A folder compiled without train.onnx or grads.onnx needs a new compile before anything else.
  const optimizer = chooseOptimizer(out, manifest, options.optimizer);
  const { store } = Store.open(options.storeDir ?? path.join(out, STORE_DIR), { readOnly: true });
  let session: ort.InferenceSession | undefined;
  try {
    const graph = describeTrainGraph(out, manifest, store, optimizer);
    store.verify();
    const steps = positiveInteger(options.steps ?? settings.steps, '--steps');
    const every = positiveInteger(options.checkpointEvery ?? settings.checkpointEvery, '--checkpoint-every');
    const start = startingPoint(options, manifest, graph, store);
    if (!(start.lr > 0 && Number.isFinite(start.lr))) throw new HollowcError(`--lr must be a finite number > 0, got ${start.lr}`);
    const startStep = start.step;
    const priorWeight = options.priorWeight ?? settings.priorWeight;
    if (!(priorWeight >= 0 && Number.isFinite(priorWeight)))
      throw new HollowcError(`--prior-weight must be a finite number >= 0, got ${priorWeight}`);

    if (startStep < steps || options.evaluate)
      session = await createSession(graph.file, withArtifactConfig(trainingSession(options), graph));
    const indices = options.evaluate?.instanceOnly ? instanceRecords(store) : undefined;
    const evaluate = async () =>
      options.evaluate ? lossAtRest(session!, graph, store, start.params, options.evaluate.batches, priorWeight, indices) : undefined;
    const before = await evaluate();
    const ran =
      startStep < steps
        ? await runSteps(session!, {
            options,
            graph,
            store,
            start,
            steps,
            every,
            priorWeight,
            optimizer: settings.optimizer,
          })
        : { losses: [], seconds: 0 };
    const after = await evaluate();
    const evaluation =
      before !== undefined && after !== undefined
        ? {
            before,
            after,
            batches: indices
              ? Math.max(1, Math.min(options.evaluate!.batches, Math.ceil(indices.length / graph.batch)))
              : evaluationBatches(graph, store, options.evaluate!.batches),
          }
        : undefined;

    // The LoRA of where the run stands: its last step, or the checkpoint's when it was there already.
    const step = Math.max(steps, startStep);
    const loraFile = path.join(out, TRAINED_LORA_FILE);
    const values = new Map(start.params.map((p) => [p.name, p.value]));
    writeLoraFile(
      loraFile,
      'peft',
      { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules: loraModules(manifest, values) },
      { hollowc_steps: String(step), hollowc_seed: String(start.seed) },
    );
    const checkpointFile = path.join(out, TRAIN_DIR, CHECKPOINT_FILE);
    return {
      startStep,
      step,
      losses: ran.losses,
      checkpointFile,
      loraFile,
      seconds: (Date.now() - started) / 1000,
      stepSeconds: ran.seconds,
      batch: graph.batch,
      optimizer,
      evaluation,
    };
  } finally {
    store.close();
    await session?.release();
  }
}

/** The store's instance records (not prior-preservation ones), in store order, from precompute's plan. */
export function instanceRecords(store: Store): number[] {
  const classes = store.header.classSamples.length;
  const instances = store.header.instanceSamples.length;
  return Array.from({ length: store.count }, (_, i) => i).filter((i) => !planRecord(i, instances, classes).isClass);
}

export interface EvaluateOptions {
  out: string;
  /** LoRA values by train.onnx parameter name; default: lora-init. */
  params?: Map<string, Float32Array>;
  /** How many batches (records in store order, from the first) to average over. */
  batches?: number;
  storeDir?: string;
  ep?: ExecutionProvider;
  session?: SessionTuning;
  /** only the instance records */
  instanceOnly?: boolean;
  /** Which step graph computes the loss (default as train's: grads.onnx when there is one). */
  optimizer?: OptimizerMode;
  /** as TrainOptions.priorWeight */
  priorWeight?: number;
}

/**
 * The loss of a LoRA on the store without training: train.onnx with lr = 0 (AdamW then leaves
 * every parameter as it is) or grads.onnx, over the first `batches` batches in store order.
 */
export async function evaluateLoss(options: EvaluateOptions): Promise<number> {
  const manifest = loadManifest(options.out);
  const { store } = Store.open(options.storeDir ?? path.join(options.out, STORE_DIR), { readOnly: true });
  let session: ort.InferenceSession | undefined;
  try {
    const graph = describeTrainGraph(options.out, manifest, store, chooseOptimizer(options.out, manifest, options.optimizer));
    const params = initialParams(options.out, manifest, graph);
    if (options.params) for (const p of params) p.value = Float32Array.from(options.params.get(p.name) ?? p.value);
    session = await createSession(graph.file, withArtifactConfig(trainingSession(options), graph));
    return await lossAtRest(
      session,
      graph,
      store,
      params,
      options.batches ?? Math.ceil(store.count / graph.batch),
      options.priorWeight ?? manifest.training.priorWeight,
      options.instanceOnly ? instanceRecords(store) : undefined,
    );
  } finally {
    store.close();
    await session?.release();
  }
}
