/** `hollowc train`: the step graph (grads.onnx, or train.onnx) over the store, with checkpoints and resume. */
import { Command, Option } from 'commander';
import { HollowcError } from '../compiler/errors';
import { ExecutionProvider } from '../runtime/ort/session';
import { formatDuration, progressFromFirstUpdate } from '../runtime/progress';
import { DEFAULT_CHECKPOINT_MINUTES, DEFAULT_CHECKPOINT_STEPS, TrainResult, train } from '../runtime/train/train';
import { OPTIMIZER_MODES, OptimizerMode } from '../runtime/train/step-graph';
import { stopOnSignals } from '../runtime/train/stop-signals';
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

const OPTIMIZER_LINES: Record<OptimizerMode, string> = {
  host: 'host (grads.onnx, AdamW on the host)',
  graph: 'graph (train.onnx, AdamW in the graph)',
};

export function registerTrain(program: Command): void {
  const command = program
    .command('train')
    .description(
      'LoRA training over the store (grads.onnx + AdamW on the host when compiled, else train.onnx), checkpoints, resume; ' +
        'kill (SIGTERM, SIGINT, SIGHUP) stops after the current step with a checkpoint that --resume continues',
    )
    .argument('<out>', 'a compiled folder with a precomputed store')
    .option('--steps <n>', "total steps to reach (default: the spec's train steps)", parseCount)
    .option('--resume', 'continue from <out>/train/checkpoint.safetensors, bit for bit')
    .option('--restart', 'discard an existing checkpoint and start over')
    .option(
      '--checkpoint-every <n>',
      `steps between checkpoints (default: the spec's checkpoint_every if below its steps, else every ${DEFAULT_CHECKPOINT_STEPS} steps or ${DEFAULT_CHECKPOINT_MINUTES} minutes, whichever comes first; always one at the last step)`,
      parseCount,
    )
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
    const stop = stopOnSignals((signal) =>
      process.stderr.write(`\nhollowc: ${signal}: stopping after the current step with a checkpoint (send it again to stop at once)\n`),
    );
    let r: TrainResult;
    try {
      r = await train({
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
        signal: stop.signal,
        onStep: (s) => {
          progress.update(s.step, s.steps, { loss: s.loss.toFixed(5) });
        },
      }).finally(() => progress.finish());
    } catch (e) {
      // A failed run reports its own error and exit code, whatever signal came meanwhile.
      stop.release();
      throw e;
    }
    report(dir, r);
    // After a stop signal this ends the process with it, as a signal's default action would have.
    stop.finish();
  });
}

function report(dir: string, r: TrainResult): void {
  const first = r.losses[0];
  const last = r.losses[r.losses.length - 1];
  if (!r.losses.length) out(r.stopped ? `stopped by ${r.stopped} before a step` : `already at step ${r.step}; nothing to train`);
  else
    out(
      `${r.stopped ? `stopped by ${r.stopped}: ` : ''}trained steps ${first.step}..${last.step} (batch ${r.batch}) in ${formatDuration(r.seconds)} (${(r.losses.length / r.stepSeconds).toFixed(1)} it/s): loss ${first.loss.toFixed(5)} -> ${last.loss.toFixed(5)}`,
    );
  out(`  optimizer: ${OPTIMIZER_LINES[r.optimizer]}`);
  out(`  loss log: ${r.lossLogFile}`);
  if (r.stopped) {
    if (r.losses.length) out(`  checkpoint at step ${r.step}: ${r.checkpointFile} (hollowc train ${dir} --resume continues from it)`);
    return;
  }
  out(`  checkpoint: ${r.checkpointFile}`);
  out(`  LoRA (peft): ${r.loraFile}`);
}
