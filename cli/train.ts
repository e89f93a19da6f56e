/** `hollowc train`: train.onnx over the store, with checkpoints and resume. */
import * as path from 'path';
import { Command, Option } from 'commander';
import { HollowcError } from '../compiler/errors';
import { ExecutionProvider } from '../runtime/ort/session';
import { formatDuration, progressFromFirstUpdate } from '../runtime/progress';
import { train } from '../runtime/train/train';
import { OPTIMIZER_MODES, OptimizerMode } from '../runtime/train/step-graph';
import { TuningCli, out, parseCount, parseNumber, parseSeed, sessionOptions, tuning } from './options';

interface TrainCli extends TuningCli {
  steps?: number;
  resume?: boolean;
  restart?: boolean;
  checkpointEvery?: number;
  lr?: number;
  priorWeight?: number;
  seed?: number;
  store?: string;
  optimizer?: OptimizerMode;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

export function registerTrain(program: Command): void {
  const command = program
    .command('train')
    .description('LoRA training over the store (grads.onnx + AdamW on the host when compiled, else train.onnx), checkpoints, resume')
    .argument('<out>', 'a compiled folder with a precomputed store')
    .option('--steps <n>', "total steps to reach (default: the spec's train steps)", parseCount)
    .option('--resume', 'continue from <out>/train/checkpoint.safetensors, bit for bit')
    .option('--restart', 'discard an existing checkpoint and start over')
    .option('--checkpoint-every <n>', "steps between checkpoints (default: the spec's checkpoint_every)", parseCount)
    .option('--lr <x>', "learning rate (default: the spec's; on --resume the checkpoint's)", parseNumber)
    .option('--seed <n>', "record-order seed (default: the spec's)", parseSeed)
    .option('--prior-weight <x>', "loss weight of the store's class samples (default: the spec's loss prior_weight)", parseNumber)
    .option('--store <dir>', 'store folder (default <out>/store)')
    .addOption(
      new Option(
        '--optimizer <where>',
        'AdamW in train.onnx (graph) or on the host after grads.onnx (host: less memory); default host when the folder has grads.onnx',
      ).choices([...OPTIMIZER_MODES]),
    );
  sessionOptions(command).action(async (dir: string, o: TrainCli) => {
    if (o.resume && o.restart) throw new HollowcError('give --resume or --restart, not both');
    const progress = progressFromFirstUpdate('step');
    const r = await train({
      out: dir,
      steps: o.steps,
      resume: o.resume,
      restart: o.restart,
      checkpointEvery: o.checkpointEvery,
      lr: o.lr,
      priorWeight: o.priorWeight,
      seed: o.seed,
      storeDir: o.store,
      optimizer: o.optimizer,
      ep: o.ep,
      fallbackToCpu: o.cpuFallback,
      session: tuning(o),
      onStep: (s) => {
        progress.update(s.step, s.steps, { loss: s.loss.toFixed(5) });
      },
    }).finally(() => progress.finish());
    const first = r.losses[0];
    const last = r.losses[r.losses.length - 1];
    if (!r.losses.length) out(`already at step ${r.step}; nothing to train`);
    else
      out(
        `trained steps ${first.step}..${last.step} (batch ${r.batch}) in ${formatDuration(r.seconds)} (${(r.losses.length / r.stepSeconds).toFixed(1)} it/s): loss ${first.loss.toFixed(5)} -> ${last.loss.toFixed(5)}`,
      );
    out(`  optimizer: ${r.optimizer === 'host' ? 'host (grads.onnx, AdamW on the host)' : 'graph (train.onnx, AdamW in the graph)'}`);
    out(`  loss log: ${path.join(dir, 'train', 'loss.jsonl')}`);
    out(`  checkpoint: ${r.checkpointFile}`);
    out(`  LoRA (peft): ${r.loraFile}`);
  });
}
