/**
 * Test support for the runtime: a stand-in train.onnx with the interface of issue 5 (the real
 * one comes from the autodiff passes), tiny compiled folders, and synthetic data.
 *
 * The stand-in's "model" is small enough to check by hand but reads every input the trainer
 * feeds, so a wrong record, conditioning, timestep or loss weight changes the loss:
 *
 *   k      = sum_p mean(P_p)                                  (over every LoRA tensor)
 *   c_b    = 0.1 mean(hollow_activation_b) + 0.1 mean(encoder_hidden_states_b)
 *            [+ 0.1 mean(text_embeds_b) + 1e-3 mean(time_ids_b)] + 1e-4 t_b
 *   pred_b = sample_b (1 + k) + c_b
 *   loss   = mean_b( loss_weight_b · mean_chw((pred_b - target_b)²) )
 *   dL/dP_p = (dL/dk) / numel(P_p),  dL/dk = mean_b( w_b · mean_chw(2 (pred_b - target_b) sample_b) )
 *
 * followed by torch.optim.AdamW (betas 0.9 0.999, eps 1e-8, weight_decay 0.01, bias correction
 * with the 1-based `step`), written in plain ONNX ops; `lr` is float [1] and `step` int64 [1], the
 * defaults of passes/training/add-adamw.ts. `nanAfterStep` adds 0·sqrt(n + 0.5 - step)
 * to the loss, which turns it NaN after step n.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { GraphBuilder } from '../compiler/builder';
import { DataType } from '../compiler/dtype';
import { Graph, Model, Value } from '../compiler/ir';
import { compileSpec } from '../cli/api/compile-spec';
import { checkSpecFile } from '../cli/api/spec';
import { loadUNet } from '../cli/api/unet';
import { CompileManifest, MANIFEST_FILE, TensorDescription, isLoraParam, readManifest } from '../compiler/manifest';
import { saveModel } from '../compiler/serde';
import { writeFileAtomic } from '../compiler/atomic-files';
import { describeArtifact } from '../passes/compile-unet';
import { buildUNet } from '../models/builder';
import { FAMILIES, FamilyName } from '../models/families';
import { Rng, fillNormal } from '../models/random';
import { writeNpy } from '../runtime/formats/npy';
import type { StoreRecord } from '../runtime/store/store';
import type { Conditioning } from '../runtime/sampling/conditioning';

export const ADAMW = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

export interface FakeTrainOptions {
  /** Static sizes for the symbolic dims of the forward graph's inputs. */
  dims: Record<string, number>;
  nanAfterStep?: number;
}

function resolveDim(d: number | string | null, dims: Record<string, number>): number {
  if (typeof d === 'number') return d;
  const m = /^([A-Za-z_]+)(?:\/(\d+))?$/.exec(String(d));
  if (!m || dims[m[1]] === undefined) throw new Error(`fake train.onnx: no size for dim ${d}`);
  return m[2] ? dims[m[1]] / Number(m[2]) : dims[m[1]];
}

/** The stand-in train.onnx for a hollowed net whose inputs (UNet inputs, activation, LoRA) are `forward`. */
export function fakeTrainModel(forward: readonly TensorDescription[], options: FakeTrainOptions): Model {
  {
    const g = new Graph();
    g.name = 'fake_train';
    const b = new GraphBuilder(g);
    const F = DataType.FLOAT;
    const input = (name: string, shape: number[]) => g.addInput(name, { elemType: F, shape });
    const shapeOf = (name: string) => forward.find((v) => v.name === name)!.shape.map((d) => resolveDim(d, options.dims));
    const has = (name: string) => forward.some((v) => v.name === name);
    const B = options.dims.batch;

    const sample = input('sample', shapeOf('sample'));
    const timestep = input('timestep', [B]);
    const ehs = input('encoder_hidden_states', shapeOf('encoder_hidden_states'));
    const te = has('text_embeds') ? input('text_embeds', shapeOf('text_embeds')) : undefined;
    const tid = has('time_ids') ? input('time_ids', shapeOf('time_ids')) : undefined;
    const hollow = input('hollow_activation', shapeOf('hollow_activation'));
    const target = input('target', shapeOf('sample'));
    const weight = input('loss_weight', [B]);
    const loraInputs = forward.filter((v) => isLoraParam(v.name));
    const params = loraInputs.map((v) => ({ name: v.name, shape: v.shape as number[], value: input(v.name, v.shape as number[]) }));
    // As passes/training/add-adamw.ts declares them by default: lr float [1], step int64 [1].
    const lr = input('lr', [1]);
    const stepInt = g.addInput('step', { elemType: DataType.INT64, shape: [1] });
    const moments = params.map((p) => ({ m: input(`${p.name}.exp_avg`, p.shape), v: input(`${p.name}.exp_avg_sq`, p.shape) }));

    const c = (x: number) => b.scalar(x);
    const step = b.op('Cast', [stepInt], { to: DataType.FLOAT });
    const op = (t: string, ins: Value[], attrs?: Record<string, number | number[]>) => b.op(t, ins, attrs);
    const mean = (x: Value, axes?: number[]) => op('ReduceMean', [x], axes ? { axes, keepdims: 0 } : { keepdims: 0 });

    let k: Value = c(0);
    for (const p of params) k = op('Add', [k, mean(p.value)]);
    const ax = (rank: number) => Array.from({ length: rank - 1 }, (_, i) => i + 1);
    let cond = op('Add', [op('Mul', [c(0.1), mean(hollow, ax(4))]), op('Mul', [c(0.1), mean(ehs, ax(3))])]);
    if (te) cond = op('Add', [cond, op('Mul', [c(0.1), mean(te, ax(2))])]);
    if (tid) cond = op('Add', [cond, op('Mul', [c(1e-3), mean(tid, ax(2))])]);
    cond = op('Add', [cond, op('Mul', [c(1e-4), timestep])]);
    const condB = op('Reshape', [cond, b.int64s([B, 1, 1, 1])]);
    const pred = op('Add', [op('Mul', [sample, op('Add', [c(1), k])]), condB]);
    const diff = op('Sub', [pred, target]);
    let loss: Value = mean(op('Mul', [mean(op('Mul', [diff, diff]), [1, 2, 3]), weight]));
    if (options.nanAfterStep !== undefined) {
      loss = op('Add', [loss, op('Mul', [c(0), mean(op('Sqrt', [op('Sub', [c(options.nanAfterStep + 0.5), step])]))])]);
    }
    const dk = mean(op('Mul', [mean(op('Mul', [op('Mul', [c(2), diff]), sample]), [1, 2, 3]), weight]));

    const outputs: [string, Value][] = [['loss', loss]];
    const { beta1, beta2, eps, weightDecay } = ADAMW;
    const bc1 = op('Sub', [c(1), op('Pow', [c(beta1), step])]);
    const bc2 = op('Sub', [c(1), op('Pow', [c(beta2), step])]);
    params.forEach((p, i) => {
      const n = p.shape.reduce((x, y) => x * y, 1);
      const grad = op('Expand', [op('Div', [dk, c(n)]), b.int64s(p.shape)]);
      const m1 = op('Add', [op('Mul', [c(beta1), moments[i].m]), op('Mul', [c(1 - beta1), grad])]);
      const v1 = op('Add', [op('Mul', [c(beta2), moments[i].v]), op('Mul', [c(1 - beta2), op('Mul', [grad, grad])])]);
      const decayed = op('Mul', [p.value, op('Sub', [c(1), op('Mul', [lr, c(weightDecay)])])]);
      const denom = op('Add', [op('Div', [op('Sqrt', [v1]), op('Sqrt', [bc2])]), c(eps)]);
      const updated = op('Sub', [decayed, op('Mul', [op('Div', [lr, bc1]), op('Div', [m1, denom])])]);
      outputs.push([`${p.name}.updated`, updated], [`${p.name}.exp_avg.updated`, m1], [`${p.name}.exp_avg_sq.updated`, v1]);
    });
    for (const [name, v] of outputs) {
      const node = g.addNode({ opType: 'Identity', inputs: [v], outputs: [name], name: `/out/${name}` });
      const o = node.outputs[0];
      o.type = { elemType: F, shape: name === 'loss' ? [] : params.find((p) => name.startsWith(p.name))!.shape };
      g.outputs.push(o);
    }
    const model = new Model(g);
    model.irVersion = 8;
    model.opsetImports = [{ domain: '', version: 17 }];
    return model;
  }
}

const mean = (a: Float32Array) => a.reduce((x, y) => x + y, 0) / a.length;

/** The stand-in's loss in float64, from store records (the test's reference). */
export function fakeLoss(
  records: StoreRecord[],
  conds: (id: number) => Conditioning,
  timeIds: number[] | undefined,
  priorWeight: number,
  k: number,
): number {
  let sum = 0;
  for (const r of records) {
    const cd = conds(r.condId);
    let cond = 0.1 * mean(r.activation) + 0.1 * mean(cd.encoderHiddenStates.data) + 1e-4 * r.timestep;
    if (cd.textEmbeds) cond += 0.1 * mean(cd.textEmbeds.data);
    if (timeIds) cond += 1e-3 * (timeIds.reduce((x, y) => x + y, 0) / timeIds.length);
    let se = 0;
    for (let i = 0; i < r.zt.length; i++) {
      const d = r.zt[i] * (1 + k) + cond - r.target[i];
      se += d * d;
    }
    sum += (r.isClass ? priorWeight : 1) * (se / r.zt.length);
  }
  return sum / records.length;
}

export function randomArray(seed: number, stream: string, n: number, std = 1): Float32Array {
  const a = new Float32Array(n);
  fillNormal(new Rng(seed, stream), a, std);
  return a;
}

/**
 * A data folder in the documented layout: `instances` latents sharing one pattern (the
 * "subject") plus noise, `classes` random class latents, and prompt embeddings.
 */
export function writeData(
  dir: string,
  family: FamilyName,
  opts: { instances: number; classes: number; seed?: number; latent?: number },
): string {
  const seed = opts.seed ?? 1;
  const v = FAMILIES[family].tiny.shapes;
  const latent = opts.latent ?? v.sample[2];
  const [tokens, dim] = v.encoder_hidden_states.slice(1);
  const n = 4 * latent * latent;
  fs.mkdirSync(path.join(dir, 'latents'), { recursive: true });
  const pattern = randomArray(seed, 'subject', n);
  for (let i = 0; i < opts.instances; i++) {
    const noise = randomArray(seed, `instance/${i}`, n, 0.2);
    writeNpy(path.join(dir, 'latents', `${i}.npy`), {
      dtype: 'float32',
      shape: i % 2 ? [1, 4, latent, latent] : [4, latent, latent],
      data: pattern.map((x, j) => x + noise[j]),
    });
  }
  if (opts.classes) {
    fs.mkdirSync(path.join(dir, 'class_latents'), { recursive: true });
    for (let i = 0; i < opts.classes; i++)
      writeNpy(path.join(dir, 'class_latents', `${i}.npy`), {
        dtype: 'float32',
        shape: [4, latent, latent],
        data: randomArray(seed, `class/${i}`, n),
      });
  }
  writeNpy(path.join(dir, 'instance_prompt.npy'), {
    dtype: 'float32',
    shape: [tokens, dim],
    data: randomArray(seed, 'instance_prompt', tokens * dim),
  });
  writeNpy(path.join(dir, 'class_prompt.npy'), {
    dtype: 'float32',
    shape: [1, tokens, dim],
    data: randomArray(seed, 'class_prompt', tokens * dim),
  });
  if (v.text_embeds) {
    const p = v.text_embeds[1];
    writeNpy(path.join(dir, 'instance_prompt.text_embeds.npy'), {
      dtype: 'float32',
      shape: [p],
      data: randomArray(seed, 'instance_te', p),
    });
    writeNpy(path.join(dir, 'class_prompt.text_embeds.npy'), { dtype: 'float32', shape: [1, p], data: randomArray(seed, 'class_te', p) });
  }
  return dir;
}

export interface TinyFolder {
  dir: string;
  out: string;
  manifest: CompileManifest;
  modelFile: string;
}

/**
 * Builds a tiny model of `family`, compiles it with the spec lines given (shapes filled in for
 * batch `batch`) like `hollowc compile`, and puts the stand-in train.onnx in place of the real one.
 */
export async function tinyCompiled(
  dir: string,
  family: FamilyName,
  opts: { batch: number; preset: string; extraSpec?: string; nanAfterStep?: number; train?: boolean },
): Promise<TinyFolder> {
  const v = FAMILIES[family].tiny;
  const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 });
  const B = opts.batch;
  const shapeLines = [
    `shape sample [${B}, ${v.shapes.sample.slice(1).join(', ')}]`,
    `shape timestep [${B}]`,
    `shape encoder_hidden_states [${B}, ${v.shapes.encoder_hidden_states.slice(1).join(', ')}]`,
    ...(v.shapes.text_embeds ? [`shape text_embeds [${B}, ${v.shapes.text_embeds[1]}]`, `shape time_ids [${B}, 6]`] : []),
  ];
  const text = [
    `model ${family}`,
    `hollow preset "${opts.preset}"`,
    ...shapeLines,
    'lora rank 4',
    opts.extraSpec ?? '',
    'emit precompute infer',
    '',
  ].join('\n');
  const specFile = path.join(dir, 'spec.hollow');
  fs.writeFileSync(specFile, text);
  const out = path.join(dir, 'out');
  const latent = v.shapes.sample[2];
  const unet = loadUNet(file);
  let manifest = compileSpec(unet, checkSpecFile(unet, specFile), { out });
  if (opts.train !== false) {
    // The hollowed net's inputs: the UNet's (as precompute.onnx reads them), the activation, the LoRA.
    const forward: TensorDescription[] = [
      ...manifest.artifacts.precompute!.inputs,
      { name: 'hollow_activation', dtype: 'float32', shape: manifest.cut!.hollowActivation.shape },
      ...manifest.lora.targets
        .filter((t) => t.trained)
        .flatMap((t) => [t.lora_A, t.lora_B].map((p) => ({ name: p.name, dtype: 'float32', shape: p.shape }))),
    ];
    const model = fakeTrainModel(forward, {
      dims: { batch: B, height: latent, width: latent, sequence: v.shapes.encoder_hidden_states[1] },
      nanAfterStep: opts.nanAfterStep,
    });
    saveModel(model, path.join(out, 'train.onnx'));
    manifest = { ...manifest, artifacts: { ...manifest.artifacts, train: describeArtifact('train.onnx', model) } };
    writeFileAtomic(path.join(out, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
    manifest = readManifest(out);
  }
  return { dir, out, manifest, modelFile: file };
}

/**
 * Trains `out` to `steps` in a child process (tests/runtime-train-child.js) and SIGKILLs it once it
 * has printed step `killAt`: a crash mid-run. Returns the last step it printed.
 */
export function trainKilledAt(out: string, steps: number, killAt: number): Promise<number> {
  const child = spawn(process.execPath, [path.join(__dirname, 'runtime-train-child.js'), out, String(steps)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise<number>((resolve, reject) => {
    let seen = 0;
    child.stdout.on('data', (d: Buffer) => {
      for (const m of d.toString().matchAll(/step (\d+)/g)) seen = Number(m[1]);
      if (seen >= killAt && child.exitCode === null && !child.killed) child.kill('SIGKILL');
    });
    child.on('exit', (code, signal) => (signal === 'SIGKILL' ? resolve(seen) : reject(new Error(`child ended with ${code}: ${stderr}`))));
  });
}
