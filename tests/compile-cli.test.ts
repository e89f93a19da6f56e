import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { bakeCompiled } from '../cli/api/bake';
import { compileFromSpec } from '../cli/api/compile-spec';
import { loadModel } from '../compiler/serde';
import { LoraModuleValues, readLoraFile, writeLoraFile } from '../runtime/formats/lora-file';
import { readSafetensors, toFloat32 } from '../runtime/formats/safetensors';
import { readNpy } from '../runtime/formats/npy';
import { FIXTURE_DIR, FIXTURE_MODEL, fixtureInputs, fixtureManifest, maxAbsDiff, runModel, tempDir } from './support/fixture';

const CLI = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const manifest = fixtureManifest();

const SPEC = `# the fixture's LoRA: rank 4, alpha 4 on every attention projection
model sd15
hollow preset "39.2%"
lora rank 4 alpha 4
lora targets "attn1.*" "attn2.*"
lora init gaussian 0.02
seed 11
emit precompute infer
`;

function fixtureLora(modules: string[]): LoraModuleValues[] {
  return modules.map((module) => {
    const a = readNpy(path.join(FIXTURE_DIR, 'lora', `${module}.lora_A.npy`));
    const b = readNpy(path.join(FIXTURE_DIR, 'lora', `${module}.lora_B.npy`));
    return { module, a: { shape: a.shape, data: a.data as Float32Array }, b: { shape: b.shape, data: b.data as Float32Array } };
  });
}

describe('compile from a spec, then bake', () => {
  const dir = tempDir();
  const specFile = path.join(dir, 'dog.hollow');
  fs.writeFileSync(specFile, SPEC);
  const out = path.join(dir, 'out');
  const m = compileFromSpec(FIXTURE_MODEL, specFile, { out });
  const trained = m.lora.targets.filter((t) => t.trained).map((t) => t.module);

  test('the spec resolves to the fixture targets and the 39.2% cut', () => {
    expect(m.lora.targets.map((t) => t.module).sort()).toEqual([...manifest.lora.targets].sort());
    expect(m.cut!.lastKeptDown).toBe('3-2');
    expect(m.spec!.text).toBe(SPEC);
  });

  test('lora-init.safetensors: A ~ N(0, 0.02²) from the seed, B = 0, peft keys', () => {
    const init = readSafetensors(path.join(out, 'lora-init.safetensors'));
    expect(init.tensors.size).toBe(2 * trained.length);
    const a = toFloat32(init.tensors.get(`unet.${trained[0]}.lora_A.weight`)!);
    const all = trained.flatMap((t) => [...toFloat32(init.tensors.get(`unet.${t}.lora_A.weight`)!)]);
    const std = Math.sqrt(all.reduce((s, x) => s + x * x, 0) / all.length);
    expect(std).toBeGreaterThan(0.019);
    expect(std).toBeLessThan(0.021);
    expect(a.some((x) => x !== 0)).toBe(true);
    for (const t of trained) expect(toFloat32(init.tensors.get(`unet.${t}.lora_B.weight`)!).every((x) => x === 0)).toBe(true);
    // The same seed gives the same bytes.
    const again = path.join(dir, 'again');
    compileFromSpec(FIXTURE_MODEL, specFile, { out: again });
    expect(fs.readFileSync(path.join(again, 'lora-init.safetensors'))).toEqual(fs.readFileSync(path.join(out, 'lora-init.safetensors')));
  });

  test.each(['peft', 'kohya'] as const)(
    'bake a %s LoRA: same output as infer.onnx with LoRA inputs, no LoRA inputs left',
    async (format) => {
      const loraFile = path.join(dir, `fixture-${format}.safetensors`);
      writeLoraFile(loraFile, format, { rank: 4, alpha: 4, modules: fixtureLora(trained) });
      const baked = path.join(out, `infer-${format}.onnx`);
      const result = bakeCompiled(out, loraFile, baked);
      // Up-path layers belong to path 2 only; kept down layers share their weights with path 1.
      expect(result.folded).toBeGreaterThan(0);
      expect(result.kept).toBeGreaterThan(0);
      expect(result.folded + result.kept).toBe(trained.length);
      const g = loadModel(baked).graph;
      expect(g.inputs.map((v) => v.name)).toEqual(['sample', 'timestep', 'encoder_hidden_states', 'base_encoder_hidden_states']);
      for (const batch of [1, 2] as const) {
        const inputs = fixtureInputs(batch);
        const r = await runModel(baked, { ...inputs, base_encoder_hidden_states: inputs.encoder_hidden_states });
        const ref = readNpy(path.join(FIXTURE_DIR, batch === 1 ? 'ref' : 'ref2', 'hollowed_out.npy')).data as Float32Array;
        expect(maxAbsDiff(r.out_sample.data as Float32Array, ref)).toBeLessThan(1e-4);
      }
    },
  );

  test('a kohya file with another alpha is rescaled to the compiled alpha', () => {
    const loraFile = path.join(dir, 'alpha8.safetensors');
    const values = fixtureLora(trained.slice(0, 1));
    writeLoraFile(loraFile, 'kohya', { rank: 4, alpha: 8, modules: values });
    const read = readLoraFile(loraFile, trained.slice(0, 1), 4, 4).get(trained[0])!;
    expect(Array.from(read.a.data)).toEqual(Array.from(values[0].a.data));
    expect(
      maxAbsDiff(
        read.b.data,
        values[0].b.data.map((x) => 2 * x),
      ),
    ).toBe(0);
  });
});

describe('hollowc compile on the command line', () => {
  test('a spec error: exit 1, file:line:col, the source line and a caret', () => {
    const dir = tempDir();
    const spec = path.join(dir, 'bad.hollow');
    fs.writeFileSync(spec, 'model sd15\nhollow blocks 5-1, 6-1\nlora rank 4\n');
    const r = spawnSync('node', [CLI, 'compile', FIXTURE_MODEL, spec, '-o', path.join(dir, 'out')], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr.split('\n').slice(0, 3)).toEqual([
      expect.stringMatching(new RegExp(`^${spec.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:2:15: error: hollow 5-1 6-1 is not a valid cut`)),
      'hollow blocks 5-1, 6-1',
      '              ^~~~~~~~',
    ]);
    expect(fs.existsSync(path.join(dir, 'out', 'manifest.json'))).toBe(false);
  });

  test('compile prints what it wrote', () => {
    const dir = tempDir();
    const spec = path.join(dir, 'ok.hollow');
    fs.writeFileSync(spec, 'hollow preset 11.5%\nlora rank 2\nemit precompute infer\n');
    const r = spawnSync('node', [CLI, 'compile', FIXTURE_MODEL, spec, '-o', path.join(dir, 'out')], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('hollow: 5-1 5-2 (139,920 parameters, 10.1%)');
    expect(r.stdout).toContain('held during training: 1,250,884 base parameters');
  });
});
