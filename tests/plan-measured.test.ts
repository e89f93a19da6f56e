/**
 * `hollowc plan`'s predicted training peak against measured ones: the constants of its memory
 * model (passes/plan/plan.ts) are refitted here from the rows they were fitted to, and every other
 * measured row of the README and docs/benchmarks.md is held out of that fit and must come within
 * 10%: later runs, `base int8` / `fp16`, `recompute blocks` with `base int8`, the torch exports users
 * have (their graphs: tests/fixtures/real-exports), `hollowc train` as users run it, full fine-tuning
 * (fp32 and 8-bit moments) and SDXL at 1024 px.
 */
import { FamilyName } from '../models/families';
import { MiB } from '../passes/plan/plan';
import { ACTIVATION_FACTOR, ACTIVATION_FACTOR_BLOCKS, ARENA_BYTES, PlanRequest, PlanRow, planUNet } from '../passes/plan/plan';
import { builderGraph, fullSizeRequest, realExportGraph } from './support/plan-request';
import { defaultTrainingSettings } from '../models/training-defaults';
import { findBaseParameters } from '../passes/lib/base-parameters';

type Graph = 'sd21' | 'sd21-opset14' | 'sd15' | 'sd15-opset17' | 'sdxl';

/** One measured peak RSS of a host-AdamW training step, LoRA r128 on attn1/attn2 (the bench's rows). */
interface Measured {
  graph: Graph;
  side: number;
  cut: string;
  settings?: Partial<PlanRequest['training']>;
  attentionChunkBytes?: number;
  /** `train base "*"` (full fine-tuning of what the cut keeps), without LoRA. */
  fullFineTuning?: boolean;
  MiB: number;
  /** Where it was measured (docs/benchmarks.md). */
  source: string;
  /** The plan's constants are fitted to this row; the others are held out. */
  fit?: 'cheap' | 'blocks';
}

const BLOCKS = { recompute: 'blocks' as const };
const EIGHT_BIT = { optimizer: { ...defaultTrainingSettings('sd21').optimizer, state: '8bit' as const } };
const MEASURED: Measured[] = [
  // 2026-12-05, second run, train-step.ts: the fp32 `recompute cheap` rows (the fit)
  ...(
    [
      [32, 'none', 4111],
      [32, '4-2', 3655],
      [32, '3-2', 2738],
      [32, '2-3', 1458],
      [64, 'none', 4556],
      [64, '4-2', 4163],
      [64, '3-2', 3206],
      [64, '2-3', 1864],
    ] as const
  ).map(([side, cut, MiB]): Measured => ({ graph: 'sd21', side, cut, MiB, source: '2026-12-05 second run', fit: 'cheap' })),
  { graph: 'sd21', side: 64, cut: '3-2', settings: BLOCKS, MiB: 3105, source: '2026-12-06', fit: 'blocks' },
  // held out
  { graph: 'sd21', side: 32, cut: '3-2', settings: { base: 'int8' }, MiB: 1315, source: '2026-12-05 second run' },
  { graph: 'sd21', side: 64, cut: '3-2', settings: { base: 'int8' }, MiB: 1803, source: '2026-12-05 second run' },
  { graph: 'sd21', side: 32, cut: '3-2', settings: { base: 'fp16' }, MiB: 1816, source: '2026-12-05 second run' },
  { graph: 'sd21', side: 64, cut: '3-2', settings: { base: 'fp16' }, MiB: 2304, source: '2026-12-05 second run' },
  { graph: 'sd21', side: 32, cut: '3-2', MiB: 2717, source: '2026-12-06' },
  { graph: 'sd21', side: 64, cut: '3-2', MiB: 3178, source: '2026-12-06' },
  { graph: 'sd21', side: 32, cut: '3-2', settings: { base: 'int8' }, MiB: 1292, source: '2026-12-06' },
  { graph: 'sd21', side: 64, cut: '3-2', settings: { base: 'int8' }, MiB: 1739, source: '2026-12-06' },
  { graph: 'sd21', side: 64, cut: '3-2', settings: { base: 'int8', ...BLOCKS }, MiB: 1750, source: '2026-12-06' },
  { graph: 'sd21-opset14', side: 64, cut: '3-2', MiB: 3187, source: '2026-12-07, the real SD 2.1 export' },
  // `hollowc train` (2 steps) as a user runs it, builder and torch export forms (cli-peaks.ts, 2026-12-07)
  { graph: 'sd21', side: 64, cut: '3-2', MiB: 3192, source: '2026-12-07, hollowc train' },
  { graph: 'sd21-opset14', side: 64, cut: '3-2', MiB: 3202, source: '2026-12-07, hollowc train' },
  { graph: 'sd15', side: 64, cut: '3-2', MiB: 3198, source: '2026-12-07, hollowc train' },
  { graph: 'sd15-opset17', side: 64, cut: '3-2', MiB: 3199, source: '2026-12-07, hollowc train' },
  // full fine-tuning, host AdamW over every kept weight (train-step.ts full-*, 2026-12-07)
  { graph: 'sd21', side: 64, cut: 'none', fullFineTuning: true, MiB: 19725, source: '2026-12-07, full fine-tuning' },
  { graph: 'sd21', side: 64, cut: 'none', settings: EIGHT_BIT, fullFineTuning: true, MiB: 14792, source: '2026-12-07, full fine-tuning' },
  { graph: 'sd21', side: 64, cut: '3-2', fullFineTuning: true, MiB: 13536, source: '2026-12-07, full fine-tuning' },
  { graph: 'sd21', side: 64, cut: '3-2', settings: EIGHT_BIT, fullFineTuning: true, MiB: 10529, source: '2026-12-07, full fine-tuning' },
  // sdxl-mid (the whole mid block), base int8, recompute blocks, chunks attention 96MiB, 128x128
  {
    graph: 'sdxl',
    side: 128,
    cut: '3-2',
    settings: { base: 'int8', ...BLOCKS },
    attentionChunkBytes: 96 * MiB,
    MiB: 6095,
    source: '2026-12-06, SDXL at 1024 px',
  },
];

const FAMILY: Record<Graph, FamilyName> = { sd21: 'sd21', 'sd21-opset14': 'sd21', sd15: 'sd15', 'sd15-opset17': 'sd15', sdxl: 'sdxl' };
const graphs = new Map<Graph, ReturnType<typeof builderGraph> | string>();
function graphOf(g: Graph) {
  if (!graphs.has(g)) graphs.set(g, g === 'sd21' || g === 'sd15' || g === 'sdxl' ? builderGraph(g) : realExportGraph(g));
  return graphs.get(g)!;
}

/** Each measured row's plan row, one planUNet call per graph, size and settings. */
function planned(rows: Measured[]): PlanRow[] {
  const cache = new Map<string, PlanRow[]>();
  return rows.map((m) => {
    const key = JSON.stringify([m.graph, m.side, m.settings, m.attentionChunkBytes, m.fullFineTuning]);
    if (!cache.has(key)) {
      const cuts = [
        ...new Set(
          rows
            .filter((r) => JSON.stringify([r.graph, r.side, r.settings, r.attentionChunkBytes, r.fullFineTuning]) === key)
            .map((r) => r.cut),
        ),
      ];
      const req = fullSizeRequest(FAMILY[m.graph], m.side, graphOf(m.graph));
      const graph = req.unet.model.graph;
      const request: PlanRequest = {
        ...req,
        training: { ...req.training, ...m.settings },
        attentionChunkBytes: m.attentionChunkBytes,
        ...(m.fullFineTuning
          ? {
              targets: [],
              // every weight the cut keeps, as `train base "*"` resolves it
              trainBase: (hollowed: readonly string[]) =>
                findBaseParameters(graph)
                  .filter((p) => !hollowed.some((h) => p.module.startsWith(`${h}.`)))
                  .map((p) => p.name),
            }
          : {}),
      };
      const t = Date.now();
      cache.set(key, planUNet(request, undefined, cuts).rows);
      // eslint-disable-next-line no-console
      console.log(`planned ${key} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    }
    return cache.get(key)!.find((r) => r.cut === m.cut)!;
  });
}

/** What the model puts beside its activation term, in MiB: the measured peak less this is what the fit explains. */
function fixedMiB(r: PlanRow, factor: number): number {
  return (r.memory.predictedPeakBytes - factor * r.memory.activationPeakBytes - ARENA_BYTES) / MiB;
}

describe('plan against measured training peaks (full-size UNets, r128)', () => {
  let rows: PlanRow[];
  beforeAll(() => {
    rows = planned(MEASURED);
  }, 600_000);
  const label = (m: Measured) =>
    `${m.graph} ${m.side}x${m.side} ${m.cut}${m.fullFineTuning ? ' train base "*"' : ''}${m.settings ? ` ${JSON.stringify({ ...m.settings, ...(m.settings.optimizer ? { optimizer: m.settings.optimizer.state } : {}) })}` : ''} (${m.source})`;

  test("the constants are the fit rows' least squares: activation factor and arena from the cheap rows, the blocks factor from its row", () => {
    const cheap = MEASURED.map((m, i) => ({ m, r: rows[i] })).filter((x) => x.m.fit === 'cheap');
    expect(cheap).toHaveLength(8);
    // measured - the fixed terms = factor x live activations + arena, over the eight rows
    const xs = cheap.map((x) => x.r.memory.activationPeakBytes / MiB);
    const ys = cheap.map((x) => x.m.MiB - fixedMiB(x.r, ACTIVATION_FACTOR));
    const n = xs.length;
    const mx = xs.reduce((a, b) => a + b) / n;
    const my = ys.reduce((a, b) => a + b) / n;
    const factor = xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0);
    const arena = my - factor * mx;
    // eslint-disable-next-line no-console
    console.log(
      `fit: activation factor ${factor.toFixed(4)} (plan: ${ACTIVATION_FACTOR}), arena ${arena.toFixed(1)} MiB (plan: ${ARENA_BYTES / MiB})`,
    );
    expect(Math.abs(factor - ACTIVATION_FACTOR)).toBeLessThan(0.01);
    expect(Math.abs(arena - ARENA_BYTES / MiB)).toBeLessThan(1);
    const i = MEASURED.findIndex((m) => m.fit === 'blocks');
    const blocks =
      (MEASURED[i].MiB - fixedMiB(rows[i], ACTIVATION_FACTOR_BLOCKS) - ARENA_BYTES / MiB) / (rows[i].memory.activationPeakBytes / MiB);
    // eslint-disable-next-line no-console
    console.log(`fit: recompute blocks factor ${blocks.toFixed(4)} (plan: ${ACTIVATION_FACTOR_BLOCKS})`);
    expect(Math.abs(blocks - ACTIVATION_FACTOR_BLOCKS)).toBeLessThan(0.01);
  });

  test('the fit rows within 3%', () => {
    MEASURED.forEach((m, i) => {
      if (!m.fit) return;
      const error = rows[i].memory.predictedPeakBytes / MiB / m.MiB - 1;
      // eslint-disable-next-line no-console
      console.log(
        `fit      ${label(m)}: predicted ${(rows[i].memory.predictedPeakBytes / MiB).toFixed(0)}, measured ${m.MiB} (${(100 * error).toFixed(1)}%)`,
      );
      expect([label(m), Math.abs(error) < 0.03]).toEqual([label(m), true]);
    });
  });

  test('every held-out row within 10%', () => {
    const held = MEASURED.filter((m) => !m.fit);
    expect(held.length).toBeGreaterThanOrEqual(19);
    MEASURED.forEach((m, i) => {
      if (m.fit) return;
      const error = rows[i].memory.predictedPeakBytes / MiB / m.MiB - 1;
      // eslint-disable-next-line no-console
      console.log(
        `held out ${label(m)}: predicted ${(rows[i].memory.predictedPeakBytes / MiB).toFixed(0)}, measured ${m.MiB} (${(100 * error).toFixed(1)}%)`,
      );
      expect([label(m), Math.abs(error) < 0.1]).toEqual([label(m), true]);
    });
  });
});
