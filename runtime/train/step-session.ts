/**
 * A session on the step graph: onnxruntime's options for the training graphs, and the store,
 * step graph and session that a run or an evaluation opens and closes together.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import type { CompileManifest } from '../../compiler/manifest';
import { ExecutionProvider, SessionOptions, SessionTuning, createSession, withArtifactConfig } from '../ort/session';
import { Store } from '../store/store';
import { STORE_DIR } from '../store/store-format';
import { OptimizerMode, TrainGraph, describeTrainGraph } from './step-graph';

/**
 * The compiler recomputes cheap activations in the backward with clones of forward nodes
 * (passes/memory/rematerialize.ts); onnxruntime's common-subexpression elimination would merge each clone
 * back into its original and keep the activation alive again.
 */
export const TRAINING_SESSION_CONFIG: Readonly<Record<string, string>> = {
  'optimization.disable_specified_optimizers': 'CommonSubexpressionElimination',
};

export interface StepSessionSettings {
  session?: SessionTuning;
  ep?: ExecutionProvider;
  fallbackToCpu?: boolean;
}

/**
 * Session options for train.onnx and grads.onnx. Graph optimization defaults to 'basic': at 'all' onnxruntime
 * also rewrites convolutions to its blocked NCHWc layout, which keeps reordered copies of the
 * frozen conv weights for the forward and the backward convolutions; on full SD 2.1 that cost
 * 1.2 GiB of peak RSS (5078 vs 3843 MiB) and made steps slower. The memory pattern is off too
 * (see SessionOptions.memPattern), and CSE (TRAINING_SESSION_CONFIG).
 */
export function trainingSession(options: StepSessionSettings): SessionOptions {
  return {
    ...options.session,
    optimization: options.session?.optimization ?? 'basic',
    memPattern: false,
    config: TRAINING_SESSION_CONFIG,
    ep: options.ep,
    fallbackToCpu: options.fallbackToCpu,
  };
}

export interface OpenStepGraph {
  store: Store;
  graph: TrainGraph;
  /** The session, started on the first call (a run with nothing left to do starts none). */
  session(): Promise<ort.InferenceSession>;
}

/**
 * Opens `<out>`'s store (or `storeDir`) read-only and the step graph of `optimizer` checked against
 * it, runs `fn`, and closes the store and the session whatever happens.
 */
export async function withStepGraph<T>(
  out: string,
  manifest: CompileManifest,
  options: StepSessionSettings & { storeDir?: string; optimizer: OptimizerMode },
  fn: (open: OpenStepGraph) => Promise<T>,
): Promise<T> {
  const { store } = Store.open(options.storeDir ?? path.join(out, STORE_DIR), { readOnly: true });
  let session: Promise<ort.InferenceSession> | undefined;
  try {
    const graph = describeTrainGraph(out, manifest, store, options.optimizer);
    return await fn({
      store,
      graph,
      session: () => (session ??= createSession(graph.file, withArtifactConfig(trainingSession(options), graph))),
    });
  } finally {
    store.close();
    if (session) await (await session.catch(() => undefined))?.release();
  }
}
