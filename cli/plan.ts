/** `hollowc plan`: the paper's resource tables for a UNet (cli/api/plan.ts), with progress on stderr when it takes a while. */
import * as fs from 'fs';
import sharp from 'sharp';
import { Command, Option } from 'commander';
import { HollowcError } from '../compiler/errors';
import { RECOMPUTE_MODES } from '../compiler/manifest';
import { planSvg, planText } from '../passes/plan/render';
import { ProgressLine, ProgressStream } from '../runtime/progress';
import { PlanOptions, planFor } from './api/plan';
import { out, parseCount } from './options';

/** Planning shorter than this shows no progress (a small UNet's plan is done before a line would help). */
const QUIET_MS = 1500;

/** Rows done on `stream`, from the first row finished QUIET_MS or more after the start. */
export function rowProgress(stream: ProgressStream = process.stderr, now: () => number = Date.now) {
  const started = now();
  let line: ProgressLine | undefined;
  return {
    onRow(done: number, total: number, cut: string): void {
      if (!line && now() - started < QUIET_MS) return;
      // counted from the row before this one, so the rate and ETA are per row from here
      (line ??= new ProgressLine('plan: row', total, stream, done - 1, () => now())).update(done, { cut });
    },
    finish: () => line?.finish(),
  };
}

function parseShape(text: string, previous: string[] = []): string[] {
  if (!/^[\w.]+=\d+(,\d+)*$/.test(text.trim()))
    throw new HollowcError(`--shape takes name=d0,d1,... (e.g. sample=1,4,64,64), got ${JSON.stringify(text)}`);
  return [...previous, text.trim()];
}

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .description('the resource tables of the paper for this UNet: per cut, parameters, store size, FLOPs and predicted training memory')
    .argument('<unet>', 'a UNet .onnx, a folder holding model.onnx, or a pipeline folder')
    .option('--spec <file>', 'take shapes, rank and targets from a .hollow spec')
    .option('--shape <name=dims>', 'a static training shape, e.g. sample=1,4,64,64 (repeatable)', parseShape)
    .option('--rank <r>', 'LoRA rank', parseCount, 128)
    .option('--targets <globs...>', 'LoRA target globs (default: attn1/attn2 to_q to_k to_v to_out.0)')
    .option('--train-base <globs...>', 'the base weights of these modules train too (the spec\'s train base; "*": full fine-tuning)')
    .addOption(
      new Option('--optimizer-state <precision>', "the AdamW moments (8bit: the spec's optimizer adamw8bit)")
        .choices(['fp32', '8bit'])
        .default('fp32'),
    )
    .addOption(
      new Option('--gradients <precision>', "how grads.onnx hands over the gradients (fp16: the spec's gradients fp16)")
        .choices(['fp32', 'fp16'])
        .default('fp32'),
    )
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
      const progress = rowProgress();
      let plan;
      try {
        plan = planFor(unetPath, { ...o, onRow: progress.onRow });
      } finally {
        progress.finish();
      }
      if (o.plot) {
        const svg = planSvg(plan);
        if (o.plot.toLowerCase().endsWith('.png')) await sharp(Buffer.from(svg)).png().toFile(o.plot);
        else fs.writeFileSync(o.plot, svg);
      }
      if (o.json) out(JSON.stringify(plan));
      else process.stdout.write(planText(plan));
    });
}
