/**
 * onnxruntime-node sessions for hollowc artifacts. Asking for a provider the installed binary
 * lacks throws deep inside onnxruntime; this turns that into one clear message, or a warned
 * fallback to the CPU when the caller allows it. With `placement: true` the first run is
 * profiled, and `describePlacement` then says how many nodes onnxruntime gave the provider and
 * how many fell back to the CPU (shape arithmetic apart: onnxruntime puts it on the CPU on
 * purpose).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import { loadModel } from '../../compiler/serde';
import type { SessionPool } from './session-pool';
import { noAdapterMessage, softwareVulkanIfNoGpu } from './vulkan';

export const EXECUTION_PROVIDERS = ['cpu', 'cuda', 'webgpu', 'tensorrt', 'dml', 'coreml', 'qnn'] as const;
export type ExecutionProvider = (typeof EXECUTION_PROVIDERS)[number];

export const WEBGPU_BUFFER_CACHES = ['bucket', 'simple', 'lazyRelease', 'disabled'] as const;
export type WebGpuBufferCache = (typeof WEBGPU_BUFFER_CACHES)[number];
/** hollowc's graphs have static shapes: see SessionOptions.webgpuBufferCache. */
export const WEBGPU_BUFFER_CACHE: WebGpuBufferCache = 'bucket';

export interface SessionOptions {
  ep?: ExecutionProvider;
  /** On a provider failure, run on the CPU with a warning instead of failing (default false). */
  fallbackToCpu?: boolean;
  /**
   * Keep the CPU arena off: peak memory then reflects what the graph needs (default true). Graphs
   * whose manifest entry says `cpuArena` turn it on (withArtifactConfig).
   */
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
  /**
   * Profile the first run so that `describePlacement(session)` can count nodes per provider
   * (default false). Profiling stops at `describePlacement`; until then every run is profiled.
   */
  placement?: boolean;
  /**
   * Op types to keep on the CPU when the provider is webgpu (onnxruntime's `forceCpuNodeNames`;
   * default none). Sin/Cos (the timestep embedding) are 2e-4 off absolute on SwiftShader but
   * moved outputs by < 2e-5 relative; name them for tighter agreement at 2-3 host copies per run.
   * (AdamW's bias correction computes beta^t with Exp, not WebGPU's less precise Pow.)
   */
  webgpuCpuOps?: readonly string[];
  /**
   * How the webgpu provider caches released storage buffers (onnxruntime's storageBufferCacheMode;
   * default WEBGPU_BUFFER_CACHE): 'bucket' (onnxruntime's own default) rounds each request up to a
   * size bucket, 'simple' reuses buffers of the exact size only, 'disabled' destroys them.
   */
  webgpuBufferCache?: WebGpuBufferCache;
  /**
   * onnxruntime's log level for this session (default 3, errors only: its placement warnings are
   * replaced by `report`; 0 is verbose and prints node placements to stderr).
   */
  logSeverityLevel?: 0 | 1 | 2 | 3 | 4;
  /**
   * Told once, after the session's first run, which provider ran it: `cpu`, or for a GPU
   * provider the placement summary (nodes on the device, CPU fallbacks by op, host copies).
   */
  report?: (line: string) => void;
  /** More onnxruntime session config entries by full key (`optimization.disable_specified_optimizers`). */
  config?: Readonly<Record<string, string>>;
  /** Write the optimized graph here (to look for weight-sized initializers the optimizer made). */
  optimizedModelFile?: string;
  log?: (message: string) => void;
  /** Keep the session open in this pool for later calls with the same model and options (session-pool.ts). */
  pool?: SessionPool;
}

/**
 * `options` plus what an artifact's manifest entry asks for: session config entries (float16
 * weights that must not be constant-folded: passes/precision/float16-weights.ts; lists of disabled optimizers
 * join) and the CPU arena (graphs whose tensors are freed as they die: passes/memory/release-dead-buffers.ts).
 */
export function withArtifactConfig(
  options: SessionOptions,
  artifact: { sessionConfig?: Record<string, string>; cpuArena?: boolean } | undefined,
): SessionOptions {
  if (artifact?.cpuArena) options = { ...options, disableArena: false };
  if (!artifact?.sessionConfig) return options;
  const config: Record<string, string> = { ...options.config };
  for (const [key, value] of Object.entries(artifact.sessionConfig)) {
    const listed = key === 'optimization.disable_specified_optimizers' && config[key];
    config[key] = listed ? [...new Set([...config[key].split(';'), ...value.split(';')])].join(';') : value; // onnxruntime splits on ';'
  }
  return { ...options, config };
}

/** The per-run knobs the runtime commands pass through to their sessions. */
export type SessionTuning = Pick<SessionOptions, 'intraOpThreads' | 'optimization' | 'report' | 'log' | 'webgpuBufferCache' | 'pool'>;

export function installedProviders(): string[] {
  return ort
    .listSupportedBackends()
    .filter((b) => b.bundled)
    .map((b) => b.name);
}

const CUDA_INSTALL = 'ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node';

/** Where each provider comes from in onnxruntime-node 1.30, for "you don't have it" messages. */
const HOW_TO_GET: Record<Exclude<ExecutionProvider, 'cpu'>, string> = {
  cuda: `on a machine with an NVIDIA GPU (CUDA 12, cuDNN 9) and internet access run ${CUDA_INSTALL}`,
  tensorrt: `on a machine with an NVIDIA GPU and TensorRT 10 installed, with internet access, run ${CUDA_INSTALL}`,
  webgpu: 'onnxruntime-node bundles it on Windows x64/arm64, Linux x64 and macOS arm64',
  dml: 'DirectML ships only in onnxruntime-node for Windows (x64, arm64)',
  coreml: 'CoreML ships only in onnxruntime-node for macOS (arm64)',
  qnn: 'onnxruntime-node has no QNN build; use onnxruntime (python or C++) with QNN on a Snapdragon device',
};

/** Why `ep` cannot be used by this onnxruntime-node binary, or undefined when it is there. */
export function missingProvider(ep: ExecutionProvider): string | undefined {
  if (ep === 'cpu') return undefined;
  const listed = ort.listSupportedBackends().find((b) => b.name === ep);
  if (listed?.bundled) return undefined;
  const what = listed
    ? `the ${ep} execution provider is not installed`
    : `this onnxruntime-node build (${process.platform} ${process.arch}) has no ${ep} execution provider`;
  return `${what}: ${HOW_TO_GET[ep]} (installed: ${installedProviders().join(', ')})`;
}

/** One line for a provider that is installed but would not start. */
export function startFailure(ep: ExecutionProvider, error: unknown): string {
  const first = String((error as Error)?.message ?? error).split('\n')[0];
  if (ep === 'webgpu' && /adapter/i.test(first)) return `the webgpu execution provider found no adapter: ${noAdapterMessage()}`;
  return `the ${ep} execution provider failed to start: ${first}`;
}

/** Op types `createSession` pins to the CPU under webgpu by default (see SessionOptions.webgpuCpuOps). */
export const WEBGPU_CPU_OPS: readonly string[] = [];

/** Names of the nodes of `modelFile` whose op type is in `opTypes` (the graph file only; weights are not read). */
export function nodeNamesOf(modelFile: string, opTypes: readonly string[]): string[] {
  if (!opTypes.length) return [];
  const types = new Set(opTypes);
  return loadModel(modelFile)
    .graph.nodes.filter((n) => types.has(n.opType) && n.name)
    .map((n) => n.name);
}

// onnxruntime's limit on one provider option value (the comma-joined forceCpuNodeNames).
const FORCE_CPU_LIMIT = 8192;

let profileCounter = 0;

interface SessionInfo {
  provider: ExecutionProvider;
  modelFile: string;
  /** Nodes kept on the CPU on purpose (webgpuCpuOps). */
  pinned: string[];
  profilePrefix?: string;
  placement?: Placement;
}

const INFO = new WeakMap<ort.InferenceSession, SessionInfo>();

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
    logSeverityLevel: options.logSeverityLevel ?? 3,
  };
}

async function open(modelFile: string, options: SessionOptions, provider: ExecutionProvider): Promise<ort.InferenceSession> {
  const base = baseOptions(options);
  // GPU providers profile their first run by default, so the placement can be reported.
  const profilePrefix =
    (options.placement ?? (provider !== 'cpu' && !!options.report))
      ? path.join(os.tmpdir(), `hollowc-placement-${process.pid}-${++profileCounter}`)
      : undefined;
  let forced = provider === 'webgpu' ? nodeNamesOf(modelFile, options.webgpuCpuOps ?? WEBGPU_CPU_OPS) : [];
  if (forced.join(',').length > FORCE_CPU_LIMIT) {
    // onnxruntime refuses provider option values over 8192 characters.
    (options.log ?? console.warn)(
      `warning: ${forced.length} nodes to keep on the CPU is more than onnxruntime's forceCpuNodeNames takes; keeping none`,
    );
    forced = [];
  }
  const session = await ort.InferenceSession.create(modelFile, {
    ...base,
    executionProviders: [
      provider === 'webgpu'
        ? {
            name: 'webgpu',
            storageBufferCacheMode: options.webgpuBufferCache ?? WEBGPU_BUFFER_CACHE,
            ...(forced.length ? { forceCpuNodeNames: forced } : {}),
          }
        : provider,
    ],
    ...(profilePrefix ? { enableProfiling: true, profileFilePrefix: profilePrefix } : {}),
  });
  INFO.set(session, { provider, modelFile, profilePrefix, pinned: forced });
  if (options.report) reportAfterFirstRun(session, options.report);
  return session;
}

/** Wraps `session.run` so that `report` hears, once, which provider ran the session and how. */
function reportAfterFirstRun(session: ort.InferenceSession, report: (line: string) => void): void {
  const run = session.run.bind(session) as (...args: unknown[]) => Promise<ort.InferenceSession.OnnxValueMapType>;
  let reported = false;
  session.run = (async (...args: unknown[]) => {
    const result = await run(...args);
    if (!reported) {
      reported = true;
      const info = INFO.get(session)!;
      // A pipeline's components are all model.onnx: name the folder too (unet/model.onnx).
      const name = `${path.basename(path.dirname(info.modelFile))}/${path.basename(info.modelFile)}`;
      report(info.provider === 'cpu' ? `${name}: cpu` : `${name}: ${describePlacement(session)?.summary ?? info.provider}`);
    }
    return result;
  }) as typeof session.run;
}

// The Vulkan driver choice happens once per process, before Dawn loads.
let softwareChecked = false;

/** A session for `modelFile`; release it with releaseSession (a pooled one stays open until its pool closes). */
export async function createSession(modelFile: string, options: SessionOptions = {}): Promise<ort.InferenceSession> {
  const { pool, ...rest } = options;
  if (pool) {
    // functions (report, log) are not part of the key: the session keeps its first caller's
    const key = JSON.stringify([path.resolve(modelFile), rest]);
    return pool.acquire(key, () => createSession(modelFile, rest));
  }
  const ep = options.ep ?? 'cpu';
  if (ep === 'cpu') return open(modelFile, options, 'cpu');
  const problem = missingProvider(ep);
  if (!problem && ep === 'webgpu' && !softwareChecked) {
    softwareChecked = true;
    const note = softwareVulkanIfNoGpu();
    if (note) (options.log ?? console.warn)(`note: ${note}`);
  }
  if (!problem) {
    try {
      return await open(modelFile, options, ep);
    } catch (e) {
      const why = startFailure(ep, e);
      if (!options.fallbackToCpu) throw new HollowcError(why, modelFile);
      (options.log ?? console.warn)(`warning: ${why}; running on the CPU instead`);
    }
  } else {
    if (!options.fallbackToCpu) throw new HollowcError(problem);
    (options.log ?? console.warn)(`warning: ${problem}; running on the CPU instead`);
  }
  return open(modelFile, options, 'cpu');
}

/** The provider a session from `createSession` runs on ('cpu' after a fallback). */
export function sessionProvider(session: ort.InferenceSession): ExecutionProvider | undefined {
  return INFO.get(session)?.provider;
}

export interface Placement {
  /** The provider asked for ('cpu' after a fallback). */
  provider: ExecutionProvider;
  /** Nodes that ran on the provider (copies to and from the host excluded). */
  deviceNodes: number;
  /** MemcpyToHost / MemcpyFromHost nodes onnxruntime inserted between the provider and the CPU. */
  copies: number;
  /** Nodes on the CPU that compute on float (or other non-shape) data: the real fallback. */
  cpuNodes: number;
  /** Nodes on the CPU that only do shape arithmetic (int64/bool tensors, Shape): on purpose. */
  shapeNodes: number;
  /** Nodes hollowc kept on the CPU for precision (SessionOptions.webgpuCpuOps). */
  pinnedNodes: number;
  cpuOps: Record<string, number>;
  pinnedOps: Record<string, number>;
  shapeOps: Record<string, number>;
  deviceOps: Record<string, number>;
  /** `webgpu: 1234 nodes, cpu fallback: 56 (Where 40, ...), shape ops on cpu: 300, host copies: 12` */
  summary: string;
}

interface ProfileEvent {
  cat?: string;
  name?: string;
  args?: {
    op_name?: string;
    provider?: string;
    input_type_shape?: Record<string, number[]>[];
    output_type_shape?: Record<string, number[]>[];
  };
}

const SHAPE_TYPES = new Set(['int64', 'int32', 'bool']);
const SHAPE_ELEMENTS = 64;

/** Shape arithmetic: Shape itself, or a node whose tensors are all small int64/int32/bool. */
function isShapeNode(e: ProfileEvent): boolean {
  if (e.args?.op_name === 'Shape' || e.args?.op_name === 'Size') return true;
  const tensors = [...(e.args?.input_type_shape ?? []), ...(e.args?.output_type_shape ?? [])].flatMap((t) => Object.entries(t));
  return tensors.length > 0 && tensors.every(([type, dims]) => SHAPE_TYPES.has(type) && dims.reduce((a, b) => a * b, 1) <= SHAPE_ELEMENTS);
}

const PROVIDER_NAMES: Record<string, string> = {
  CPUExecutionProvider: 'cpu',
  WebGpuExecutionProvider: 'webgpu',
  CUDAExecutionProvider: 'cuda',
  TensorrtExecutionProvider: 'tensorrt',
  DmlExecutionProvider: 'dml',
  CoreMLExecutionProvider: 'coreml',
  QNNExecutionProvider: 'qnn',
};

const count = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);
const total = (m: Record<string, number>) => Object.values(m).reduce((a, b) => a + b, 0);
const byCount = (m: Record<string, number>) =>
  Object.fromEntries(Object.entries(m).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])));

/** Node counts per provider from one profiled run (onnxruntime's chrome-trace JSON). */
export function placementFromProfile(events: ProfileEvent[], provider: ExecutionProvider, pinned: readonly string[] = []): Placement {
  const seen = new Set<string>();
  const pinnedSet = new Set(pinned);
  const pinnedOps: Record<string, number> = {};
  const cpuOps: Record<string, number> = {};
  const shapeOps: Record<string, number> = {};
  const deviceOps: Record<string, number> = {};
  let copies = 0;
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name?.endsWith('_kernel_time') || !e.args?.op_name) continue;
    if (seen.has(e.name)) continue;
    seen.add(e.name);
    const op = e.args.op_name;
    const where = PROVIDER_NAMES[e.args.provider ?? ''] ?? e.args.provider ?? 'cpu';
    if (op === 'MemcpyToHost' || op === 'MemcpyFromHost') copies++;
    else if (where !== 'cpu' || provider === 'cpu') count(deviceOps, op);
    else if (pinnedSet.has(e.name.slice(0, -'_kernel_time'.length))) count(pinnedOps, op);
    else if (isShapeNode(e)) count(shapeOps, op);
    else count(cpuOps, op);
  }
  const cpuNodes = total(cpuOps);
  const list = (m: Record<string, number>) =>
    Object.entries(byCount(m))
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
  const summary =
    provider === 'cpu'
      ? `cpu: ${total(deviceOps)} nodes`
      : `${provider}: ${total(deviceOps)} nodes, cpu fallback: ${cpuNodes}${cpuNodes ? ` (${list(cpuOps)})` : ''}` +
        `${total(pinnedOps) ? `, kept on cpu for precision: ${total(pinnedOps)} (${list(pinnedOps)})` : ''}, shape ops on cpu: ${total(shapeOps)}, host copies: ${copies}`;
  return {
    provider,
    deviceNodes: total(deviceOps),
    copies,
    cpuNodes,
    shapeNodes: total(shapeOps),
    pinnedNodes: total(pinnedOps),
    cpuOps: byCount(cpuOps),
    shapeOps: byCount(shapeOps),
    pinnedOps: byCount(pinnedOps),
    deviceOps: byCount(deviceOps),
    summary,
  };
}

/**
 * Which provider ran a session made with `placement: true` and how its nodes were split, from the
 * profile of the runs so far (call it after the first run; it ends profiling and deletes the
 * profile file). Undefined for sessions made without `placement`. Later calls return the same.
 */
export function describePlacement(session: ort.InferenceSession): Placement | undefined {
  const info = INFO.get(session);
  if (!info?.profilePrefix) return info?.placement;
  const prefix = info.profilePrefix;
  info.profilePrefix = undefined;
  session.endProfiling();
  const dir = path.dirname(prefix);
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.startsWith(path.basename(prefix) + '_') && f.endsWith('.json'))
    .map((f) => path.join(dir, f));
  try {
    const events = files.flatMap((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as ProfileEvent[]);
    info.placement = placementFromProfile(events, info.provider, info.pinned);
    if (info.placement.deviceNodes + info.placement.cpuNodes + info.placement.shapeNodes + info.placement.pinnedNodes === 0) {
      throw new HollowcError('describePlacement: the profile has no node events (call it after session.run)', info.modelFile);
    }
    return info.placement;
  } finally {
    for (const f of files) fs.rmSync(f, { force: true });
  }
}
