/**
 * passes/memory/rematerialize.ts on the PyTorch fixture (a real diffusers UNet, 39.2% cut): the saved
 * activations it recomputes (GEGLU, softmax, SiLU, the residual sums) are no longer read by the
 * backward, the clones sit after the forward, and grads.onnx computes the same loss and gradients
 * bit for bit as without the pass, in sessions as the runtime opens them (CSE off, so the clones
 * stay clones).
 */
import * as path from 'path';
import { DataType } from '../compiler/dtype';
import { isWeightView } from '../compiler/flops';
import { Graph, Node, Value } from '../compiler/ir';
import { NAME_SCOPES_KEY } from '../compiler/module-scope';
import { loadModel } from '../compiler/serde';
import { rematerialize, transformerBlocks } from '../passes/memory/rematerialize';
import { createSession } from '../runtime/ort/session';
import { trainingSession } from '../runtime/train/step-session';
import { compileFixtureGrads, fixtureGradientStep, identicalOutputs } from './support/fixture';

test('recomputed activations: the same loss and gradients bit for bit, the backward reads clones', async () => {
  const compiled = compileFixtureGrads('fp32', 'hollowc-remat-');
  const withPass = path.join(compiled.out, 'grads.onnx');
  const without = path.join(
    compileFixtureGrads('fp32', 'hollowc-remat-', { skipPasses: ['rematerialize', 'order-sinks'] }).out,
    'grads.onnx',
  );
  const g = loadModel(withPass).graph;
  const clones = g.nodes.filter((n) => n.name.endsWith('/recompute'));
  const kinds = new Set(clones.map((n) => n.opType));
  for (const op of ['Softmax', 'Erf', 'Sigmoid', 'Div']) expect(kinds.has(op)).toBe(true);
  // Every clone comes after the loss's computation (the forward ends there; order-sinks moves the
  // `loss` output node itself to the end).
  const lossNode = g.nodes.find((n) => n.outputs.some((o) => o.name === 'loss'))!;
  const lossAt = g.nodes.indexOf(lossNode.inputs[0]!.producer!);
  expect(clones.every((n) => g.nodes.indexOf(n) > lossAt)).toBe(true);
  const softmax = g.nodes.filter((n) => n.opType === 'Softmax' && !n.name.endsWith('/recompute'));
  expect(softmax.length).toBeGreaterThan(0);
  // A forward softmax output is read by the forward only (P·V), the backward reads its clone.
  for (const n of softmax) expect(n.outputs[0].uses.every((u) => g.nodes.indexOf(u.node) <= lossAt)).toBe(true);

  // A transformer block's residual sums h + to_out(attention) are read by the backward through
  // clones that recompute to_out's projection from the kept attention output. All but the first
  // block's first: no gradient flows above the first LoRA layer, so nothing keeps that block's h
  // (proj_in's output), and recomputing the sum would keep h instead, a tensor of the same size.
  const residualSums = g.nodes.filter((n) => n.opType === 'Add' && /transformer_blocks\.\d+\/Add(_1)?$/.test(n.name));
  expect(residualSums.length).toBeGreaterThan(2);
  const keptSums = residualSums.filter((n) => n.outputs[0].uses.some((u) => g.nodes.indexOf(u.node) > lossAt));
  expect(keptSums.map((n) => n.name)).toEqual(['/down_blocks.0/attentions.0/transformer_blocks.0/Add']);
  expect(clones.some((n) => n.opType === 'MatMul' && n.name.includes('/to_out.0/') && isWeightView(n.inputs[1]))).toBe(true);

  const feeds = fixtureGradientStep(compiled.m).feeds;
  const run = async (file: string) => {
    const s = await createSession(file, trainingSession({ session: { intraOpThreads: 1 } }));
    try {
      return await s.run(feeds);
    } finally {
      await s.release();
    }
  };
  const [a, b] = [await run(withPass), await run(without)];
  expect(identicalOutputs(a, b).length).toBe(Object.keys(a).length);
  expect((a.loss.data as Float32Array)[0]).toBeGreaterThan(0);
  // eslint-disable-next-line no-console
  console.log(
    `rematerialize on the fixture: ${clones.length} clones (${[...kinds].join(', ')}); ${Object.keys(a).length} outputs identical`,
  );
});

test('recompute blocks: a transformer block keeps only its input and output; the same loss and gradients bit for bit', async () => {
  const cheap = compileFixtureGrads('fp32', 'hollowc-remat-');
  const blocks = compileFixtureGrads('fp32', 'hollowc-remat-blocks-', { recompute: 'blocks' });
  const without = compileFixtureGrads('fp32', 'hollowc-remat-', { skipPasses: ['rematerialize', 'order-sinks'] });
  expect(blocks.m.training.recompute).toBe('blocks');
  const g = loadModel(path.join(blocks.out, 'grads.onnx')).graph;
  const lossNode = g.nodes.find((n) => n.outputs.some((o) => o.name === 'loss'))!;
  const lossAt = g.nodes.indexOf(lossNode.inputs[0]!.producer!);
  const blockOf = (name: string) => /^\/(.*\/transformer_blocks\.\d+)\//.exec(name)?.[1];
  const inBlocks = g.nodes.slice(0, lossAt + 1).filter((n) => blockOf(n.name) !== undefined);
  expect(new Set(inBlocks.map((n) => blockOf(n.name))).size).toBeGreaterThan(2);
  // What the backward still reads of a block's forward: only values that leave the block.
  const saved = inBlocks.flatMap((n) => n.outputs).filter((v) => v.uses.some((u) => g.nodes.indexOf(u.node) > lossAt));
  const leaving = saved.filter((v) => v.uses.some((u) => g.nodes.indexOf(u.node) <= lossAt && blockOf(u.node.name) !== blockOf(v.producer!.name)));
  expect(saved.map((v) => v.name)).toEqual(leaving.map((v) => v.name));
  // The query, key and value projections are recomputed (below the LayerNorm they read), which the
  // cheap mode never does.
  const clones = g.nodes.filter((n) => n.name.endsWith('/recompute'));
  expect(clones.some((n) => n.opType === 'MatMul' && n.name.includes('/attn1/to_q/') && isWeightView(n.inputs[1]))).toBe(true);
  const cheapClones = loadModel(path.join(cheap.out, 'grads.onnx')).graph.nodes.filter((n) => n.name.endsWith('/recompute'));
  expect(clones.length).toBeGreaterThan(cheapClones.length);

  const feeds = fixtureGradientStep(blocks.m).feeds;
  const run = async (file: string) => {
    const s = await createSession(path.join(file, 'grads.onnx'), trainingSession({ session: { intraOpThreads: 1 } }));
    try {
      return await s.run(feeds);
    } finally {
      await s.release();
    }
  };
  const [a, b] = [await run(blocks.out), await run(without.out)];
  expect(identicalOutputs(a, b).length).toBe(Object.keys(a).length);
  // eslint-disable-next-line no-console
  console.log(`recompute blocks on the fixture: ${clones.length} clones (cheap: ${cheapClones.length}), ${saved.length} block values kept`);
});

test("recompute blocks: a node the passes added under a dynamo export's name takes its inputs' block; the model's own layers keep theirs", () => {
  const g = new Graph();
  const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [4] });
  const block = 'down_blocks.1.attentions.0.transformer_blocks.2';
  const node = (name: string, inputs: Value[], scope?: string): Node => {
    const n = g.addNode({ opType: 'Relu', inputs, outputs: 1, name });
    if (scope !== undefined) n.metadataProps = [{ key: NAME_SCOPES_KEY, value: `['', '${scope}', 'relu']` }];
    return n;
  };
  const projIn = node('node_linear_1', [x], 'down_blocks.1.attentions.0.proj_in');
  const scores = node('node_matmul_3', [projIn.outputs[0]], `${block}.attn1`);
  const head = node('node_matmul_3/heads/MatMul_head0', [scores.outputs[0]]);
  const joined = node('node_matmul_3/heads/Concat', [head.outputs[0], x]);
  const projOut = node('node_linear_9', [joined.outputs[0]], 'down_blocks.1.attentions.0.proj_out');
  const mixed = node('node_add_1/rows/Add', [projIn.outputs[0], head.outputs[0]]);
  const blocks = transformerBlocks(g, new Set(g.nodes));
  expect([projIn, scores, head, joined, projOut, mixed].map((n) => blocks.get(n))).toEqual([undefined, block, block, block, undefined, undefined]);
});

test('recompute blocks on a graph that names no transformer block is an error, not a silent cheap run', () => {
  const g = new Graph();
  const x = g.addInput('x', { elemType: DataType.FLOAT, shape: [4] });
  const loss = g.addNode({ opType: 'Relu', inputs: [x], outputs: 1, name: 'Relu_1' }).outputs[0];
  expect(() => rematerialize(g, loss, x, { blocks: true })).toThrow('recompute blocks: the graph names no transformer block');
  expect(rematerialize(g, loss, x).blocks).toBe(0);
});
