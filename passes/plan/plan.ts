/**
 * `hollowc plan`: the paper's resource tables (Tables 1, 3, 6, Fig. 5a) for any UNet, shape, rank
 * and LoRA targets, before anything is trained: one row per valid cut and `hollow none`. Every
 * figure comes from the graphs hollowc would emit (built in memory, never written), reading no
 * weights: parameters, store bytes, FLOPs (compiler/flops.ts; the paper's convention: layers with
 * weights only), and a predicted training-step peak.
 *
 * The memory model (CPU provider, fp32, host-side AdamW over grads.onnx, `hollowc train`'s default):
 *   peak = weights the training graph holds (all resident: file-backed pages of the mmapped
 *          external data) + FILE_BYTES (the binaries' own file-backed pages)
 *        + ACTIVATION_FACTOR × activations live at the peak of onnxruntime's execution order
 *          (each tensor from its producer to its last reader: the training graphs hide their
 *          shapes from onnxruntime's buffer reuse, passes/memory/release-dead-buffers.ts);
 *          ACTIVATION_FACTOR_BLOCKS under `recompute blocks`, whose live set is smaller but whose
 *          recomputed block temporaries are allocated among the kept activations as those die, so
 *          onnxruntime's arena holds about twice the live set (measured: the live set falls 490 ->
 *          274 MiB on full SD 2.1 at 64x64, the step's anonymous memory only 1090 -> 1017)
 *        + the largest float32 copy of a `base int8` / `fp16` weight (each copy is made right
 *          before its reader and dies after it, so about one is alive at a time, wherever the
 *          activations peak: counting the copies in the live set instead put one 112 MiB conv
 *          weight at the 32x32 peak and none at 64x64, where the measured rows hold ~100 MiB over
 *          fp32's at both sizes)
 *        + ARENA_BYTES (onnxruntime's CPU arena, which those graphs run with, beyond the live set)
 *        + LORA_COPIES × LoRA bytes (value and two moments; the step's gradients are returned
 *          as it ends, after the peak; 8-bit moments under `optimizer adamw8bit`)
 *        + under `train base`, each trained base weight's value, its gradient (returned all at
 *          once as the step ends: for full fine-tuning as large as the weights; half that under
 *          `gradients fp16`) and its moments
 *          (full fine-tuning of full SD 2.1 at 64x64, fp32 and 8-bit moments: held-out rows)
 *        + RUNTIME_BYTES (Node, onnxruntime, the session's graph).
 * Calibration (tests/bench/train-step.ts, full SD 2.1, r128, 2026-12-05, after release-dead-buffers):
 * the file-backed part is the weights + 69 MiB in every row; LORA_COPIES is counted, RUNTIME_BYTES
 * measured (a loaded session's anonymous memory without the LoRA values: 80 MiB at 39.2%). The
 * live set of the execution order grows with the latent area as the measured memory does (39.2%:
 * 153 -> 490 MiB from 32x32 to 64x64; the node order's grew 7x). ACTIVATION_FACTOR (the kernels'
 * scratch and the arena's chunks around the live tensors) and ARENA_BYTES are the least-squares fit
 * of the eight fp32 `recompute cheap` rows of 2026-12-05's second run (`hollow none`, 11.5%, 39.2%,
 * 73.3% at 32x32 and 64x64); ACTIVATION_FACTOR_BLOCKS is fitted to the one fp32 39.2% `recompute
 * blocks` row at 64x64 (2026-12-06). Every other measured row is held out of the fit (`base int8` /
 * `fp16`, the later runs, `recompute blocks` with `base int8`, the torch exports, SDXL at 1024 px):
 * tests/plan.test.ts refits the constants from the fit rows and checks the held-out rows within 10%.
 */
import { cloneModel } from '../../compiler/clone';
import { DataType, elementSize } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { countFlops, isWeightView } from '../../compiler/flops';
import { Graph, Model, Node, Value, tensorElementCount } from '../../compiler/ir';
import { staticBytes } from '../../compiler/shape-inference';
import { ArtifactName, TrainingSettings, isLoraParam, momentBytes } from '../../compiler/manifest';
import { presetsFor } from '../../models/presets';
import { CutInfo, UNetAnalysis } from '../lib/analyze-unet';
import { ArtifactState, ChunkFields, LoraConfig, pickChunkFields } from '../lib/artifact-state';
import { buildArtifact } from '../artifact-passes';
import { widenFloat16 } from '../lib/widen-float16';
import { pretransposeWeights } from '../structure/pretranspose-weights';
import { specializeShapes } from '../structure/specialize-shapes';
import { trainingShapes } from '../lib/training-shapes';

export const MiB = 2 ** 20;
export const ACTIVATION_FACTOR = 1.4;
export const ACTIVATION_FACTOR_BLOCKS = 2.1;
export const ARENA_BYTES = 90 * MiB;
export const LORA_COPIES = 3;
export const FILE_BYTES = 69 * MiB;
export const RUNTIME_BYTES = 80 * MiB;

/** With the memory rewrites' block sizes (the spec's `chunks` line): the artifacts are built as compile builds them. */
export interface PlanRequest extends ChunkFields {
  unet: { file: string; model: Model; analysis: UNetAnalysis };
  targets: readonly string[];
  lora: LoraConfig;
  training: TrainingSettings;
  samples: number;
  steps: number;
  /** Bytes of one precompute-store record for these latent and hollow-activation shapes (the store's format is the runtime's). */
  storeRecordBytes(latent: number[], activation: number[]): number;
  /**
   * The base weights that train (`train base`) under a cut, given its hollowed modules: the
   * spec's globs matched against what the cut keeps. None when absent.
   */
  trainBase?: (hollowedModules: readonly string[]) => readonly string[];
  /** Hears after each row: rows done, rows in all, the row's cut ('none' or the last kept down layer). */
  onRow?: (done: number, total: number, cut: string) => void;
}

export interface PlanRow {
  /** 'none' or the last kept down layer. */
  cut: string;
  preset?: string;
  hollowed: string[];
  fraction: number;
  baseParameters: number;
  loraParameters: number;
  /** Values of the base weights that train (`train base`). */
  trainedBaseParameters: number;
  storeBytesPerSample: number;
  flops: {
    /** The UNet alone (a merged or no LoRA). */
    plainForward: number;
    /** The UNet with the LoRA branches unmerged: LoRA fine-tuning's forward, the paper's inference baseline. */
    loraFtForward: number;
    precompute: number;
    hollowedForward: number;
    /** The paper's convention: forward + backward = 3 × the trained net's forward. */
    trainStepPaper: number;
    /** Counted on the training graph (train.onnx's are grads.onnx's): no weight gradients for frozen layers, so below 3 × forward. */
    trainStepCounted: number;
    inferTwoPath: number;
  };
  totals: { precompute: number; train: number; all: number };
  /** Two-path inference against LoRA FT's (the paper's Table 3 comparison). */
  inferenceOverhead: number;
  memory: {
    weightBytes: number;
    activationPeakBytes: number;
    /** The largest float32 copy of a stored weight (`base int8` / `fp16`), 0 under fp32. */
    weightCopyBytes: number;
    loraStateBytes: number;
    /** `train base`: the trained weights' values, gradients and moments. */
    baseStateBytes: number;
    predictedPeakBytes: number;
  };
  fitsBudget?: boolean;
}

export interface Plan {
  family: string;
  model: string;
  shapes: Record<string, number[]>;
  rank: number;
  samples: number;
  steps: number;
  conventions: { flops: string; memory: string };
  rows: PlanRow[];
  budgetBytes?: number;
  /** The row --budget picks: the fewest hollowed layers whose predicted peak fits. */
  chosen?: string;
}

/** Static copy of `model` at the training shapes (symbolic dims resolved), for FLOP counting. */
function specialized(model: Model, req: PlanRequest): Model {
  const copy = cloneModel(model);
  specializeShapes(copy, trainingShapes(copy, req.unet.analysis.family, req.training), { recordValueInfo: false });
  return copy;
}

/**
 * The paper's convention: layers with weights (Conv, Linear, and the LoRA branches, run unmerged as
 * diffusers runs them) at 2 x multiply-adds; attention's activation-by-activation products are not
 * in it. It reproduces the paper's Table 3 on full SD 2.1 at 64x64, r128: the figures, against the
 * paper's, are in docs/benchmarks.md (tests/plan.test.ts "Table 3" prints them), quoted once there.
 */
const flopsOf = (model: Model, trainedBase: readonly string[] = []) => {
  // the LoRA tensors and the trained base weights are weights the graph takes as inputs
  const weights = new Set([...model.graph.inputs.filter((v) => isLoraParam(v.name)).map((v) => v.name), ...trainedBase]);
  const c = countFlops(model.graph, weights);
  return c.matrix - c.activationMatrix;
};

/** Bytes of the weights a graph holds (its initializers, inline or external). */
function weightBytes(g: Graph): number {
  return g.initializers().reduce((a, v) => a + tensorElementCount(v.initializer!) * (elementSize(v.initializer!.dataType) ?? 4), 0);
}

/**
 * The order onnxruntime's CPU provider runs a graph in: a depth-first walk from the sinks (in node
 * order) that enters a node's producers from the highest node index down, so the producer with the
 * lowest index runs last, right before its reader (passes/precision/quantize-base.ts and order-sinks.ts rely
 * on the same order). The node list itself is a poor proxy: the backward's saved activations and
 * recomputations interleave differently, and its live set grows 7x from 32x32 to 64x64 latents
 * where onnxruntime's grows 4x.
 */
export function executionOrder(g: Graph): Node[] {
  const index = new Map(g.nodes.map((n, i) => [n, i]));
  const visited = new Set<Node>();
  const order: Node[] = [];
  for (const sink of g.nodes.filter((n) => n.outputs.every((o) => o.uses.length === 0))) {
    const stack: [Node, boolean][] = [[sink, false]];
    while (stack.length) {
      const [n, entered] = stack.pop()!;
      if (entered) {
        order.push(n);
        continue;
      }
      if (visited.has(n)) continue;
      visited.add(n);
      stack.push([n, true]);
      const producers = [...new Set(n.inputs.map((v) => v?.producer).filter((p): p is Node => !!p && !visited.has(p)))];
      // the highest index is entered first: pushed last
      producers.sort((x, y) => index.get(x)! - index.get(y)!);
      for (const p of producers) stack.push([p, false]);
    }
  }
  return order;
}

/**
 * Peak bytes of intermediate values alive at once when the graph runs in onnxruntime's order
 * (executionOrder), each from its producer to its last reader: the training graphs hide their
 * shapes from onnxruntime's buffer reuse (passes/memory/release-dead-buffers.ts), so a dead tensor's
 * memory is free for the next. Graph inputs (the LoRA values, counted apart) and views of the
 * weights (the float32 copies of `base int8`/`fp16` weights: weightCopyBytes) are left out.
 */
export function activationPeakBytes(g: Graph): number {
  const order = executionOrder(g);
  const at = new Map(order.map((n, i) => [n, i]));
  const outputs = new Set(g.outputs);
  const bytes = (v: Value) => (isWeightView(v) ? 0 : (staticBytes(v) ?? 0));
  let live = 0;
  let peak = 0;
  const dying: number[][] = order.map(() => []);
  order.forEach((n, i) => {
    for (const o of n.outputs) {
      live += bytes(o);
      const last = Math.max(i, ...o.uses.map((u) => at.get(u.node) ?? i));
      if (!outputs.has(o)) dying[last].push(bytes(o));
    }
    peak = Math.max(peak, live);
    for (const b of dying[i]) live -= b;
  });
  return peak;
}

/** The largest float32 copy a training graph makes of a stored weight (DequantizeLinear, Cast). */
export function weightCopyBytes(g: Graph): number {
  const copies = g.nodes
    .filter((n) => n.opType === 'DequantizeLinear' || n.opType === 'Cast')
    .map((n) => n.outputs[0])
    .filter((o) => o.type?.elemType === DataType.FLOAT && isWeightView(o));
  return Math.max(0, ...copies.map((o) => staticBytes(o) ?? 0));
}

function row(req: PlanRequest, cut: CutInfo | null, plain: number, loraFt: number): PlanRow {
  const { analysis } = req.unet;
  const inputs: ArtifactState = {
    analysis,
    cut,
    targets: req.targets,
    lora: req.lora,
    training: req.training,
    label: req.unet.file,
    structureOnly: true,
    trainBase: req.trainBase?.(cut?.hollowedModules ?? []) ?? [],
    ...pickChunkFields(req),
  };
  const build = (name: ArtifactName) => buildArtifact(name, req.unet.model, inputs);
  // hollowc train's default step: grads.onnx with AdamW on the host. train.onnx is not built: it is
  // grads.onnx's graph with AdamW in it, which adds no product of a layer with weights, so its
  // counted FLOPs, its LoRA and its hollow activation are grads.onnx's.
  const grads = build('grads');
  // Without a cut the trained net is the UNet with the LoRA branches: LoRA FT's forward, built once.
  const forward = cut ? flopsOf(specialized(build('forward').model, req)) : loraFt;
  const precompute = cut ? flopsOf(specialized(build('precompute').model, req)) : 0;
  const infer = flopsOf(specialized(build('infer').model, req));
  const values = (p: { shape: number[] }) => p.shape.reduce((x, y) => x * y, 1);
  const loraParameters = grads.state.loraParams!.reduce((a, p) => a + values(p), 0);
  const trainedBase = grads.state.baseParams ?? [];
  const state = req.training.optimizer.state;
  const gradientBytes = req.training.optimizer.gradients === 'fp16' ? 2 : 4;
  const latent = req.training.shapes.sample.slice(1);
  const activation = cut ? (trainingShapes(grads.model, analysis.family, req.training).hollow_activation?.slice(1) ?? []) : [];
  const memory = {
    weightBytes: weightBytes(grads.model.graph),
    activationPeakBytes: activationPeakBytes(grads.model.graph),
    weightCopyBytes: weightCopyBytes(grads.model.graph),
    // value and moments (float32: LORA_COPIES values' bytes)
    loraStateBytes: grads.state.loraParams!.reduce((a, p) => a + (LORA_COPIES - 2) * 4 * values(p) + momentBytes(values(p), state), 0),
    // value, gradient (float16 under `gradients fp16`) and moments
    baseStateBytes: trainedBase.reduce((a, p) => a + (4 + gradientBytes) * values(p) + momentBytes(values(p), state), 0),
    predictedPeakBytes: 0,
  };
  memory.predictedPeakBytes =
    memory.weightBytes +
    FILE_BYTES +
    (req.training.recompute === 'blocks' ? ACTIVATION_FACTOR_BLOCKS : ACTIVATION_FACTOR) * memory.activationPeakBytes +
    memory.weightCopyBytes +
    ARENA_BYTES +
    memory.loraStateBytes +
    memory.baseStateBytes +
    RUNTIME_BYTES;
  const trainStepPaper = 3 * forward;
  const preset = cut ? presetsFor(analysis.family).find((p) => p.lastKeptDown === cut.lastKeptDown)?.name : undefined;
  return {
    cut: cut?.lastKeptDown ?? 'none',
    ...(preset ? { preset } : {}),
    hollowed: cut ? [...cut.hollowed] : [],
    fraction: cut?.fraction ?? 0,
    baseParameters: analysis.totalParams - (cut?.removedParams ?? 0),
    loraParameters,
    trainedBaseParameters: trainedBase.reduce((a, p) => a + values(p), 0),
    storeBytesPerSample: cut ? req.storeRecordBytes(latent, activation) : 0,
    flops: {
      plainForward: plain,
      loraFtForward: loraFt,
      precompute,
      hollowedForward: forward,
      trainStepPaper,
      trainStepCounted: flopsOf(
        grads.model,
        trainedBase.map((p) => p.name),
      ),
      inferTwoPath: infer,
    },
    totals: {
      precompute: precompute * req.samples,
      train: trainStepPaper * req.steps,
      all: precompute * req.samples + trainStepPaper * req.steps,
    },
    inferenceOverhead: infer / loraFt - 1,
    memory,
  };
}

export function planUNet(request: PlanRequest, budgetBytes?: number, only?: readonly string[]): Plan {
  // a float16 export is planned as compile builds it: computed in float32, its weights stored float16
  const widened = widenFloat16(request.unet.model);
  // and a dynamo export's transposed weights as compile stores them
  const transposed = pretransposeWeights(widened?.model ?? request.unet.model);
  const model = transposed?.model ?? widened?.model;
  const req = model ? { ...request, unet: { ...request.unet, model } } : request;
  const { analysis } = req.unet;
  if (!req.training.shapes.sample)
    throw new HollowcError('give the training latent shape (--shape sample=1,4,64,64 or a spec with a `shape sample` line)');
  const plain = flopsOf(specialized(req.unet.model, req));
  const loraFt = flopsOf(
    specialized(
      buildArtifact('forward', req.unet.model, {
        analysis,
        cut: null,
        targets: req.targets,
        lora: req.lora,
        training: req.training,
        label: req.unet.file,
      }).model,
      req,
    ),
  );
  const wanted = (cut: string) => !only || only.includes(cut);
  // Smallest hollow first, as the paper's tables go; `hollow none` is the LoRA-FT baseline.
  const cuts = [...(wanted('none') ? [null] : []), ...analysis.cuts.filter((c) => wanted(c.lastKeptDown))];
  const rows = cuts.map((cut, i) => {
    const r = row(req, cut, plain, loraFt);
    req.onRow?.(i + 1, cuts.length, r.cut);
    return r;
  });
  const plan: Plan = {
    family: analysis.family,
    model: req.unet.file,
    shapes: req.training.shapes,
    rank: req.lora.rank,
    samples: req.samples,
    steps: req.steps,
    conventions: {
      flops:
        'FLOPs = 2 x multiply-adds of the layers with weights (Conv, Linear as MatMul/Gemm, the LoRA branches unmerged) on the emitted graphs at the training shapes, attention products left out as in the paper; training "paper" = 3 x the trained net\'s forward, "counted" = train.onnx as emitted (its LoRA weight gradients, products of two activations, left out like attention); overhead = two-path inference against LoRA FT\'s (UNet + unmerged LoRA)',
      memory: `predicted CPU peak (host AdamW) = weights held + ${FILE_BYTES / MiB} MiB + ${ACTIVATION_FACTOR} x activations live at the peak (${ACTIVATION_FACTOR_BLOCKS} x under recompute blocks) + the largest float32 weight copy (base int8/fp16) + ${ARENA_BYTES / MiB} MiB arena + ${LORA_COPIES} x LoRA bytes (less under 8-bit moments) + ${RUNTIME_BYTES / MiB} MiB runtime${rows.some((r) => r.trainedBaseParameters) ? '; train base: + the trained weights, their gradients and moments' : ''}`,
    },
    rows,
  };
  if (budgetBytes !== undefined) {
    plan.budgetBytes = budgetBytes;
    for (const r of rows) r.fitsBudget = r.memory.predictedPeakBytes <= budgetBytes;
    // Fewest hollowed layers that fit: hollow none first, then the cuts from the smallest hollow.
    plan.chosen = [...rows].sort((a, b) => a.hollowed.length - b.hollowed.length).find((r) => r.fitsBudget)?.cut;
  }
  return plan;
}
