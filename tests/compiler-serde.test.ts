import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../compiler/errors';
import { Model, Graph } from '../compiler/ir';
import { loadModel, readTensorBytes, saveModel } from '../compiler/serde';
import { printGraph } from '../compiler/printer';
import { verifyGraph } from '../compiler/verify';
import { GraphBuilder, tensorFromTyped } from '../compiler/builder';
import { DataType } from '../compiler/dtype';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { FIXTURE_MODEL, FIXTURE_MODEL_OPSET14, fixtureInputs, maxAbsDiff, runModel, tempDir } from './support/fixture';

function modelSummary(m: Model) {
  return {
    ir: m.irVersion,
    opsets: m.opsetImports,
    producer: [m.producerName, m.producerVersion],
    // Where a weight is stored is not part of the graph's meaning.
    text: printGraph(m.graph).replace(/ external$/gm, ''),
    weights: m.graph.initializers().map((v) => Buffer.from(readTensorBytes(v.initializer!)).toString('base64')),
  };
}

describe('ONNX round trip', () => {
  test.each([FIXTURE_MODEL, FIXTURE_MODEL_OPSET14])('load -> save -> load preserves %s exactly', async (file) => {
    const dir = tempDir();
    const original = loadModel(file);
    expect(verifyGraph(original.graph)).toEqual([]);
    expect(original.graph.nodes.length).toBeGreaterThan(7000);
    const copy = path.join(dir, 'copy.onnx');
    saveModel(original, copy);
    const again = loadModel(copy);
    expect(modelSummary(again)).toEqual(modelSummary(original));
    // Node names, attributes and value order survive, so onnxruntime computes the same thing.
    const feeds = fixtureInputs(1);
    const [a, b] = [await runModel(file, feeds), await runModel(copy, feeds)];
    expect(maxAbsDiff(a.out_sample.data as Float32Array, b.out_sample.data as Float32Array)).toBe(0);
  });

  test('a model the builder writes (external data, SDXL structure) round-trips exactly', async () => {
    const dir = tempDir();
    const built = await buildUNet(FAMILIES.sdxl.tiny.config, { outDir: dir, seed: 3 });
    const original = loadModel(built.file);
    expect(verifyGraph(original.graph)).toEqual([]);
    const copy = path.join(tempDir(), 'copy.onnx');
    saveModel(original, copy);
    expect(modelSummary(loadModel(copy))).toEqual(modelSummary(original));
  });

  test('external data: weights go to one file, load by reference, run in onnxruntime', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'model.onnx');
    saveModel(loadModel(FIXTURE_MODEL), file, { externalData: 'model.onnx_data', threshold: 0 });
    expect(fs.existsSync(path.join(dir, 'model.onnx_data'))).toBe(true);
    expect(fs.statSync(file).size).toBeLessThan(fs.statSync(path.join(dir, 'model.onnx_data')).size);

    const loaded = loadModel(file);
    const inits = loaded.graph.initializers();
    expect(inits.every((v) => v.initializer!.data.kind === 'external')).toBe(true);
    expect(modelSummary(loaded)).toEqual(modelSummary(loadModel(FIXTURE_MODEL)));

    // Saving to another folder copies the byte ranges into that folder's own data file.
    const dir2 = tempDir();
    const file2 = path.join(dir2, 'unet.onnx');
    saveModel(loaded, file2);
    expect(fs.existsSync(path.join(dir2, 'unet.onnx_data'))).toBe(true);
    const feeds = fixtureInputs(2);
    const ref = await runModel(FIXTURE_MODEL, feeds);
    for (const f of [file, file2]) {
      const out = await runModel(f, feeds);
      expect(maxAbsDiff(out.out_sample.data as Float32Array, ref.out_sample.data as Float32Array)).toBe(0);
    }
  });

  test('referenceInPlace keeps external tensors pointing at the existing data file', () => {
    const dir = tempDir();
    const file = path.join(dir, 'model.onnx');
    saveModel(loadModel(FIXTURE_MODEL), file, { externalData: 'weights.bin', threshold: 0 });
    const m = loadModel(file);
    m.graph.name = 'second artifact';
    const other = path.join(dir, 'other.onnx');
    saveModel(m, other, { referenceInPlace: true, externalData: 'inline' });
    expect(fs.readdirSync(dir).sort()).toEqual(['model.onnx', 'other.onnx', 'weights.bin']);
    const back = loadModel(other);
    const t = back.graph.initializers()[0].initializer!;
    expect(t.data.kind === 'external' && path.basename(t.data.file)).toBe('weights.bin');
  });
});

/** A one-node model whose weight lives in external data at `location`. */
function writeModelWithLocation(dir: string, location: string): string {
  const g = new Graph();
  const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [2] });
  const w = g.addInitializer({ ...tensorFromTyped('w', Float32Array.of(1, 2), [2]) });
  const b = new GraphBuilder(g);
  g.outputs = [b.op('Add', [x, w])];
  const file = path.join(dir, 'model.onnx');
  saveModel(new Model(g), file, { externalData: 'w.bin', threshold: 0 });
  // Rewrite the location string in the graph file, as a malicious model would carry it.
  const bytes = fs.readFileSync(file);
  const patched = Buffer.from(bytes.toString('latin1').replace('w.bin', location.padEnd(5, '/').slice(0, 5)), 'latin1');
  if (location.length !== 5) throw new Error('test locations must be 5 characters to patch in place');
  fs.writeFileSync(file, patched);
  return file;
}

describe('external data locations that escape the model folder are refused', () => {
  test.each([
    ['../ab', /escapes the model's folder/],
    ['/etc/', /absolute path/],
  ])('%s', (location, message) => {
    const dir = tempDir();
    const file = writeModelWithLocation(dir, location);
    expect(() => loadModel(file)).toThrow(HollowcError);
    expect(() => loadModel(file)).toThrow(message);
    expect(() => loadModel(file)).toThrow(file);
  });

  test('a link that leads outside the folder', () => {
    const outside = tempDir();
    fs.writeFileSync(path.join(outside, 'secret'), Buffer.alloc(8));
    const dir = tempDir();
    const file = writeModelWithLocation(dir, 'ln.da');
    fs.symlinkSync(path.join(outside, 'secret'), path.join(dir, 'ln.da'));
    expect(() => loadModel(file)).toThrow(/leads outside the model's folder through a link/);
  });

  test('a range beyond the end of the data file', () => {
    const dir = tempDir();
    const file = writeModelWithLocation(dir, 'w.bin');
    fs.truncateSync(path.join(dir, 'w.bin'), 4);
    expect(() => loadModel(file)).toThrow(/lies beyond the end/);
  });
});

describe('bad model files', () => {
  test('truncated and garbage files give a one-line error naming the file', () => {
    const dir = tempDir();
    const truncated = path.join(dir, 'truncated.onnx');
    fs.writeFileSync(truncated, fs.readFileSync(FIXTURE_MODEL).subarray(0, 100_000));
    const garbage = path.join(dir, 'garbage.onnx');
    fs.writeFileSync(garbage, Buffer.from('this is not a protobuf at all, just text\n'.repeat(10)));
    for (const f of [truncated, garbage]) {
      let err: unknown;
      try {
        loadModel(f);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(HollowcError);
      const message = (err as Error).message;
      expect(message.startsWith(`${f}: not a valid ONNX model`)).toBe(true);
      expect(message).not.toContain('\n');
    }
  });

  test('a missing file', () => {
    expect(() => loadModel('/nonexistent/model.onnx')).toThrow('/nonexistent/model.onnx: cannot read model: ENOENT');
  });
});
