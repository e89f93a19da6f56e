// `train base` and `optimizer adamw8bit`: what they resolve to on the hand-made toy model and on
// the sd15-tiny export (its graph analysis names every parameter as diffusers does).
import * as path from 'path';
import { checkSpec, parseSpec, ResolvedSpec } from '../dsl';
import { loadModel } from '../compiler/serde';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { modelFacts } from '../cli/api/spec-facts';
import { toySd15 } from './dsl-toy-model';
import { FIXTURE_MODEL, fixtureManifest } from './support/fixture';

const toy = toySd15();
const resolve = (text: string, facts = toy): ResolvedSpec => checkSpec(parseSpec(text, 'test.hollow'), facts);
const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

describe('train base on the toy model', () => {
  test('"*" alone is full fine-tuning: every parameter trains, and no LoRA', () => {
    const r = resolve('hollow none\ntrain base "*"\n');
    expect(r.trainBase.map((p) => p.name)).toEqual(toy.baseParameters.map((p) => p.name));
    expect(r.trainBase.every((p) => p.glob === '*')).toBe(true);
    expect(r.lora.targets).toEqual([]);
  });

  test('beside lora targets both train; the first matching glob is recorded', () => {
    const r = resolve('hollow none\nlora targets "attn2.*"\ntrain base "up_blocks.3.*" "resnets.*"\n');
    expect(r.lora.targets.length).toBeGreaterThan(0);
    const names = r.trainBase.map((p) => p.name);
    expect(names).toContain('up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q.weight');
    expect(names).toContain('down_blocks.0.resnets.0.conv1.bias');
    expect(names).not.toContain('conv_in.weight');
    expect(r.trainBase.find((p) => p.name === 'up_blocks.3.resnets.0.conv1.weight')!.glob).toBe('up_blocks.3.*');
    expect(r.trainBase.find((p) => p.name === 'down_blocks.0.resnets.0.conv1.weight')!.glob).toBe('resnets.*');
  });

  test('a glob names a parameter, its module or a module containing it', () => {
    const block = resolve('hollow none\ntrain base "up_blocks.1"\n').trainBase;
    expect(block.length).toBeGreaterThan(0);
    expect(block.every((p) => p.module.startsWith('up_blocks.1.'))).toBe(true);
    const biases = resolve('hollow none\ntrain base "*.bias"\n').trainBase;
    expect(biases.map((p) => p.name)).toEqual(toy.baseParameters.filter((p) => p.name.endsWith('.bias')).map((p) => p.name));
    const norms = resolve('hollow none\ntrain base "norm1"\n').trainBase;
    expect(norms.length).toBe(toy.baseParameters.filter((p) => p.module.endsWith('.norm1')).length);
  });

  test('under a cut only kept weights train: none of the hollowed layers', () => {
    const r = resolve('hollow preset "39.2%"\ntrain base "*"\n');
    const hollowed = new Set(r.hollow.hollowed);
    const hollowedModules = toy.layers.filter((l) => hollowed.has(l.id)).flatMap((l) => l.modules);
    const inHollow = (m: string) => hollowedModules.some((h) => m === h || m.startsWith(h + '.'));
    expect(r.trainBase.length).toBe(toy.baseParameters.filter((p) => !inHollow(p.module)).length);
    expect(r.trainBase.some((p) => inHollow(p.module))).toBe(false);
    expect(r.trainBase.map((p) => p.name)).toContain('down_blocks.0.resnets.0.conv1.weight');
    expect(r.trainBase.map((p) => p.name)).toContain('conv_in.weight');
  });

  test('optimizer adamw8bit: the kind is kept and train.onnx is left out of the default emit', () => {
    const r = resolve('hollow none\ntrain base "*"\noptimizer adamw8bit lr 1e-5\n');
    expect(r.optimizer.kind).toBe('adamw8bit');
    expect(r.optimizer.lr).toBe(1e-5);
    expect(r.emit).toEqual(['grads', 'infer']);
    expect(resolve('hollow none\n').optimizer.kind).toBe('adamw');
  });
});

describe('train base on the sd15-tiny export', () => {
  const model = loadModel(FIXTURE_MODEL);
  const facts = modelFacts(model.graph, analyzeUNet(model.graph, FIXTURE_MODEL));
  const fixture = fixtureManifest();

  test('every parameter by its diffusers name and torch shape', () => {
    const r = resolve('hollow none\ntrain base "*"\n', facts);
    expect(r.trainBase.length).toBe(686);
    expect(r.trainBase.reduce((a, p) => a + count(p.shape), 0)).toBe(fixture.model.parameter_count);
    const byName = new Map(r.trainBase.map((p) => [p.name, p.shape]));
    // Stored pre-transposed as onnx::MatMul_8619 [in, out]: torch's [out, in] here.
    expect(byName.get('down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight')).toEqual([16, 16]);
    expect(byName.get('down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight')).toEqual([16, 32]);
    // GroupNorm's affine, stored [C, 1, 1] as onnx::Mul_N / onnx::Add_N.
    expect(byName.get('down_blocks.1.resnets.0.norm1.weight')).toEqual([16]);
    expect(byName.get('down_blocks.1.resnets.0.norm1.bias')).toEqual([16]);
    expect(byName.get('down_blocks.1.resnets.0.conv_shortcut.weight')).toEqual([32, 16, 1, 1]);
  });

  test('under the 39.2% cut the kept parameters are the model less the hollowed ones', () => {
    const r = resolve('hollow preset "39.2%"\ntrain base "*"\n', facts);
    const kept = r.trainBase.reduce((a, p) => a + count(p.shape), 0);
    expect(kept).toBe(fixture.model.parameter_count - fixture.hollow.hollowed_parameter_count);
    for (const m of fixture.hollow.hollowed_modules as string[]) expect(r.trainBase.some((p) => p.module.startsWith(m))).toBe(false);
  });
});
