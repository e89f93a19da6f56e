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
 *        + ACTIVATION_FACTOR × activations live at the peak of the graph's node order
 *        + LORA_COPIES × LoRA bytes (value and two moments; the step's gradients are returned
 *          as it ends, after the peak)
 *        + RUNTIME_BYTES (Node, onnxruntime, the session's graph).
 * Calibration (tests/bench/train-step.ts, full SD 2.1, 32×32, r128, 2026-12-01, after the per-head
 * attention, GEGLU and gradient-buffer changes): the file-backed part is the weights + 69 MiB in
 * every row; LORA_COPIES is counted, RUNTIME_BYTES measured (a loaded session's anonymous memory
 * without the LoRA values: 80 MiB at 39.2%), ACTIVATION_FACTOR fitted to the anonymous memory of
 * `hollow none` (869 MiB) and 39.2% (823 MiB), 0.513 and 0.510 each. The two other measured cuts
 * were predicted before measuring them (README, "plan: predicted vs measured").
 */
import * as fs from 'fs';
import sharp from 'sharp';
import { Command, Option } from 'commander';
import { cloneModel } from '../compiler/clone';
import { elementSize } from '../compiler/dtype';
import { HollowcError } from '../compiler/errors';
import { countFlops } from '../compiler/flops';
import { Graph, Model, Node, tensorElementCount } from '../compiler/ir';
import { ArtifactName, BasePrecision, TrainingSettings, isLoraParam } from '../compiler/manifest';
import { presetsFor } from '../models/presets';
import { CutInfo } from '../passes/lib/analyze-unet';
import { ArtifactState, LoraConfig } from '../passes/lib/artifact-state';
import { findLoraSites } from '../passes/lib/lora-sites';
import { widenFloat16 } from '../passes/float16-weights';
import { buildArtifact } from '../passes/pipeline';
import { specializeShapes, trainingShapes } from '../passes/specialize-shapes';
import { recordLayout } from '../runtime/store';
import { LoadedUNet, checkSpecFile, loadUNet } from './compile';
import { out, parseCount } from './options';
import { trainingSettingsOf } from './spec-facts';
import { openPipelineFolder } from '../runtime/pipeline-folder';
import { DEFAULT_TARGETS, defaultTrainingSettings } from '../models/training-defaults';
import { matchesGlob } from '../dsl';

const MiB = 2 ** 20;
export const ACTIVATION_FACTOR = 0.51;
export const LORA_COPIES = 3;
export const FILE_BYTES = 69 * MiB;
export const RUNTIME_BYTES = 80 * MiB;

export interface PlanRequest {
  unet: LoadedUNet;
  targets: readonly string[];
  lora: LoraConfig;
  training: TrainingSettings;
  samples: number;
  steps: number;
}

export interface PlanRow {
  /** 'none' or the last kept down layer. */
  cut: string;
  preset?: string;
  hollowed: string[];
  fraction: number;
  baseParameters: number;
  loraParameters: number;
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
    /** Counted on train.onnx: no weight gradients for frozen layers, so below 3 × forward. */
    trainStepCounted: number;
    inferTwoPath: number;
  };
  totals: { precompute: number; train: number; all: number };
  /** Two-path inference against LoRA FT's (the paper's Table 3 comparison). */
  inferenceOverhead: number;
  memory: {
    weightBytes: number;
    activationPeakBytes: number;
    /** `base int8` / `fp16`: one float32 buffer per distinct shape of the weights dequantized or cast at their uses. */
    weightCastBytes: number;
    loraStateBytes: number;
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
 * in it. It reproduces Table 3 on full SD 2.1 at 64x64, r128: precompute 0.237T (paper 0.238T), LoRA
 * FT forward 0.714T (0.716T; the UNet alone is 0.678T, the r128 branches 0.036T), hollowed forward
 * 0.667T (2.004T / 3).
 */
const flopsOf = (model: Model) => {
  const lora = new Set(model.graph.inputs.filter((v) => isLoraParam(v.name)).map((v) => v.name));
  const c = countFlops(model.graph, lora);
  return c.matrix - c.activationMatrix;
};

/** Bytes of the weights a graph holds (its initializers, inline or external). */
function weightBytes(g: Graph): number {
  return g.initializers().reduce((a, v) => a + tensorElementCount(v.initializer!) * (elementSize(v.initializer!.dataType) ?? 4), 0);
}

/** A weight's float32 view at one use (`base int8`'s DequantizeLinear, a float16 weight's Cast). */
const isWeightCast = (n: Node) => (n.opType === 'Cast' || n.opType === 'DequantizeLinear') && !!n.inputs[0]?.initializer;

/**
 * Under `base int8` / `fp16` (or a float16 export) every use of a weight makes a float32 copy, and
 * onnxruntime's planner keeps one such buffer per weight shape for the next tensor of that shape
 * (README, issue 12's bench): the sum over distinct shapes. On full SD 2.1's 39.2% grads.onnx at
 * 64x64 it is 573 MiB (37 shapes), and the bench measured 562 (fp16) / 566 (int8) MiB more
 * anonymous memory than the float32 base.
 */
export function weightCastBytes(g: Graph): number {
  const shapes = new Map<string, number>();
  for (const n of g.nodes)
    if (isWeightCast(n)) {
      const dims = n.inputs[0]!.initializer!.dims;
      shapes.set(dims.join('x'), tensorElementCount({ dims }) * 4);
    }
  return [...shapes.values()].reduce((a, b) => a + b, 0);
}

/**
 * Peak bytes of intermediate values alive at once, walking the nodes in graph order. Weight casts
 * (first in node order, run right before their readers: passes/quantize-base.ts) are left out:
 * weightCastBytes counts them.
 */
export function activationPeakBytes(g: Graph): number {
  const lastUse = new Map<unknown, number>();
  g.nodes.forEach((n, i) => n.inputs.forEach((v) => v && lastUse.set(v, i)));
  const outputs = new Set(g.outputs);
  const bytes = (v: { type?: { elemType: number; shape?: unknown[] } }) =>
    v.type?.shape?.every((d) => typeof d === 'number')
      ? (v.type.shape as number[]).reduce((a, b) => a * b, 1) * (elementSize(v.type.elemType) ?? 4)
      : 0;
  let live = g.inputs.reduce((a, v) => a + bytes(v), 0);
  let peak = live;
  const dying: number[][] = g.nodes.map(() => []);
  g.nodes.forEach((n, i) => {
    if (isWeightCast(n)) return;
    for (const o of n.outputs) {
      live += bytes(o);
      const last = lastUse.get(o);
      if (last !== undefined && !outputs.has(o)) dying[last].push(bytes(o));
      else if (last === undefined && !outputs.has(o)) dying[i].push(bytes(o));
    }
    peak = Math.max(peak, live);
    for (const b of dying[i]) live -= b;
  });
  return peak;
}

function row(req: PlanRequest, cut: CutInfo | null, plain: number, loraFt: number): PlanRow {
  const { analysis } = req.unet;
  const inputs: ArtifactState = { analysis, cut, targets: req.targets, lora: req.lora, training: req.training, label: req.unet.file };
  const build = (name: ArtifactName) => buildArtifact(name, req.unet.model, inputs);
  const train = build('train');
  // hollowc train's default step: grads.onnx with AdamW on the host.
  const grads = build('grads');
  // Without a cut the trained net is the UNet with the LoRA branches: LoRA FT's forward, built once.
  const forward = cut ? flopsOf(specialized(build('forward').model, req)) : loraFt;
  const precompute = cut ? flopsOf(specialized(build('precompute').model, req)) : 0;
  const infer = flopsOf(specialized(build('infer').model, req));
  const loraParameters = train.state.loraParams!.reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0);
  const latent = req.training.shapes.sample.slice(1);
  const activation = cut ? (trainingShapes(train.model, analysis.family, req.training).hollow_activation?.slice(1) ?? []) : [];
  const memory = {
    weightBytes: weightBytes(grads.model.graph),
    activationPeakBytes: activationPeakBytes(grads.model.graph),
    weightCastBytes: weightCastBytes(grads.model.graph),
    loraStateBytes: LORA_COPIES * 4 * loraParameters,
    predictedPeakBytes: 0,
  };
  memory.predictedPeakBytes =
    memory.weightBytes +
    FILE_BYTES +
    ACTIVATION_FACTOR * memory.activationPeakBytes +
    memory.weightCastBytes +
    memory.loraStateBytes +
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
    storeBytesPerSample: cut ? recordLayout(latent, activation).recordBytes : 0,
    flops: {
      plainForward: plain,
      loraFtForward: loraFt,
      precompute,
      hollowedForward: forward,
      trainStepPaper,
      trainStepCounted: flopsOf(train.model),
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
  const req = widened ? { ...request, unet: { ...request.unet, model: widened.model } } : request;
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
  const rows = [
    ...(wanted('none') ? [row(req, null, plain, loraFt)] : []),
    ...analysis.cuts.filter((c) => wanted(c.lastKeptDown)).map((c) => row(req, c, plain, loraFt)),
  ];
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
      memory: `predicted CPU peak (host AdamW) = weights held + ${FILE_BYTES / MiB} MiB + ${ACTIVATION_FACTOR} x activations live at the peak + ${LORA_COPIES} x LoRA bytes + ${RUNTIME_BYTES / MiB} MiB runtime (+ under base int8/fp16 one float32 buffer per weight shape)`,
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

const T = (x: number) => `${(x / 1e12).toFixed(3)}T`;
const G = (x: number) => `${(x / 1e9).toFixed(2)}G`;
const mib = (x: number) => `${Math.round(x / MiB)} MiB`;

export function planText(p: Plan): string {
  const flop = p.rows.some((r) => r.flops.plainForward >= 1e11) ? T : G;
  const lines = [
    `${p.family} UNet ${p.model}: sample [${p.shapes.sample.join(', ')}], LoRA rank ${p.rank}, ${p.samples} samples, ${p.steps} steps`,
    ...(p.rows.length
      ? [
          `one inference step: ${flop(p.rows[0].flops.plainForward)} the UNet alone (LoRA merged), ${flop(p.rows[0].flops.loraFtForward)} with the LoRA branches unmerged (LoRA FT)`,
        ]
      : []),
    '',
    [
      'cut',
      'preset',
      'hollowed',
      'share',
      'base held',
      'LoRA',
      'peak (pred.)',
      'store/sample',
      'precompute',
      'train step',
      'train.onnx',
      'infer 2-path',
      'overhead',
      'total',
    ].join('  '),
  ];
  for (const r of p.rows) {
    lines.push(
      [
        `${r.cut === p.chosen ? '*' : ' '}${r.cut.padEnd(5)}`,
        (r.preset ?? '').padEnd(8),
        (r.hollowed.length ? `${r.hollowed[0]}..${r.hollowed[r.hollowed.length - 1]}` : '-').padEnd(9),
        `${(100 * r.fraction).toFixed(1)}%`.padStart(6),
        r.baseParameters.toLocaleString('en-US').padStart(12),
        r.loraParameters.toLocaleString('en-US').padStart(11),
        `${mib(r.memory.predictedPeakBytes)}${r.fitsBudget === false ? ' (over)' : ''}`.padStart(12),
        (r.storeBytesPerSample ? `${(r.storeBytesPerSample / 1024).toFixed(1)} KiB` : '-').padStart(12),
        flop(r.flops.precompute).padStart(10),
        flop(r.flops.trainStepPaper).padStart(10),
        flop(r.flops.trainStepCounted).padStart(10),
        flop(r.flops.inferTwoPath).padStart(12),
        `${(100 * r.inferenceOverhead).toFixed(1)}%`.padStart(8),
        flop(r.totals.all).padStart(10),
      ].join('  '),
    );
  }
  lines.push('', p.conventions.flops, p.conventions.memory);
  if (p.budgetBytes !== undefined)
    lines.push(
      p.chosen ? `* fits the ${mib(p.budgetBytes)} budget with the fewest hollowed layers` : `no configuration fits ${mib(p.budgetBytes)}`,
    );
  return lines.join('\n') + '\n';
}

/** Fig. 5a: predicted peak memory and training FLOPs against the hollowed fraction. */
export function planSvg(p: Plan): string {
  const W = 640;
  const H = 400;
  const m = { l: 70, r: 70, t: 40, b: 50 };
  const xs = p.rows.map((r) => 100 * r.fraction);
  const mem = p.rows.map((r) => r.memory.predictedPeakBytes / MiB);
  const giga = Math.max(...p.rows.map((r) => r.flops.trainStepPaper)) < 1e11;
  const unit = giga ? 'G' : 'T';
  const fl = p.rows.map((r) => r.flops.trainStepPaper / (giga ? 1e9 : 1e12));
  const xMax = Math.max(1, ...xs);
  const scale = (v: number, max: number) => m.t + (H - m.t - m.b) * (1 - v / (max * 1.1 || 1));
  const X = (x: number) => m.l + ((W - m.l - m.r) * x) / xMax;
  const path = (ys: number[], max: number) =>
    xs.map((x, i) => `${i ? 'L' : 'M'}${X(x).toFixed(1)},${scale(ys[i], max).toFixed(1)}`).join(' ');
  const [memMax, flMax] = [Math.max(...mem), Math.max(...fl)];
  const dots = (ys: number[], max: number, color: string) =>
    xs.map((x, i) => `<circle cx="${X(x).toFixed(1)}" cy="${scale(ys[i], max).toFixed(1)}" r="3" fill="${color}"/>`).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${p.family}: training memory and FLOPs vs hollowed fraction (rank ${p.rank}, sample ${p.shapes.sample.join('x')})</text>
<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>
<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="#1f77b4"/>
<line x1="${W - m.r}" y1="${m.t}" x2="${W - m.r}" y2="${H - m.b}" stroke="#d62728"/>
<text x="${W / 2}" y="${H - 12}" text-anchor="middle" class="x-label">hollowed fraction of parameters (%)</text>
<text transform="translate(18 ${H / 2}) rotate(-90)" text-anchor="middle" fill="#1f77b4" class="y-label">predicted peak memory (MiB)</text>
<text transform="translate(${W - 16} ${H / 2}) rotate(90)" text-anchor="middle" fill="#d62728" class="y-label">training FLOPs per step (${unit}, 3 x forward)</text>
${[0, 0.5, 1].map((f) => `<text x="${m.l - 6}" y="${scale(memMax * f * 1.1, memMax).toFixed(1)}" text-anchor="end">${Math.round(memMax * f * 1.1)}</text><text x="${W - m.r + 6}" y="${scale(flMax * f * 1.1, flMax).toFixed(1)}">${(flMax * f * 1.1).toFixed(2)}</text>`).join('')}
${[0, xMax / 2, xMax].map((x) => `<text x="${X(x).toFixed(1)}" y="${H - m.b + 16}" text-anchor="middle">${x.toFixed(0)}</text>`).join('')}
<path d="${path(mem, memMax)}" fill="none" stroke="#1f77b4" stroke-width="2" class="series-memory"/>${dots(mem, memMax, '#1f77b4')}
<path d="${path(fl, flMax)}" fill="none" stroke="#d62728" stroke-width="2" stroke-dasharray="5 3" class="series-flops"/>${dots(fl, flMax, '#d62728')}
</svg>
`;
}

/** `1GB`, `512MiB`, `4g`, `3000000000` -> bytes. */
export function parseBytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$/i.exec(text);
  if (!m) throw new HollowcError(`expected a size such as 4GB or 3500MiB, got ${JSON.stringify(text)}`);
  const unit = (m[2] ?? 'b').toLowerCase();
  const power = { b: 0, k: 1, kb: 1, kib: 1, m: 2, mb: 2, mib: 2, g: 3, gb: 3, gib: 3 }[unit]!;
  // Binary units throughout: memory is counted in MiB/GiB everywhere in hollowc.
  return Math.round(Number(m[1]) * 1024 ** power);
}

interface PlanCli {
  spec?: string;
  base: BasePrecision;
  shape?: string[];
  rank: number;
  alpha?: number;
  targets?: string[];
  samples: number;
  steps: number;
  budget?: string;
  json?: boolean;
  plot?: string;
}

function parseShape(text: string, previous: string[] = []): string[] {
  if (!/^[\w.]+=\d+(,\d+)*$/.test(text.trim()))
    throw new HollowcError(`--shape takes name=d0,d1,... (e.g. sample=1,4,64,64), got ${JSON.stringify(text)}`);
  return [...previous, text.trim()];
}

function requestOf(unet: LoadedUNet, o: PlanCli): PlanRequest {
  if (o.spec) {
    const spec = checkSpecFile(unet, o.spec).resolved;
    return {
      unet,
      targets: spec.lora.targets.map((t) => t.module),
      lora: { rank: spec.lora.rank, alpha: spec.lora.alpha },
      training: trainingSettingsOf(spec),
      samples: o.samples,
      steps: o.steps,
    };
  }
  const family = unet.analysis.family;
  const shapes: Record<string, number[]> = {};
  for (const s of o.shape ?? []) {
    const [name, dims] = s.split('=');
    shapes[name] = dims.split(',').map(Number);
  }
  if (!shapes.sample) shapes.sample = [1, 4, 64, 64];
  if (!shapes.timestep) shapes.timestep = [shapes.sample[0]];
  const globs = o.targets ?? DEFAULT_TARGETS;
  const targets = findLoraSites(unet.model.graph)
    .map((s) => s.module)
    .filter((m) => globs.some((g) => matchesGlob(g, m)));
  if (!targets.length) throw new HollowcError(`no layer matches --targets ${globs.join(' ')}`);
  const site = findLoraSites(unet.model.graph).find((s) => s.module === targets[0])!;
  if (o.rank > Math.min(site.inFeatures, site.outFeatures)) throw new HollowcError(`rank ${o.rank} exceeds the width of ${site.module}`);
  return {
    unet,
    targets,
    lora: { rank: o.rank, alpha: o.alpha ?? o.rank },
    training: { ...defaultTrainingSettings(family), shapes, batch: shapes.sample[0], base: o.base },
    samples: o.samples,
    steps: o.steps,
  };
}

/** The UNet of a pipeline folder, or a UNet file. */
function unetFile(path: string): string {
  return fs.existsSync(path) && fs.statSync(path).isDirectory() ? openPipelineFolder(path).unet.model : path;
}

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .description('the resource tables of the paper for this UNet: per cut, parameters, store size, FLOPs and predicted training memory')
    .argument('<unet>', 'a UNet .onnx or a pipeline folder')
    .option('--spec <file>', 'take shapes, rank and targets from a .hollow spec')
    .option('--shape <name=dims>', 'a static training shape, e.g. sample=1,4,64,64 (repeatable)', parseShape)
    .option('--rank <r>', 'LoRA rank', parseCount, 128)
    .option('--targets <globs...>', 'LoRA target globs (default: attn1/attn2 to_q to_k to_v to_out.0)')
    .option('--samples <n>', 'precomputed samples', parseCount, 200)
    .option('--steps <n>', 'training steps', parseCount, 1000)
    .addOption(
      // not int8: its scales are read off the weights, which plan never reads
      new Option('--base <dtype>', "frozen base precision of the training graphs (the spec's base line)")
        .choices(['fp32', 'fp16'])
        .default('fp32'),
    )
    .option('--budget <size>', 'memory budget (e.g. 4GB): marks the cut with the fewest hollowed layers that fits')
    .option('--json', 'print one JSON object')
    .option('--plot <file>', 'draw memory and FLOPs against the hollowed fraction (.svg, or .png)')
    .action(async (unetPath: string, o: PlanCli) => {
      const unet = loadUNet(unetFile(unetPath));
      const plan = planUNet(requestOf(unet, o), o.budget !== undefined ? parseBytes(o.budget) : undefined);
      if (o.plot) {
        const svg = planSvg(plan);
        if (o.plot.toLowerCase().endsWith('.png')) await sharp(Buffer.from(svg)).png().toFile(o.plot);
        else fs.writeFileSync(o.plot, svg);
      }
      if (o.json) out(JSON.stringify(plan));
      else process.stdout.write(planText(plan));
    });
}
