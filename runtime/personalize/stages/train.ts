/**
 * train: grads.onnx steps (AdamW on the host) with checkpoints -> run/compiled/lora.safetensors
 * and/or run/compiled/trained-base.safetensors, and the loss on the photos' samples before and after.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ProgressLine } from '../../progress';
import { Store } from '../../store/store';
import { CHECKPOINT_FILE, TRAIN_DIR } from '../../train/checkpoint';
import { evaluateLoss, train } from '../../train/train';
import { TRAINED_BASE_FILE } from '../../train/base-weights';
import { TRAINED_LORA_FILE } from '../../formats/lora-format';
import { Stage, killPoint } from '../stage-runner';
import { StageContext, manifestOf, trainedParts, trainedWords } from './context';

/** What the train stage keeps in its record, to carry a run on to more steps or restore its loss. */
interface TrainRecord {
  lossBefore: number;
  lossAfter: number;
  lossRecords: number;
  evalBatches: number;
  trainLine: string;
  stepsDone: number;
}

export function trainStage(ctx: StageContext): Stage<TrainRecord> {
  const { s, dirs, findings } = ctx;
  const { steps, lr, priorWeight } = s;
  const checkpoint = path.join(dirs.compiled, TRAIN_DIR, CHECKPOINT_FILE);
  const [loraFile, baseFile] = [TRAINED_LORA_FILE, TRAINED_BASE_FILE].map((f) => path.join(dirs.compiled, f));
  return {
    name: 'train',
    key: ctx.keys.train,
    valid: () => {
      const parts = trainedParts(manifestOf(ctx));
      // a `train base` run without LoRA writes no LoRA file
      const writesLora = parts.lora || !parts.base;
      return (!parts.base || fs.existsSync(baseFile)) && (!writesLora || fs.existsSync(loraFile));
    },
    clean: () => [path.join(dirs.compiled, TRAIN_DIR), loraFile, baseFile].forEach((p) => fs.rmSync(p, { recursive: true, force: true })),
    // more steps than last time on the same line: carry on from the last checkpoint
    continues: (record) =>
      record.done &&
      record.data?.trainLine === ctx.keys.trainLine &&
      typeof record.data?.stepsDone === 'number' &&
      record.data.stepsDone < steps &&
      fs.existsSync(checkpoint),
    reused: (record) => {
      const d = record.data;
      if (typeof d?.lossBefore === 'number' && typeof d.lossAfter === 'number' && typeof d.lossRecords === 'number')
        findings.loss = { before: d.lossBefore, after: d.lossAfter, records: d.lossRecords };
    },
    run: async (resuming, record) => {
      const resume = resuming && fs.existsSync(checkpoint);
      const { store } = Store.open(dirs.store, { readOnly: true });
      const records = store.count;
      store.close();
      // the evaluation costs a training step per batch, twice: about a quarter of the run, at most 16;
      // a run carried on to more steps keeps the batches its loss before was measured on
      const batches =
        typeof record.data?.evalBatches === 'number'
          ? record.data.evalBatches
          : Math.min(records, Math.max(2, Math.min(16, Math.floor(steps / 4))));
      // the loss before: on the training session when starting fresh; once more on a resume
      let before = typeof record.data?.lossBefore === 'number' ? record.data.lossBefore : undefined;
      if (resume && before === undefined)
        before = await evaluateLoss({
          out: dirs.compiled,
          batches,
          ep: s.options.ep,
          session: s.trainTuning,
          instanceOnly: true,
          priorWeight,
        });
      const bar = new ProgressLine('step', steps, ctx.progress);
      const r = await train({
        out: dirs.compiled,
        steps,
        lr,
        resume,
        restart: !resume,
        ep: s.options.ep,
        fallbackToCpu: s.options.fallbackToCpu,
        session: s.trainTuning,
        priorWeight,
        evaluate: { batches, instanceOnly: true },
        onStep: (st) => {
          bar.update(st.step, { loss: st.loss.toFixed(4) });
          if (st.step === Math.ceil(steps / 2) + 1) killPoint('train');
        },
      });
      bar.finish();
      before = resume ? before! : r.evaluation!.before;
      const loss = { before, after: r.evaluation!.after, records: r.evaluation!.batches };
      findings.loss = loss;
      const what = trainedWords(manifestOf(ctx));
      return {
        summary: `${resume ? `resumed at step ${r.startStep}, ` : ''}trained to step ${r.step} at lr ${lr} (${r.stepSeconds > 0 ? ((r.step - r.startStep) / r.stepSeconds).toFixed(2) : '-'} it/s); loss on ${loss.records} instance samples ${before.toFixed(5)} -> ${loss.after.toFixed(5)}; trained ${[what.lora, what.base].filter(Boolean).join(' and ')} with ${what.optimizer}`,
        data: {
          lossBefore: before,
          lossAfter: loss.after,
          lossRecords: loss.records,
          evalBatches: batches,
          trainLine: ctx.keys.trainLine,
          stepsDone: r.step,
        },
        resumed: resume,
      };
    },
  };
}
