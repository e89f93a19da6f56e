/**
 * precompute -> store -> train on a builder-made tiny sd15 (39.2% cut), with the stand-in
 * train.onnx of runtime-fake-train.ts (same interface as issue 5's): record contents, crash
 * repair, the sample order, loss weights, AdamW bookkeeping, checkpoints, bit-exact resume after
 * a simulated kill, and the NaN stop.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { loadTrainingData } from '../runtime/store/training-data';
import { drawNoise, planRecord, precompute } from '../runtime/store/precompute';
import { NoiseSchedule } from '../runtime/sampling/noise-schedule';
import { Store, recordLayout } from '../runtime/store/store';
import { createSession } from '../runtime/ort/session';
import { CHECKPOINT_FILE, paramsFromCheckpoint, readCheckpoint } from '../runtime/train/checkpoint';
import { SampleOrder, epochPermutation } from '../runtime/train/record-order';
import { evaluateLoss, train } from '../runtime/train/train';
import { encodeSafetensors, float32Tensor, readSafetensors, writeSafetensors } from '../runtime/formats/safetensors';
import { createHash } from 'crypto';
import { ADAMW, TinyFolder, fakeLoss, tinyCompiled, trainKilledAt, writeData } from './runtime-fake-train';
import { tempDir } from './support/fixture';
import { presetCut, presetsFor } from '../models/presets';
import { compileFromSpec } from '../cli/api/compile-spec';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';

const SEED = 7;
const PRIOR = 0.5;
// Two LoRA targets keep the stand-in graph small (it has ~20 nodes per LoRA tensor).
const SPEC = `lora targets "attn1.to_q" "attn2.to_v"\nseed ${SEED}\nloss prior_weight ${PRIOR}\noptimizer adamw lr 0.01\ntrain steps 20 batch 2 checkpoint_every 5`;

let folder: TinyFolder;
let dataDir: string;

beforeAll(async () => {
  const dir = tempDir('hollowc-train-');
  folder = await tinyCompiled(dir, 'sd15', { batch: 2, preset: '39.2%', extraSpec: SPEC });
  dataDir = writeData(path.join(dir, 'samples'), 'sd15', { instances: 3, classes: 2 });
});

/** A copy of the compiled folder (the artifacts are hard links: cheap). */
function copyOut(name: string): string {
  const dst = path.join(folder.dir, name);
  fs.mkdirSync(dst);
  for (const f of fs.readdirSync(folder.out)) {
    const src = path.join(folder.out, f);
    if (fs.statSync(src).isFile()) fs.linkSync(src, path.join(dst, f));
  }
  return dst;
}

describe('precompute', () => {
  test('records hold z_t, t, eps, ids and the activation of precompute.onnx on the class prompt', async () => {
    const out = copyOut('pc1');
    const data = loadTrainingData(dataDir);
    expect(data.instanceLatents.map((l) => l.name)).toEqual(['0.npy', '1.npy', '2.npy']);
    const r = await precompute({ out, data, count: 6 });
    // [4,16,16] latents twice, [48,4,4] activation, 24 header bytes, 4 checksum bytes
    const recordBytes = 24 + 4 * (2 * 1024 + 48 * 16) + 4;
    expect(recordLayout([4, 16, 16], [48, 4, 4]).recordBytes).toBe(recordBytes);
    expect(r).toMatchObject({ existing: 0, added: 6, records: 6, recordBytes });
    expect(fs.statSync(path.join(out, 'store', 'records.bin')).size).toBe(6 * recordBytes);
    expect(r.totalBytes).toBeGreaterThan(6 * recordBytes);

    const { store } = Store.open(path.join(out, 'store'), { readOnly: true });
    const schedule = NoiseSchedule.forFamily('sd15');
    const session = await createSession(path.join(out, 'precompute.onnx'));
    try {
      expect(store.header.prediction).toBe('epsilon');
      expect(store.header.seed).toBe(SEED);
      for (let i = 0; i < 6; i++) {
        const rec = store.read(i);
        const plan = planRecord(i, 3, 2);
        expect([rec.isClass, rec.sampleId, rec.condId]).toEqual([i % 2 === 1, plan.sampleId, i % 2]);
        const { t, eps } = drawNoise(SEED, i, 1000, 1024);
        expect(rec.timestep).toBe(t);
        const z = (rec.isClass ? data.classLatents : data.instanceLatents)[rec.sampleId].data;
        expect(Buffer.from(rec.zt.buffer).equals(Buffer.from(schedule.addNoise(z, eps, t).buffer))).toBe(true);
        expect(Buffer.from(rec.target.buffer).equals(Buffer.from(eps.buffer))).toBe(true);
        const ref = await session.run({
          sample: new ort.Tensor('float32', rec.zt, [1, 4, 16, 16]),
          timestep: new ort.Tensor('float32', Float32Array.of(t), [1]),
          encoder_hidden_states: new ort.Tensor('float32', data.class.encoderHiddenStates.data, [1, 7, 32]),
        });
        expect(Buffer.from(rec.activation.buffer).equals(Buffer.from((ref.hollow_activation.data as Float32Array).buffer))).toBe(true);
      }
      // timesteps are spread over 0..999
      expect(new Set(Array.from({ length: 6 }, (_, i) => store.read(i).timestep)).size).toBe(6);
    } finally {
      store.close();
      await session.release();
    }
  });

  test('a torn last record is dropped and a rerun continues to the same bytes as one straight run', async () => {
    const straight = copyOut('pc-straight');
    const data = loadTrainingData(dataDir);
    await precompute({ out: straight, data, count: 9 });
    const want = fs.readFileSync(path.join(straight, 'store', 'records.bin'));

    const out = copyOut('pc-torn');
    await precompute({ out, data, count: 5 });
    const records = path.join(out, 'store', 'records.bin');
    // a write cut short: 100 bytes of a sixth record
    fs.appendFileSync(records, want.subarray(5 * (want.length / 9), 5 * (want.length / 9) + 100));
    let r = await precompute({ out, data, count: 7 });
    expect(r).toMatchObject({ existing: 5, added: 2, records: 7, repaired: { bytes: 100, records: 0 } });
    // a torn write that did extend the file: the last record's bytes are garbage
    const fd = fs.openSync(records, 'r+');
    fs.writeSync(fd, Buffer.from([1, 2, 3, 4]), 0, 4, 6 * (want.length / 9) + 500);
    fs.closeSync(fd);
    expect(() => Store.open(path.join(out, 'store'), { readOnly: true })).toThrow('record 6 (the last) fails its checksum');
    r = await precompute({ out, data, count: 9 });
    expect(r.repaired.records).toBe(1);
    expect(r).toMatchObject({ existing: 6, added: 3, records: 9 });
    expect(fs.readFileSync(records).equals(want)).toBe(true);
    // nothing to do when the count is reached
    expect(await precompute({ out, data, count: 9 })).toMatchObject({ existing: 9, added: 0 });
  });

  test('a rerun with another seed is refused', async () => {
    const out = copyOut('pc-seed');
    const data = loadTrainingData(dataDir);
    await precompute({ out, data, count: 2 });
    await expect(precompute({ out, data, count: 4, seed: SEED + 1 })).rejects.toThrow(
      `this store was made from other data, seed, prediction type or model (store seed ${SEED}, now ${SEED + 1})`,
    );
  });

  test('data problems are named', () => {
    expect(() => loadTrainingData(path.join(folder.dir, 'nope'))).toThrow('nope: cannot read: ENOENT');
    const bare = path.join(folder.dir, 'bare');
    fs.mkdirSync(path.join(bare, 'latents'), { recursive: true });
    fs.copyFileSync(path.join(dataDir, 'latents', '0.npy'), path.join(bare, 'latents', '0.npy'));
    fs.copyFileSync(path.join(dataDir, 'instance_prompt.npy'), path.join(bare, 'instance_prompt.npy'));
    expect(() => loadTrainingData(bare)).toThrow('no class prompt embedding');
    expect(loadTrainingData(bare, { classPrompt: path.join(dataDir, 'class_prompt.npy') }).classLatents).toEqual([]);
  });
});

describe('train', () => {
  let out: string;
  beforeAll(async () => {
    out = copyOut('train-base');
    await precompute({ out, data: loadTrainingData(dataDir), count: 8 });
  });

  function copyWithStore(name: string): string {
    const dst = copyOut(name);
    fs.mkdirSync(path.join(dst, 'store'));
    for (const f of fs.readdirSync(path.join(out, 'store'))) fs.copyFileSync(path.join(out, 'store', f), path.join(dst, 'store', f));
    return dst;
  }

  test('epoch permutations are seeded shuffles; steps walk through them in batches', () => {
    const p0 = epochPermutation(SEED, 0, 8);
    expect([...p0].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect([...p0]).toEqual([...epochPermutation(SEED, 0, 8)]);
    expect([...p0]).not.toEqual([...epochPermutation(SEED, 1, 8)]);
    const order = new SampleOrder(SEED, 8, 3);
    const p1 = epochPermutation(SEED, 1, 8);
    expect(order.batchFor(1)).toEqual([p0[0], p0[1], p0[2]]);
    expect(order.batchFor(3)).toEqual([p0[6], p0[7], p1[0]]);
    expect(order.positionAfter(3)).toEqual({ epoch: 1, offset: 1 });
  });

  test('losses and LoRA follow a float64 re-implementation of the loss and AdamW', async () => {
    const dir = copyWithStore('train-ref');
    const result = await train({ out: dir, steps: 3 });
    expect(result.batch).toBe(2);
    const { store } = Store.open(path.join(dir, 'store'), { readOnly: true });
    const cp = readCheckpoint(path.join(dir, 'train', CHECKPOINT_FILE));
    const init = readSafetensors(path.join(dir, 'lora-init.safetensors')).tensors;
    // reference: every LoRA tensor moves by the same AdamW update of the scalar gradient
    const names = [...cp.params.keys()];
    const values = new Map(
      names.map((n) => {
        const t = init.get(`unet.${n}`)!;
        return [n, Array.from(new Float32Array(new Uint8Array(t.data).buffer))];
      }),
    );
    const m = new Map(names.map((n) => [n, 0]));
    const v = new Map(names.map((n) => [n, 0]));
    const order = new SampleOrder(SEED, 8, 2);
    const lr = 0.01;
    try {
      for (let step = 1; step <= 3; step++) {
        const k = names.reduce((a, n) => a + values.get(n)!.reduce((x, y) => x + y, 0) / values.get(n)!.length, 0);
        const records = order.batchFor(step).map((i) => store.read(i));
        const loss = fakeLoss(records, (id) => store.conditioning(id), undefined, PRIOR, k);
        expect(Math.abs(result.losses[step - 1].loss - loss) / loss).toBeLessThan(1e-5);
        // dL/dk by central differences of the float64 loss
        const h = 1e-4;
        const dk =
          (fakeLoss(records, (id) => store.conditioning(id), undefined, PRIOR, k + h) -
            fakeLoss(records, (id) => store.conditioning(id), undefined, PRIOR, k - h)) /
          (2 * h);
        for (const n of names) {
          const vals = values.get(n)!;
          const g = dk / vals.length;
          const m1 = ADAMW.beta1 * m.get(n)! + (1 - ADAMW.beta1) * g;
          const v1 = ADAMW.beta2 * v.get(n)! + (1 - ADAMW.beta2) * g * g;
          m.set(n, m1);
          v.set(n, v1);
          const bc1 = 1 - ADAMW.beta1 ** step;
          const bc2 = 1 - ADAMW.beta2 ** step;
          const update = (lr / bc1) * (m1 / (Math.sqrt(v1) / Math.sqrt(bc2) + ADAMW.eps));
          values.set(
            n,
            vals.map((x) => x * (1 - lr * ADAMW.weightDecay) - update),
          );
        }
      }
      let worst = 0;
      for (const n of names) {
        const got = cp.params.get(n)!.value;
        values.get(n)!.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - got[i]))));
      }
      expect(worst).toBeLessThan(1e-5);
      expect(cp.state).toMatchObject({ step: 3, seed: SEED, lr, batch: 2, storeRecords: 8, position: { epoch: 0, offset: 6 } });
      const lines = fs
        .readFileSync(path.join(dir, 'train', 'loss.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      expect(lines.map((l) => [l.step, l.loss])).toEqual(result.losses.map((l) => [l.step, l.loss]));
      // lr = 0 evaluation leaves the LoRA as it is: the init loss equals step 1's loss over the same batch
      const atInit = await evaluateLoss({ out: dir, batches: 4 });
      // the same measured by train itself, on its session, before step 1 of a restarted run
      const again = await train({ out: dir, steps: 3, restart: true, evaluate: { batches: 4 } });
      expect(again.evaluation!.before).toBe(atInit);
      expect(again.evaluation!.after).toBe(
        await evaluateLoss({ out: dir, batches: 4, params: paramsFromCheckpoint(again.checkpointFile) }),
      );
      const k0 = names.reduce(
        (a, n) =>
          a +
          Array.from(new Float32Array(new Uint8Array(init.get(`unet.${n}`)!.data).buffer)).reduce((x, y) => x + y, 0) /
            values.get(n)!.length,
        0,
      );
      const all = Array.from({ length: 8 }, (_, i) => store.read(i));
      const perBatch = [0, 1, 2, 3].map((b) => fakeLoss(all.slice(2 * b, 2 * b + 2), (id) => store.conditioning(id), undefined, PRIOR, k0));
      const want = perBatch.reduce((a, x) => a + x, 0) / 4;
      expect(Math.abs(atInit - want) / want).toBeLessThan(1e-5);
    } finally {
      store.close();
    }
    // the LoRA file holds the trained values under peft keys
    const lora = readSafetensors(result.loraFile).tensors;
    const first = names[0];
    expect(Buffer.from(lora.get(`unet.${first}`)!.data).equals(Buffer.from(cp.params.get(first)!.value.buffer))).toBe(true);
  });

  test('SIGKILL a training process mid-run, resume: the same LoRA as a straight run', async () => {
    const straight = copyWithStore('train-straight-40');
    await train({ out: straight, steps: 40 });
    const killed = copyWithStore('train-sigkill');
    const lastStep = await trainKilledAt(killed, 40, 12);
    expect(lastStep).toBeGreaterThanOrEqual(12);
    expect(lastStep).toBeLessThan(40);
    const at = readCheckpoint(path.join(killed, 'train', CHECKPOINT_FILE)).state.step;
    expect(at % 5).toBe(0);
    expect(at).toBeGreaterThanOrEqual(10);
    const r = await train({ out: killed, steps: 40, resume: true });
    expect(r.startStep).toBe(at);
    expect(fs.readFileSync(path.join(killed, 'lora.safetensors')).equals(fs.readFileSync(path.join(straight, 'lora.safetensors')))).toBe(
      true,
    );
    expect(
      fs.readFileSync(path.join(killed, 'train', CHECKPOINT_FILE)).equals(fs.readFileSync(path.join(straight, 'train', CHECKPOINT_FILE))),
    ).toBe(true);
  });

  test('kill after step 13, resume: the same LoRA, checkpoint and loss log bytes as a straight run', async () => {
    const straight = copyWithStore('train-straight');
    const a = await train({ out: straight, steps: 20 });
    expect(a.losses).toHaveLength(20);

    const killed = copyWithStore('train-killed');
    const checkpoints: number[] = [];
    await expect(
      train({
        out: killed,
        steps: 20,
        onCheckpoint: (s) => checkpoints.push(s),
        onStep: ({ step }) => {
          if (step === 13) throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    expect(checkpoints).toEqual([5, 10]);
    expect(fs.existsSync(path.join(killed, 'lora.safetensors'))).toBe(false);
    expect(
      fs
        .readFileSync(path.join(killed, 'train', 'loss.jsonl'), 'utf8')
        .trim()
        .split('\n'),
    ).toHaveLength(13);
    // without --resume the checkpoint is not overwritten
    await expect(train({ out: killed, steps: 20 })).rejects.toThrow(
      'a training run is checkpointed here at step 10: pass --resume to continue it or --restart to discard it',
    );

    const b = await train({ out: killed, steps: 20, resume: true });
    expect(b.startStep).toBe(10);
    expect(b.losses.map((l) => l.step)).toEqual([11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    const same = (f: string) => fs.readFileSync(path.join(straight, f)).equals(fs.readFileSync(path.join(killed, f)));
    expect(same('lora.safetensors')).toBe(true);
    expect(same('train/checkpoint.safetensors')).toBe(true);
    const state = JSON.parse(fs.readFileSync(path.join(killed, 'train', 'checkpoint.json'), 'utf8'));
    expect(state).toMatchObject({
      step: 20,
      seed: SEED,
      checkpoint: 'checkpoint.safetensors',
      sha256: createHash('sha256')
        .update(fs.readFileSync(path.join(killed, 'train', CHECKPOINT_FILE)))
        .digest('hex'),
    });
    const log = (dir: string) =>
      fs
        .readFileSync(path.join(dir, 'train', 'loss.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .map((l) => [l.step, l.loss]);
    expect(log(killed)).toEqual(log(straight));
    // training went somewhere: the last losses are below the first ones
    const mean = (xs: { loss: number }[]) => xs.reduce((s, x) => s + x.loss, 0) / xs.length;
    expect(mean(a.losses.slice(-4))).toBeLessThan(mean(a.losses.slice(0, 4)));

    // a kill between checkpoint.safetensors and checkpoint.json leaves the JSON one checkpoint behind
    // (tests/faults hit it at random); a resume, even one with nothing left to train, rewrites it
    const stateFile = path.join(killed, 'train', 'checkpoint.json');
    const whole = fs.readFileSync(stateFile, 'utf8');
    fs.writeFileSync(stateFile, JSON.stringify({ ...state, step: 10, position: { epoch: 0, offset: 0 } }));
    expect((await train({ out: killed, steps: 20, resume: true })).losses).toHaveLength(0);
    expect(fs.readFileSync(stateFile, 'utf8')).toBe(whole);
    fs.rmSync(stateFile);
    await train({ out: killed, steps: 20, resume: true });
    expect(fs.readFileSync(stateFile, 'utf8')).toBe(whole);

    // resuming a finished run to more steps continues; --restart starts over
    const c = await train({ out: killed, steps: 22, resume: true });
    expect(c.losses.map((l) => l.step)).toEqual([21, 22]);
    const d = await train({ out: killed, steps: 20, restart: true });
    expect(d.startStep).toBe(0);
    expect(fs.readFileSync(path.join(killed, 'lora.safetensors')).equals(fs.readFileSync(path.join(straight, 'lora.safetensors')))).toBe(
      true,
    );
  });
});

test('a NaN loss stops training with the step and keeps the last good checkpoint', async () => {
  const dir = tempDir('hollowc-nan-');
  const f = await tinyCompiled(dir, 'sd15', { batch: 2, preset: '39.2%', extraSpec: SPEC, nanAfterStep: 7 });
  await precompute({
    out: f.out,
    data: loadTrainingData(writeData(path.join(dir, 'samples'), 'sd15', { instances: 2, classes: 0 })),
    count: 4,
  });
  await expect(train({ out: f.out, steps: 20 })).rejects.toThrow(
    `step 8: the loss is NaN (records ${new SampleOrder(SEED, 4, 2).batchFor(8).join(', ')}); training stopped and the last good checkpoint (step 5) is kept in ${path.join(f.out, 'train', CHECKPOINT_FILE)}`,
  );
  expect(readCheckpoint(path.join(f.out, 'train', CHECKPOINT_FILE)).state.step).toBe(5);
  expect(fs.existsSync(path.join(f.out, 'lora.safetensors'))).toBe(false);
});

test('store size per sample for full-size SD 2.1 at 64x64 latents, each preset (paper Table 6)', () => {
  const sizes = Object.fromEntries(
    presetsFor('sd21').map((p) => {
      const cut = presetCut('sd21', p.name);
      const activation = [cut.hollowChannels, 64 / cut.hollowScale, 64 / cut.hollowScale];
      return [p.name, { activation, recordBytes: recordLayout([4, 64, 64], activation).recordBytes }];
    }),
  );
  // z_t and target 2 x 64 KiB, the activation, 28 bytes of ids, flags and checksum
  expect(sizes['11.5%']).toEqual({ activation: [1280, 8, 8], recordBytes: 2 * 65536 + 327680 + 28 });
  expect(sizes['39.2%']).toEqual({ activation: [1280, 16, 16], recordBytes: 2 * 65536 + 1310720 + 28 });
  expect(sizes['56.6%']).toEqual(sizes['39.2%']);
  expect(sizes['84.3%'].activation).toEqual([1280, 32, 32]);
  // 200 samples: paper 0.08 GB (11.5%) and 0.26 GB (39.2%, 56.6%), which is what eps + activation
  // alone take; this store also keeps z_t (one more latent per sample) so training needs nothing else
  const gib = (preset: string) => (200 * sizes[preset].recordBytes) / 2 ** 30;
  expect(gib('11.5%')).toBeCloseTo(0.085, 3);
  expect(gib('39.2%')).toBeCloseTo(0.269, 3);
  expect((200 * (65536 + 1310720)) / 2 ** 30).toBeCloseTo(0.256, 3);
});

test('writeSafetensors streams the bytes of encodeSafetensors and returns their sha256', () => {
  const dir = tempDir('hollowc-st-');
  const tensors = new Map([
    ['b.weight', float32Tensor([2, 3], Float32Array.of(1, 2, 3, 4, 5, 6))],
    ['a.exp_avg', float32Tensor([1], Float32Array.of(-0.5))],
  ]);
  const file = path.join(dir, 'x.safetensors');
  const digest = writeSafetensors(file, tensors, { hollowc_checkpoint: '{"step":3}' });
  const want = encodeSafetensors(tensors, { hollowc_checkpoint: '{"step":3}' });
  expect(fs.readFileSync(file).equals(want)).toBe(true);
  expect(digest).toBe(createHash('sha256').update(want).digest('hex'));
  expect(fs.readdirSync(dir)).toEqual(['x.safetensors']);
});

describe("on the compiler's own train.onnx (passes/training-graphs.ts)", () => {
  test('precompute, train with prior-preservation weights, kill and resume bit for bit, the loss falls', async () => {
    const dir = tempDir('hollowc-real-train-');
    const v = FAMILIES.sd15.tiny;
    const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 5 });
    const spec = path.join(dir, 'spec.hollow');
    fs.writeFileSync(
      spec,
      [
        'model sd15',
        'hollow preset "39.2%"',
        'shape sample [2, 4, 16, 16]',
        'shape timestep [2]',
        'shape encoder_hidden_states [2, 7, 32]',
        'lora rank 4',
        'lora targets "attn1.to_q"',
        'loss prior_weight 0.5',
        'optimizer adamw lr 1e-2',
        'emit precompute train infer',
        '',
      ].join('\n'),
    );
    const straight = path.join(dir, 'a');
    const manifest = compileFromSpec(file, spec, { out: straight });
    expect(manifest.artifacts.train!.inputs.find((i) => i.name === 'step')).toMatchObject({ dtype: 'float32' });
    await precompute({
      out: straight,
      data: loadTrainingData(writeData(path.join(dir, 'samples'), 'sd15', { instances: 2, classes: 2 })),
      count: 6,
    });
    const killed = path.join(dir, 'b');
    fs.cpSync(straight, killed, { recursive: true });
    const session = { optimization: 'basic' } as const;

    const a = await train({ out: straight, steps: 12, checkpointEvery: 4, session, evaluate: { batches: 3 } });
    expect(a.batch).toBe(2);
    expect(a.losses.every((l) => Number.isFinite(l.loss))).toBe(true);
    expect(a.evaluation!.after).toBeLessThan(a.evaluation!.before);

    await expect(
      train({
        out: killed,
        steps: 12,
        checkpointEvery: 4,
        session,
        onStep: ({ step }) => {
          if (step === 7) throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    const b = await train({ out: killed, steps: 12, resume: true, session });
    expect(b.startStep).toBe(4);
    expect(b.losses).toEqual(a.losses.slice(4));
    expect(fs.readFileSync(path.join(killed, 'lora.safetensors')).equals(fs.readFileSync(path.join(straight, 'lora.safetensors')))).toBe(
      true,
    );
  });
});

describe('host-side optimizer (grads.onnx + runtime/train/host-adamw.ts) on a real compile', () => {
  test('the same loss log and LoRA as the in-graph optimizer; kill and resume in host mode bit for bit', async () => {
    const dir = tempDir('hollowc-host-train-');
    const v = FAMILIES.sd15.tiny;
    const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 5 });
    const spec = path.join(dir, 'spec.hollow');
    fs.writeFileSync(
      spec,
      [
        'model sd15',
        'hollow preset "39.2%"',
        'shape sample [2, 4, 16, 16]',
        'shape timestep [2]',
        'shape encoder_hidden_states [2, 7, 32]',
        'lora rank 4',
        'lora targets "attn1.to_q" "attn2.to_v"',
        'loss prior_weight 0.5',
        'optimizer adamw lr 1e-2 weight_decay 0.05',
        'emit precompute train grads',
        '',
      ].join('\n'),
    );
    const graphRun = path.join(dir, 'graph');
    compileFromSpec(file, spec, { out: graphRun });
    await precompute({
      out: graphRun,
      data: loadTrainingData(writeData(path.join(dir, 'samples'), 'sd15', { instances: 2, classes: 2 })),
      count: 6,
    });
    const [hostRun, killed] = ['host', 'killed'].map((n) => {
      fs.cpSync(graphRun, path.join(dir, n), { recursive: true });
      return path.join(dir, n);
    });
    const session = { optimization: 'basic' } as const;

    const g = await train({ out: graphRun, steps: 12, checkpointEvery: 4, session, optimizer: 'graph' });
    // grads.onnx is there, so host is the default
    const h = await train({ out: hostRun, steps: 12, checkpointEvery: 4, session });
    expect([g.optimizer, h.optimizer]).toEqual(['graph', 'host']);
    expect(h.losses.map((l) => l.step)).toEqual(g.losses.map((l) => l.step));
    const lossDiff = Math.max(...h.losses.map((l, i) => Math.abs(l.loss - g.losses[i].loss) / Math.abs(g.losses[i].loss)));
    expect(lossDiff).toBeLessThan(1e-5);
    // the loss moved: the optimizer did something in both modes
    expect(h.losses[11].loss).not.toBe(h.losses[0].loss);
    const cpG = readCheckpoint(g.checkpointFile);
    const cpH = readCheckpoint(h.checkpointFile);
    let paramDiff = 0;
    let bitsDiffer = 0;
    for (const [name, p] of cpG.params) {
      const q = cpH.params.get(name)!;
      for (const [a, b] of [
        [p.value, q.value],
        [p.expAvg, q.expAvg],
        [p.expAvgSq, q.expAvgSq],
      ] as const) {
        if (!Buffer.from(a.buffer).equals(Buffer.from(b.buffer))) bitsDiffer++;
        const scale = Math.max(...Array.from(a, Math.abs), 1e-12);
        a.forEach((x, i) => (paramDiff = Math.max(paramDiff, Math.abs(x - b[i]) / scale)));
      }
    }
    expect(paramDiff).toBeLessThan(1e-4);
    // eslint-disable-next-line no-console
    console.log(
      `host vs graph optimizer, 12 steps: loss max relative difference ${lossDiff.toExponential(2)}, LoRA/moments ${paramDiff.toExponential(2)}, ${bitsDiffer} of ${cpG.params.size * 3} tensors differ in any bit`,
    );

    // kill after step 7, resume from the step-4 checkpoint: the host run's bytes exactly
    await expect(
      train({
        out: killed,
        steps: 12,
        checkpointEvery: 4,
        session,
        onStep: ({ step }) => {
          if (step === 7) throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    const k = await train({ out: killed, steps: 12, checkpointEvery: 4, resume: true, session });
    expect([k.optimizer, k.startStep]).toEqual(['host', 4]);
    expect(k.losses).toEqual(h.losses.slice(4));
    for (const f of ['lora.safetensors', path.join('train', CHECKPOINT_FILE)]) {
      expect(fs.readFileSync(path.join(killed, f)).equals(fs.readFileSync(path.join(hostRun, f)))).toBe(true);
    }
    const log = (d: string) =>
      fs
        .readFileSync(path.join(d, 'train', 'loss.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .map((l) => [l.step, l.loss]);
    expect(log(killed)).toEqual(log(hostRun));
  });

  test('asking for a mode whose artifact is missing names the emit line to change', async () => {
    const dir = tempDir('hollowc-host-missing-');
    const f = await tinyCompiled(dir, 'sd15', { batch: 2, preset: '39.2%', extraSpec: SPEC });
    await precompute({
      out: f.out,
      data: loadTrainingData(writeData(path.join(dir, 'samples'), 'sd15', { instances: 2, classes: 0 })),
      count: 2,
    });
    await expect(train({ out: f.out, steps: 2, optimizer: 'host' })).rejects.toThrow(
      "this folder has no grads.onnx, which the host-side optimizer (--optimizer host) needs (add `grads` to the spec's emit line and compile again)",
    );
    // without grads.onnx the default is the in-graph optimizer
    expect((await train({ out: f.out, steps: 2 })).optimizer).toBe('graph');
  });
});
