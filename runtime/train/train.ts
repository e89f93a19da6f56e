/**
 * `hollowc train`: runs the training step (step-graph.ts) — grads.onnx with AdamW on the host
 * (the default when the folder has it) or train.onnx with AdamW in the graph — over the
 * precompute store, in the order of record-order.ts, writing checkpoints and the loss log
 * (checkpoint.ts) and, at the end, `<out>/lora.safetensors` (peft keys) and under `train base`
 * `<out>/trained-base.safetensors` (base-weights.ts). Class
 * (prior-preservation) records get loss_weight = prior_weight. A checkpoint holds all a resume
 * needs to continue bit for bit; one is written every DEFAULT_CHECKPOINT_STEPS steps or
 * DEFAULT_CHECKPOINT_MINUTES, whichever comes first, unless an interval is asked for, so a crash
 * loses minutes at most. A run stopped by `signal` (stop-signals.ts) checkpoints its last step.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { withFolderLockAsync } from '../../compiler/folder-lock';
import type { CompileManifest, TrainingSettings } from '../../compiler/manifest';
import { loadManifest } from '../ort/artifacts';
import {
  CHECKPOINT_FILE,
  CHECKPOINT_STATE_FILE,
  LOSS_LOG_FILE,
  ParamState,
  TRAIN_DIR,
  TrainState,
  readCheckpoint,
  readCheckpointState,
  syncCheckpointState,
  truncateLossLog,
  writeCheckpoint,
} from './checkpoint';
import { LoraModuleValues, writeLoraFile } from '../formats/lora-file';
import { TRAINED_LORA_FILE } from '../formats/lora-format';
import { SampleOrder } from './record-order';
import { ExecutionProvider, SessionTuning } from '../ort/session';
import type { Store } from '../store/store';
import { evaluationBatches, instanceRecords, lossAtRest } from './evaluation';
import { zeroMoments } from './adamw8bit';
import { TRAINED_BASE_FILE, writeTrainedBase } from './base-weights';
import { initialParams } from './lora-init';
import { OptimizerMode, TrainGraph, chooseOptimizer } from './step-graph';
import { StepRunner } from './step-runner';
import { withStepGraph } from './step-session';
import { dataFeeds } from './step-tensors';

/** Checkpoint cadence when none is asked for: a checkpoint costs far less than this many steps or minutes of them. */
export const DEFAULT_CHECKPOINT_STEPS = 100;
export const DEFAULT_CHECKPOINT_MINUTES = 5;

export interface TrainOptions {
  out: string;
  /** Total steps the run should reach (default: the spec's `train steps`). */
  steps?: number;
  /** Continue from `<out>/train/checkpoint.safetensors`. */
  resume?: boolean;
  /** Discard an existing checkpoint and start over. */
  restart?: boolean;
  /**
   * Steps between checkpoints (and one at the last step). Default: the spec's `checkpoint_every`
   * when it is below its step count, else every DEFAULT_CHECKPOINT_STEPS steps or
   * DEFAULT_CHECKPOINT_MINUTES minutes, whichever comes first.
   */
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
   * Aborted: the run ends the step in progress, checkpoints it and returns `stopped` (no LoRA
   * file, no evaluation after). stop-signals.ts aborts one on SIGTERM, SIGINT and SIGHUP.
   */
  signal?: AbortSignal;
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
  /** The last step done (or the checkpoint's, when there was nothing to do). */
  step: number;
  losses: { step: number; loss: number }[];
  checkpointFile: string;
  /** Written at the end of a run that was not stopped (when the folder trains LoRA). */
  loraFile: string;
  /** `train base`: the trained base weights (base-weights.ts), written with the LoRA file. */
  baseFile?: string;
  lossLogFile: string;
  /** The run's checkpoint cadence. */
  checkpoints: CheckpointCadence;
  /** Why the run stopped before its last step (the abort reason: a signal's name), if it did. */
  stopped?: string;
  seconds: number;
  /** Seconds spent in the steps themselves (no session start, no evaluation). */
  stepSeconds: number;
  batch: number;
  /** The optimizer mode the run used. */
  optimizer: OptimizerMode;
  evaluation?: { before: number; after: number; batches: number };
}

/** LoRA values by module, as lora-file.ts writes them, from the step graph's parameter values. */
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
      const s = readCheckpointState(checkpointFile);
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
    throw new HollowcError(
      `nothing to resume: no ${CHECKPOINT_FILE} (a run writes its first after ${DEFAULT_CHECKPOINT_STEPS} steps or ${DEFAULT_CHECKPOINT_MINUTES} minutes, or --checkpoint-every steps)`,
      trainDir,
    );
  const cp = readCheckpoint(checkpointFile);
  const s = cp.state;
  syncCheckpointState(trainDir, s);
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
    const eightBit = zeroMoments(v.value.length, settings.optimizer.state).quantized !== undefined;
    if (eightBit !== (v.quantized !== undefined))
      throw new HollowcError(
        `the checkpoint keeps ${p.name}'s moments in ${v.quantized ? '8 bits' : 'float32'}, this folder's optimizer in ${eightBit ? '8 bits' : 'float32'}: it belongs to another compile`,
        checkpointFile,
      );
    return {
      name: p.name,
      shape: p.shape,
      value: v.value,
      expAvg: v.expAvg,
      expAvgSq: v.expAvgSq,
      ...(v.quantized ? { quantized: v.quantized } : {}),
    };
  });
  truncateLossLog(path.join(trainDir, LOSS_LOG_FILE), s.step);
  return { params, step: s.step, seed: s.seed, lr: options.lr ?? s.lr };
}

function positiveInteger(value: number, flag: string): number {
  if (!(Number.isInteger(value) && value > 0)) throw new HollowcError(`${flag} must be a positive integer, got ${value}`);
  return value;
}

/** When a run checkpoints: every `steps` steps, after `minutes` since the last one (when set), and at its last step. */
export interface CheckpointCadence {
  steps: number;
  minutes?: number;
}

/**
 * --checkpoint-every, else the spec's checkpoint_every when it is below the spec's steps (the
 * manifest records checkpoint_every = steps when the spec leaves it out), else the defaults.
 */
export function checkpointCadence(asked: number | undefined, settings: TrainingSettings): CheckpointCadence {
  if (asked !== undefined) return { steps: positiveInteger(asked, '--checkpoint-every') };
  if (settings.checkpointEvery < settings.steps) return { steps: positiveInteger(settings.checkpointEvery, 'checkpoint_every') };
  return { steps: DEFAULT_CHECKPOINT_STEPS, minutes: DEFAULT_CHECKPOINT_MINUTES };
}

/**
 * Steps start.step+1 .. steps on `session`, appending to the loss log and checkpointing as
 * `cadence` says; stops early, with a checkpoint, when options.signal is aborted.
 */
async function runSteps(
  session: ort.InferenceSession,
  run: {
    options: TrainOptions;
    graph: TrainGraph;
    store: Store;
    start: StartingPoint;
    steps: number;
    cadence: CheckpointCadence;
    priorWeight: number;
    optimizer: CompileManifest['training']['optimizer'];
  },
): Promise<{ losses: TrainResult['losses']; seconds: number; stopped?: string }> {
  const { options, graph, store, start, steps, cadence } = run;
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
  let lastCheckpointAt = runStart;
  const stopped = () => (options.signal?.aborted ? String(options.signal.reason ?? 'aborted') : undefined);
  try {
    for (let step = start.step + 1; step <= steps && !stopped(); step++) {
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
      const now = Date.now();
      const runSeconds = (now - runStart) / 1000;
      fs.writeSync(lossFd, JSON.stringify({ step, loss, lr: start.lr, elapsed_s: Number(runSeconds.toFixed(3)) }) + '\n');
      const due =
        step % cadence.steps === 0 ||
        step === steps ||
        (cadence.minutes !== undefined && now - lastCheckpointAt >= cadence.minutes * 60_000) ||
        stopped() !== undefined;
      if (due) {
        fs.fsyncSync(lossFd);
        const file = writeCheckpoint(trainDir, stateAt(step), start.params);
        options.onCheckpoint?.(step, file);
        lastCheckpoint = step;
        lastCheckpointAt = Date.now();
      }
      options.onStep?.({ step, steps, loss, runSteps: step - start.step, runSeconds });
    }
  } finally {
    fs.closeSync(lossFd);
  }
  const last = losses.length ? losses[losses.length - 1].step : start.step;
  return { losses, seconds: (Date.now() - runStart) / 1000, stopped: last < steps ? stopped() : undefined };
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
  return withStepGraph(out, manifest, { ...options, optimizer }, async ({ store, graph, session }) => {
    store.verify();
    const steps = positiveInteger(options.steps ?? settings.steps, '--steps');
    const cadence = checkpointCadence(options.checkpointEvery, settings);
    const start = startingPoint(options, manifest, graph, store);
    if (!(start.lr > 0 && Number.isFinite(start.lr))) throw new HollowcError(`--lr must be a finite number > 0, got ${start.lr}`);
    const startStep = start.step;
    const priorWeight = options.priorWeight ?? settings.priorWeight;
    if (!(priorWeight >= 0 && Number.isFinite(priorWeight)))
      throw new HollowcError(`--prior-weight must be a finite number >= 0, got ${priorWeight}`);

    const indices = options.evaluate?.instanceOnly ? instanceRecords(store) : undefined;
    const evaluate = async () =>
      options.evaluate
        ? lossAtRest(await session(), graph, store, start.params, options.evaluate.batches, priorWeight, indices)
        : undefined;
    const before = await evaluate();
    const ran =
      startStep < steps
        ? await runSteps(await session(), { options, graph, store, start, steps, cadence, priorWeight, optimizer: settings.optimizer })
        : { losses: [], seconds: 0, stopped: undefined };
    const step = ran.losses.length ? ran.losses[ran.losses.length - 1].step : startStep;
    const result = {
      startStep,
      step,
      losses: ran.losses,
      checkpointFile: path.join(out, TRAIN_DIR, CHECKPOINT_FILE),
      loraFile: path.join(out, TRAINED_LORA_FILE),
      lossLogFile: path.join(out, TRAIN_DIR, LOSS_LOG_FILE),
      checkpoints: cadence,
      batch: graph.batch,
      optimizer,
    };
    if (ran.stopped) return { ...result, stopped: ran.stopped, seconds: (Date.now() - started) / 1000, stepSeconds: ran.seconds };
    const after = await evaluate();
    const evaluation =
      before !== undefined && after !== undefined
        ? { before, after, batches: evaluationBatches(graph.batch, indices?.length ?? store.count, options.evaluate!.batches) }
        : undefined;

    // The LoRA of where the run stands: its last step, or the checkpoint's when it was there already.
    const values = new Map(start.params.map((p) => [p.name, p.value]));
    const metadata = { hollowc_steps: String(step), hollowc_seed: String(start.seed) };
    const modules = loraModules(manifest, values);
    // A `train base` run without LoRA writes no LoRA file.
    if (modules.length || !manifest.trainBase?.length)
      writeLoraFile(result.loraFile, 'peft', { rank: manifest.lora.rank, alpha: manifest.lora.alpha, modules }, metadata);
    const baseFile = manifest.trainBase?.length
      ? writeTrainedBase(path.join(out, TRAINED_BASE_FILE), manifest, values, metadata)
      : undefined;
    return { ...result, ...(baseFile ? { baseFile } : {}), seconds: (Date.now() - started) / 1000, stepSeconds: ran.seconds, evaluation };
  });
}

export interface EvaluateOptions {
  out: string;
  /** LoRA values by the step graph's parameter names; default: lora-init. */
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
  const optimizer = chooseOptimizer(options.out, manifest, options.optimizer);
  return withStepGraph(options.out, manifest, { ...options, optimizer }, async ({ store, graph, session }) => {
    const params = initialParams(options.out, manifest, graph);
    if (options.params) for (const p of params) p.value = Float32Array.from(options.params.get(p.name) ?? p.value);
    return lossAtRest(
      await session(),
      graph,
      store,
      params,
      options.batches ?? Math.ceil(store.count / graph.batch),
      options.priorWeight ?? manifest.training.priorWeight,
      options.instanceOnly ? instanceRecords(store) : undefined,
    );
  });
}
