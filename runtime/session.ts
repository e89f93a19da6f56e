/**
 * onnxruntime-node sessions for hollowc artifacts. Asking for a provider the installed binary
 * lacks throws deep inside onnxruntime; this turns that into one clear message, or a warned
 * fallback to the CPU when the caller allows it.
 */
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../compiler/errors';

export type ExecutionProvider = 'cpu' | 'cuda' | 'webgpu' | 'tensorrt' | 'dml' | 'coreml';

export interface SessionOptions {
  ep?: ExecutionProvider;
  /** On a provider failure, run on the CPU with a warning instead of failing (default false). */
  fallbackToCpu?: boolean;
  /** Keep the CPU arena off: peak memory then reflects what the graph needs (default true). */
  disableArena?: boolean;
  intraOpThreads?: number;
  /** onnxruntime graph optimization level (default 'all'); 'basic' starts big graphs ~2x faster. */
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /**
   * Let onnxruntime plan one block for all intermediate tensors (default true). Off, tensors are
   * allocated as they come and freed as they die, which lowered a full SD 2.1 train step's peak
   * RSS by ~290 MiB (3586 vs 3874) at the same step time.
   */
  memPattern?: boolean;
  /** More onnxruntime session config entries by full key (`optimization.disable_specified_optimizers`). */
  config?: Readonly<Record<string, string>>;
  /** Write the optimized graph here (to look for weight-sized initializers the optimizer made). */
  optimizedModelFile?: string;
  log?: (message: string) => void;
}

/** The per-run knobs the runtime commands pass through to their sessions. */
export type SessionTuning = Pick<SessionOptions, 'intraOpThreads' | 'optimization'>;

export function installedProviders(): string[] {
  return ort.listSupportedBackends().filter((b) => b.bundled).map((b) => b.name);
}

/**
 * onnxruntime-node's `extra` option for config entries given by full key: the binding joins
 * nested keys with dots, so `session.disable_prepacking` is `{ session: { disable_prepacking } }`.
 * Prepacking is off: it copies every weight into a second layout (it doubled peak RSS in our checks).
 */
export function sessionExtra(config: Readonly<Record<string, string>> = {}): Record<string, Record<string, string>> {
  const extra: Record<string, Record<string, string>> = { session: { disable_prepacking: '1' } };
  for (const [key, value] of Object.entries(config)) {
    const dot = key.indexOf('.');
    if (dot <= 0) throw new Error(`session config key ${JSON.stringify(key)} has no section (e.g. session.x, optimization.x)`);
    (extra[key.slice(0, dot)] ??= {})[key.slice(dot + 1)] = value;
  }
  return extra;
}

function baseOptions(options: SessionOptions): ort.InferenceSession.SessionOptions {
  return {
    enableCpuMemArena: !(options.disableArena ?? true),
    extra: sessionExtra(options.config),
    ...(options.optimizedModelFile ? { optimizedModelFilePath: options.optimizedModelFile } : {}),
    graphOptimizationLevel: options.optimization ?? 'all',
    enableMemPattern: options.memPattern ?? true,
    ...(options.intraOpThreads ? { intraOpNumThreads: options.intraOpThreads } : {}),
  };
}

export async function createSession(modelFile: string, options: SessionOptions = {}): Promise<ort.InferenceSession> {
  const ep = options.ep ?? 'cpu';
  const base = baseOptions(options);
  if (ep === 'cpu') return ort.InferenceSession.create(modelFile, { ...base, executionProviders: ['cpu'] });
  const listed = ort.listSupportedBackends().find((b) => b.name === ep);
  const problem = !listed
    ? `this onnxruntime-node build has no ${ep} execution provider (it has: ${installedProviders().join(', ')})`
    : !listed.bundled
      ? `the ${ep} execution provider is not installed (run ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node on a machine with internet access)`
      : undefined;
  if (!problem) {
    try {
      return await ort.InferenceSession.create(modelFile, { ...base, executionProviders: [ep] });
    } catch (e) {
      const why = `the ${ep} execution provider failed to start: ${(e as Error).message.split('\n')[0]}`;
      if (!options.fallbackToCpu) throw new HollowcError(why, modelFile);
      (options.log ?? console.warn)(`warning: ${why}; running on the CPU instead`);
    }
  } else {
    if (!options.fallbackToCpu) throw new HollowcError(problem);
    (options.log ?? console.warn)(`warning: ${problem}; running on the CPU instead`);
  }
  return ort.InferenceSession.create(modelFile, { ...base, executionProviders: ['cpu'] });
}
