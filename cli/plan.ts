/**
 * `hollowc plan`: the paper's resource tables for a UNet file or pipeline folder, from a spec or
 * from flags (passes/plan/ computes them).
 */
import * as fs from 'fs';
import sharp from 'sharp';
import { Command, Option } from 'commander';
import { HollowcError } from '../compiler/errors';
import { BasePrecision, RECOMPUTE_MODES, RecomputeMode } from '../compiler/manifest';
import { Plan, PlanRequest, planUNet } from '../passes/plan/plan';
import { planSvg, planText } from '../passes/plan/render';
import { chunkFieldsFromSpec } from '../passes/lib/artifact-state';
import { findLoraSites } from '../passes/lib/lora-sites';
import { recordLayout } from '../runtime/store/store-format';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { DEFAULT_TARGETS, defaultTrainingSettings } from '../models/training-defaults';
import { matchesGlob } from '../dsl';
import { checkSpecFile } from '../api/spec';
import { LoadedUNet, loadUNet } from '../api/unet';
import { out, parseCount } from './options';
import { trainingSettingsOf } from '../api/spec-facts';

const storeRecordBytes = (latent: number[], activation: number[]) => recordLayout(latent, activation).recordBytes;

/** `1GB`, `512MiB`, `4g`, `3000000000` -> bytes. */
export function parseBytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$/i.exec(text);
  if (!m) throw new HollowcError(`expected a size such as 4GB or 3500MiB, got ${JSON.stringify(text)}`);
  const unit = (m[2] ?? 'b').toLowerCase();
  const power = { b: 0, k: 1, kb: 1, kib: 1, m: 2, mb: 2, mib: 2, g: 3, gb: 3, gib: 3 }[unit]!;
  // Binary units throughout: memory is counted in MiB/GiB everywhere in hollowc.
  return Math.round(Number(m[1]) * 1024 ** power);
}

export interface PlanOptions {
  spec?: string;
  base?: BasePrecision;
  recompute?: RecomputeMode;
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

function requestOf(unet: LoadedUNet, o: PlanOptions): PlanRequest {
  if (o.spec) {
    const spec = checkSpecFile(unet, o.spec).resolved;
    return {
      unet,
      targets: spec.lora.targets.map((t) => t.module),
      lora: { rank: spec.lora.rank, alpha: spec.lora.alpha },
      training: trainingSettingsOf(spec),
      ...chunkFieldsFromSpec(spec.chunks),
      samples: o.samples,
      steps: o.steps,
      storeRecordBytes,
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
    training: { ...defaultTrainingSettings(family), shapes, batch: shapes.sample[0], base: o.base ?? 'fp32', recompute: o.recompute ?? 'cheap' },
    samples: o.samples,
    steps: o.steps,
    storeRecordBytes,
  };
}

/** The UNet of a pipeline folder, or a UNet file. */
function unetFile(path: string): string {
  return fs.existsSync(path) && fs.statSync(path).isDirectory() ? openPipelineFolder(path).unet.model : path;
}

/** `hollowc plan <unet>` as a function: the plan of a UNet file or a pipeline folder's UNet. */
export function planFor(unetPath: string, o: PlanOptions): Plan {
  const unet = loadUNet(unetFile(unetPath));
  return planUNet(requestOf(unet, o), o.budget !== undefined ? parseBytes(o.budget) : undefined);
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
      new Option('--base <dtype>', "frozen base precision of the training graphs (the spec's base line)")
        .choices(['fp32', 'fp16', 'int8'])
        .default('fp32'),
    )
    .addOption(
      new Option('--recompute <what>', "what the training graphs' backward recomputes (the spec's recompute line)")
        .choices([...RECOMPUTE_MODES])
        .default('cheap'),
    )
    .option('--budget <size>', 'memory budget (e.g. 4GB): marks the cut with the fewest hollowed layers that fits')
    .option('--json', 'print one JSON object')
    .option('--plot <file>', 'draw memory and FLOPs against the hollowed fraction (.svg, or .png)')
    .action(async (unetPath: string, o: PlanOptions) => {
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
