import * as path from 'path';
import { execFileSync, spawnSync } from 'child_process';
import { loadModel, saveModel } from '../compiler/serde';
import { Graph, Model } from '../compiler/ir';
import { GraphBuilder } from '../compiler/builder';
import { DataType } from '../compiler/dtype';
import { analyzeUNet } from '../passes/lib/analyze-unet';
import { NAMESPACE_KEY, NAME_SCOPES_KEY, moduleOfNode } from '../compiler/module-scope';
import { paramCounts } from '../models/param-count';
import { readNpy } from '../runtime/formats/npy';
import {
  FIXTURE_DIR,
  FIXTURE_MODEL,
  FIXTURE_MODEL_OPSET14,
  fixtureInputs,
  fixtureManifest,
  maxAbsDiff,
  runModel,
  tempDir,
} from './support/fixture';

const manifest = fixtureManifest();
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'main.js');

describe('UNet structure analysis of the real diffusers export', () => {
  const analysis = analyzeUNet(loadModel(FIXTURE_MODEL).graph, FIXTURE_MODEL);

  test('family, skips, blocks and the PyTorch parameter count', () => {
    expect(analysis.family).toBe('sd15');
    expect(analysis.skips).toHaveLength(12);
    const ids = analysis.blocks.map((b) => b.id);
    expect(ids).toHaveLength(28);
    expect(ids.join(' ')).toBe(
      '1-1 1-2 1-3 2-1 2-2 2-3 3-1 3-2 3-3 4-1 4-2 5-1 5-2 6-1 6-2 6-3 6-4 7-1 7-2 7-3 7-4 8-1 8-2 8-3 8-4 9-1 9-2 9-3',
    );
    expect(analysis.totalParams).toBe(manifest.model.parameter_count);
    expect(analysis.blocks.find((b) => b.id === '3-3')!.modules).toEqual(['down_blocks.2.downsamplers.0']);
  });

  test('per-block counts from initializer shapes equal the analytic counts of the recovered config', () => {
    const analytic = paramCounts(analysis.layout);
    for (const b of [...analysis.blocks, ...analysis.stem]) expect([b.id, b.params]).toEqual([b.id, analytic.byLayer.get(b.id)]);
  });

  test('skip pairs: down layers emit in order, up layers consume last-first', () => {
    expect(analysis.skips[0]).toMatchObject({ index: 0, tensor: '/conv_in/Conv_output_0', producer: 'conv_in', consumer: '9-3' });
    expect(analysis.skips[11]).toMatchObject({ index: 11, producer: '4-2', consumer: '6-1' });
    expect(analysis.skips.map((s) => s.producer)).toEqual([
      'conv_in',
      '1-1',
      '1-2',
      '1-3',
      '2-1',
      '2-2',
      '2-3',
      '3-1',
      '3-2',
      '3-3',
      '4-1',
      '4-2',
    ]);
  });

  test("the fixture's 39.2% cut is reported, with its hollowed modules and parameter count", () => {
    const cut = analysis.cuts.find((c) => c.lastKeptDown === '3-2')!;
    expect(cut.hollowed).toEqual(['3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4']);
    expect(cut.hollowedBlocks).toEqual(manifest.hollow.hollowed_modules);
    expect(cut.removedParams).toBe(manifest.hollow.hollowed_parameter_count);
    expect(cut.fraction).toBeCloseTo(manifest.hollow.hollowed_parameter_fraction, 12);
    expect(cut.firstKeptUp).toBe('7-1');
    expect(cut.activation.tensor).toBe('/up_blocks.0/upsamplers.0/conv/Conv_output_0');
    expect(cut.activation.shape).toEqual(['batch', 48, 'height/4', 'width/4']);
  });

  test.each([1, 2] as const)('the hollow activation tensor equals the PyTorch capture (batch %i)', async (batch) => {
    const cut = analysis.cuts.find((c) => c.lastKeptDown === '3-2')!;
    const model = loadModel(FIXTURE_MODEL);
    model.graph.outputs.push(model.graph.value(cut.activation.tensor));
    const file = path.join(tempDir(), 'exposed.onnx');
    saveModel(model, file);
    const out = await runModel(file, fixtureInputs(batch));
    const ref = readNpy(path.join(FIXTURE_DIR, batch === 1 ? 'ref' : 'ref2', 'hollow_activation.npy'));
    const got = out[cut.activation.tensor];
    expect(got.dims).toEqual(ref.shape);
    expect(maxAbsDiff(got.data as Float32Array, ref.data as Float32Array)).toBeLessThan(1e-4);
  });

  test('the opset 14 export (LayerNorm as ReduceMean/Sub/Pow/Sqrt) gives the same structure', () => {
    const a14 = analyzeUNet(loadModel(FIXTURE_MODEL_OPSET14).graph);
    expect(a14.totalParams).toBe(analysis.totalParams);
    expect(a14.blocks.map((b) => [b.id, b.params])).toEqual(analysis.blocks.map((b) => [b.id, b.params]));
    expect(a14.cuts.map((c) => c.activation.tensor)).toEqual(analysis.cuts.map((c) => c.activation.tensor));
  });
});

describe('graphs that are not SD-family UNet exports', () => {
  test('no module-scoped node names', () => {
    const g = new Graph();
    const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [1] });
    g.outputs = [new GraphBuilder(g).op('Relu', [x])];
    expect(() => analyzeUNet(g, 'plain.onnx')).toThrow(
      /^plain\.onnx: expected a torch\.onnx\.export of a diffusers UNet2DConditionModel, whose node names carry module scopes like \/down_blocks\.0\/resnets\.0\/conv1\/Conv \(TorchScript\) or whose node metadata does \(dynamo: pkg\.torch\.onnx\.name_scopes\); found 1 nodes without such scopes \(e\.g\. "\/Relu"\)$/,
    );
  });

  test('scoped, but not a UNet', () => {
    const g = new Graph();
    const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [1] });
    g.outputs = [new GraphBuilder(g).within('down_blocks.0', 'resnets.0').op('Relu', [x])];
    expect(() => analyzeUNet(g, 'half.onnx')).toThrow(
      'half.onnx: expected an SD-family UNet (down_blocks.*, mid_block, up_blocks.* with as many up as down blocks); found 1 down blocks, 0 up blocks, no mid_block',
    );
  });
});

describe('hollowc inspect', () => {
  test('--json prints exactly one JSON object with the documented fields', () => {
    const stdout = execFileSync('node', [CLI, 'inspect', '--json', FIXTURE_MODEL], { encoding: 'utf8' });
    const doc = JSON.parse(stdout);
    expect(Object.keys(doc)).toEqual(['family', 'totalParams', 'skips', 'blocks', 'cuts']);
    expect(doc.totalParams).toBe(1390804);
    expect(doc.blocks[8]).toEqual({ id: '3-3', modules: ['down_blocks.2.downsamplers.0'], params: 20784 });
    expect(doc.cuts.find((c: { after: string }) => c.after === '3-2')).toEqual({
      after: '3-2',
      hollowed: ['3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4'],
      removedParams: 482352,
      fraction: 0.346815,
      hollowActivation: '/up_blocks.0/upsamplers.0/conv/Conv_output_0',
      shape: ['batch', 48, 'height/4', 'width/4'],
    });
  });

  test('the table names blocks, presets and activations', () => {
    const stdout = execFileSync('node', [CLI, 'inspect', FIXTURE_MODEL], { encoding: 'utf8' });
    expect(stdout).toContain('sd15 UNet, 1,390,804 parameters, 12 skip connections');
    expect(stdout).toMatch(
      /^3-2 +482,352 +34\.7% +39\.2% +3-3 \.\. 6-4 +\/up_blocks\.0\/upsamplers\.0\/conv\/Conv_output_0 \[batch, 48, height\/4, width\/4\]$/m,
    );
  });

  test('a garbage file: one line on stderr, exit code 1, no stack trace', () => {
    const dir = tempDir();
    const file = path.join(dir, 'broken.onnx');
    require('fs').writeFileSync(file, Buffer.from([0x08, 0x07, 0x12, 0xff, 0xff, 0xff, 0x0f, 0x01]));
    const r = spawnSync('node', [CLI, 'inspect', file], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`^hollowc: error: ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not a valid ONNX model`));
  });

  test('a model written by the tests themselves (no scopes) is refused through the CLI too', () => {
    const g = new Graph();
    const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [1] });
    g.outputs = [new GraphBuilder(g).op('Relu', [x])];
    const file = path.join(tempDir(), 'relu.onnx');
    saveModel(new Model(g), file);
    const r = spawnSync('node', [CLI, 'inspect', file], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('expected a torch.onnx.export of a diffusers UNet2DConditionModel');
  });
});

describe('module scopes of dynamo-exported nodes (node metadata)', () => {
  const node = (name: string, meta: Record<string, string>) => {
    const g = new Graph();
    const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [1] });
    const n = g.addNode({ opType: 'Relu', inputs: [x], outputs: 1, name });
    n.metadataProps = Object.entries(meta).map(([key, value]) => ({ key, value }));
    return n;
  };
  test("name_scopes: the deepest module, not the fx node that ends the list; a later call's @N dropped", () => {
    const scopes = "['', 'down_blocks.0', 'down_blocks.0.resnets.0', 'down_blocks.0.resnets.0.conv1', 'conv2d_3']";
    expect(moduleOfNode(node('node_conv2d_3', { [NAME_SCOPES_KEY]: scopes }))).toBe('down_blocks.0.resnets.0.conv1');
    expect(moduleOfNode(node('node_silu_1', { [NAME_SCOPES_KEY]: "['', 'mid_block.resnets.0.nonlinearity@1', 'silu_1']" }))).toBe(
      'mid_block.resnets.0.nonlinearity',
    );
    expect(moduleOfNode(node('node_add', { [NAME_SCOPES_KEY]: "['', 'add']" }))).toBe('');
  });
  test('namespace when name_scopes is absent; scoped names win over metadata; nothing gives the root', () => {
    const namespace = ': diffusers.UNet2DConditionModel/conv_in: torch.nn.modules.conv.Conv2d/convolution: aten.convolution.default';
    expect(moduleOfNode(node('node_convolution', { [NAMESPACE_KEY]: namespace }))).toBe('conv_in');
    expect(moduleOfNode(node('/conv_out/Conv', { [NAMESPACE_KEY]: namespace }))).toBe('conv_out');
    expect(moduleOfNode(node('node_relu', {}))).toBe('');
  });
});
