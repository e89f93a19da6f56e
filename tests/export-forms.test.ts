/**
 * The export forms users bring (README "Supported export forms"), built by the builder from one
 * seed so that every form holds the same weights:
 * - every timestep form (float [batch], int64 [steps], float 0-d) through compile (the spec
 *   without `shape timestep`), precompute, a batch-2 training run and generate, each giving what
 *   the float [batch] form gives;
 */
import * as fs from 'fs';
import * as path from 'path';
import { compileFromSpec } from '../cli/compile';
import { CompileManifest } from '../compiler/manifest';
import { buildUNet } from '../models/builder';
import { TIMESTEP_FORMS, TimestepForm } from '../models/builder/unet';
import { FAMILIES } from '../models/families';
import { precompute } from '../runtime/precompute';
import { Sampler } from '../runtime/sample';
import { readSafetensors, toFloat32 } from '../runtime/safetensors';
import { Store } from '../runtime/store';
import { loadTrainingData, readConditioning } from '../runtime/training-data';
import { train } from '../runtime/train';
import { writeData } from './runtime-fake-train';
import { maxAbsDiff, tempDir } from './support/fixture';

const SEED = 5;
let root: string;
let data: string;

beforeAll(() => {
  root = tempDir('hollowc-export-forms-');
  data = writeData(path.join(root, 'samples'), 'sd15', { instances: 2, classes: 1 });
});

/** No `shape timestep` line: its shape comes from the graph. */
const TIMESTEP_SPEC = [
  'model sd15',
  'hollow preset "39.2%"',
  'shape sample [2, 4, 16, 16]',
  'shape encoder_hidden_states [2, 7, 32]',
  'lora rank 2',
  'lora targets "attn1.to_q" "attn2.to_v"',
  'optimizer adamw lr 0.01',
  'train steps 3 batch 2',
  'emit precompute grads train infer',
  '',
].join('\n');

interface FormRun {
  manifest: CompileManifest;
  activations: Float32Array[];
  losses: number[];
  lora: Map<string, Float32Array>;
  latents: Float32Array;
}

async function runTimestepForm(form: TimestepForm): Promise<FormRun> {
  const dir = path.join(root, `timestep-${form}`);
  const { file } = await buildUNet(FAMILIES.sd15.tiny.config, { outDir: path.join(dir, 'model'), seed: SEED, form: { timestep: form } });
  const spec = path.join(dir, 'spec.hollow');
  fs.writeFileSync(spec, TIMESTEP_SPEC);
  const out = path.join(dir, 'out');
  const manifest = compileFromSpec(file, spec, { out });
  await precompute({ out, data: loadTrainingData(data), count: 4 });
  const { store } = Store.open(path.join(out, 'store'), { readOnly: true });
  const activations = [0, 1, 2, 3].map((i) => Float32Array.from(store.read(i).activation));
  const losses: number[] = [];
  await train({ out, steps: 3, onStep: (s) => losses.push(s.loss) });
  const lora = new Map([...readSafetensors(path.join(out, 'lora.safetensors')).tensors].map(([k, t]) => [k, toFloat32(t)]));
  const sampler = await Sampler.open({ out });
  try {
    const prompt = readConditioning(path.join(data, 'instance_prompt.npy'));
    const classPrompt = readConditioning(path.join(data, 'class_prompt.npy'));
    const r = await sampler.sample({ prompt, classPrompt, steps: 3, guidance: 7.5, seed: 11, scheduler: 'ddim' });
    return { manifest, activations, losses, lora, latents: r.latents };
  } finally {
    await sampler.release();
  }
}

describe('timestep forms: precompute, train and generate', () => {
  const runs = new Map<TimestepForm, FormRun>();
  beforeAll(async () => {
    for (const form of TIMESTEP_FORMS) runs.set(form, await runTimestepForm(form));
  }, 240_000);

  test.each([
    ['float', 'float32', ['batch']],
    ['int64', 'int64', ['steps']],
    ['scalar', 'float32', []],
  ] as const)('%s: artifacts take the timestep as the export declares it; training graphs one per sample', (form, dtype, shape) => {
    const m = runs.get(form)!.manifest;
    const timestep = (a: 'precompute' | 'infer' | 'grads' | 'train') => m.artifacts[a]!.inputs.find((i) => i.name === 'timestep');
    expect(timestep('precompute')).toEqual({ name: 'timestep', dtype, shape });
    expect(timestep('infer')).toEqual({ name: 'timestep', dtype, shape });
    expect(timestep('grads')).toEqual({ name: 'timestep', dtype, shape: [2] });
    expect(timestep('train')).toEqual({ name: 'timestep', dtype, shape: [2] });
  });

  test.each(['int64', 'scalar'] as const)('%s gives what float [batch] gives: store, losses, LoRA, sampled latents', (form) => {
    const want = runs.get('float')!;
    const got = runs.get(form)!;
    got.activations.forEach((a, i) => expect(maxAbsDiff(a, want.activations[i])).toBe(0));
    expect(got.losses).toHaveLength(3);
    expect(got.losses).toEqual(want.losses);
    expect([...got.lora.keys()].sort()).toEqual([...want.lora.keys()].sort());
    for (const [k, v] of got.lora) expect([k, maxAbsDiff(v, want.lora.get(k)!)]).toEqual([k, 0]);
    expect(got.latents.every(Number.isFinite)).toBe(true);
    expect(maxAbsDiff(got.latents, want.latents)).toBe(0);
  });
});
