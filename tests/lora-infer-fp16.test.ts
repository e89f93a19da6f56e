/**
 * `lora infer fp16` (passes/precision/float16-lora-inputs.ts): the spec line parses, infer.onnx of the
 * PyTorch fixture (39.2%, the fixture LoRA) declares float16 LoRA inputs in its manifest, and the
 * runtime's feeding helper (runtime/formats/float16.ts inputValues, which runtime/sampling/two-path.ts and the page use)
 * gives exactly what the fp32 infer.onnx gives on the rounded values: with B = 0 the base UNet bit
 * for bit, with the fixture LoRA the fp32 graph's output on fp16-rounded LoRA bit for bit, within
 * 1e-3 of the unrounded output. `hollowc bake` of the fp16 folder folds the exact fp32 values.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { bakeCompiled } from '../cli/api/bake';
import { compileFromSpec } from '../cli/api/compile-spec';
import { CompileManifest } from '../compiler/manifest';
import { SpecError, parseSpec } from '../dsl';
import { fromFloat16, inputValues, toFloat16 } from '../runtime/formats/float16';
import { LoraModuleValues, writeLoraFile } from '../runtime/formats/lora-file';
import { readNpy } from '../runtime/formats/npy';
import { FIXTURE_DIR, FIXTURE_MODEL, fixtureInputs, fixtureTensor, maxAbsDiff, runModel, tempDir } from './support/fixture';

const SPEC = `model sd15
hollow preset "39.2%"
lora rank 4 alpha 4
lora targets "attn1.*" "attn2.*"
emit precompute infer
`;

test('lora infer fp16 | fp32 parses, defaults to fp32, is checked', () => {
  expect(parseSpec(SPEC, 'a.hollow').lora.infer.value).toBe('fp32');
  expect(parseSpec(`${SPEC}lora infer fp16\n`, 'a.hollow').lora.infer.value).toBe('fp16');
  expect(() => parseSpec(`${SPEC}lora infer fp16\nlora infer fp32\n`, 'a.hollow')).toThrow(SpecError);
  let error: SpecError | undefined;
  try {
    parseSpec(`${SPEC}lora infer int8\n`, 'a.hollow');
  } catch (e) {
    error = e as SpecError;
  }
  expect(error?.message).toMatch(/expected "fp32" or "fp16" after "infer", found "int8"/);
  expect([error?.line, error?.col]).toEqual([6, 12]);
});

describe('infer.onnx with float16 LoRA inputs on the fixture', () => {
  const dir = tempDir('hollowc-fp16-lora-');
  const compiled = (name: string, text: string): { out: string; m: CompileManifest } => {
    const spec = path.join(dir, `${name}.hollow`);
    fs.writeFileSync(spec, text);
    const out = path.join(dir, name);
    return { out, m: compileFromSpec(FIXTURE_MODEL, spec, { out }) };
  };
  const fp32 = compiled('fp32', SPEC);
  const fp16 = compiled('fp16', `${SPEC}lora infer fp16\n`);
  const trained = fp16.m.lora.targets.filter((t) => t.trained);
  const lora = new Map(
    trained.flatMap((t) => [
      [t.lora_A.name, fixtureTensor(`lora/${t.module}.lora_A.npy`).data as Float32Array],
      [t.lora_B.name, fixtureTensor(`lora/${t.module}.lora_B.npy`).data as Float32Array],
    ]),
  );
  const inputs = () => {
    const x = fixtureInputs(1);
    return { ...x, base_encoder_hidden_states: x.encoder_hidden_states };
  };
  /** LoRA feeds for `m`'s infer.onnx as the runtime builds them (its declared dtypes). */
  const feeds = (m: CompileManifest, values: (name: string) => Float32Array) => {
    const declared = new Map(m.artifacts.infer!.inputs.map((i) => [i.name, i.dtype]));
    const out: Record<string, ort.Tensor> = {};
    for (const t of trained)
      for (const p of [t.lora_A, t.lora_B]) {
        const v = inputValues(declared.get(p.name)!, values(p.name), p.name);
        out[p.name] = new ort.Tensor(v.type, v.data, p.shape);
      }
    return out;
  };
  const run = async (c: { out: string; m: CompileManifest }, values: (name: string) => Float32Array) =>
    (await runModel(path.join(c.out, 'infer.onnx'), { ...inputs(), ...feeds(c.m, values) })).out_sample.data as Float32Array;

  test('the manifest declares the LoRA inputs float16, the rest as before', () => {
    const dtypes = (m: CompileManifest) => new Map(m.artifacts.infer!.inputs.map((i) => [i.name, i.dtype]));
    const [a, b] = [dtypes(fp32.m), dtypes(fp16.m)];
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [name, dtype] of b) expect([name, dtype]).toEqual([name, lora.has(name) ? 'float16' : a.get(name)]);
    expect(trained.length).toBeGreaterThan(0);
  });

  test('B = 0: the base UNet, bit for bit the fp32 graph', async () => {
    const zeroB = (name: string) => (name.includes('lora_B') ? new Float32Array(lora.get(name)!.length) : lora.get(name)!);
    const [a, b] = [await run(fp32, zeroB), await run(fp16, zeroB)];
    expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
    const full = readNpy(path.join(FIXTURE_DIR, 'ref', 'full_out.npy')).data as Float32Array;
    expect(maxAbsDiff(b, full)).toBeLessThan(1e-4);
  });

  test('the fixture LoRA: the fp32 graph on the rounded values bit for bit, within 1e-3 of the unrounded', async () => {
    const rounded = (name: string) => fromFloat16(toFloat16(lora.get(name)!));
    const half = await run(fp16, (name) => lora.get(name)!);
    const onRounded = await run(fp32, rounded);
    expect(Buffer.from(half.buffer).equals(Buffer.from(onRounded.buffer))).toBe(true);
    const exact = await run(fp32, (name) => lora.get(name)!);
    const scale = exact.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
    const d = maxAbsDiff(half, exact);
    // eslint-disable-next-line no-console
    console.log(`lora infer fp16 on the fixture: max |fp16 - fp32| = ${d.toExponential(2)} (${(d / scale).toExponential(2)} of max |out|)`);
    expect(d).toBeGreaterThan(0);
    expect(d / scale).toBeLessThan(1e-3);
  });

  test('hollowc bake of the fp16 folder folds the exact values: PyTorch hollowed_out within 1e-4', async () => {
    const file = path.join(dir, 'fixture.safetensors');
    const modules: LoraModuleValues[] = trained.map((t) => ({
      module: t.module,
      a: { shape: t.lora_A.shape, data: lora.get(t.lora_A.name)! },
      b: { shape: t.lora_B.shape, data: lora.get(t.lora_B.name)! },
    }));
    writeLoraFile(file, 'peft', { rank: 4, alpha: 4, modules });
    const baked = bakeCompiled(fp16.out, file, path.join(fp16.out, 'infer-baked.onnx'));
    expect(baked.kept).toBeGreaterThan(0);
    const r = await runModel(baked.file, inputs());
    const ref = readNpy(path.join(FIXTURE_DIR, 'ref', 'hollowed_out.npy')).data as Float32Array;
    expect(maxAbsDiff(r.out_sample.data as Float32Array, ref)).toBeLessThan(1e-4);
  });
});

test('inputValues: float32 as is, float16 rounded to nearest even, anything else refused', () => {
  const v = Float32Array.of(1, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520);
  expect(inputValues('float32', v, 'x').data).toBe(v);
  const h = inputValues('float16', v, 'x');
  expect(h.type).toBe('float16');
  expect(Array.from(fromFloat16(h.data as Uint16Array))).toEqual([1, 1, 1 + 2 ** -9, Infinity]);
  expect(() => inputValues('int8', v, 'lora_x')).toThrow(/lora_x takes int8/);
});
