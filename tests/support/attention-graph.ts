/**
 * A transformer block's two rewritten patterns in miniature, for the golden tests of
 * passes/memory/split-attention.ts and passes/memory/slices-to-split.ts: attention softmax(q·kᵀ·s)·v over
 * [heads, tokens, head dim] and a GEGLU that cuts its input into two halves with two Slices.
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model, Value } from '../../compiler/ir';

const F = DataType.FLOAT;

export function attentionGraph(): Model {
  const g = new Graph();
  g.name = 'attention_and_geglu';
  const [heads, tokens, dim] = [2, 3, 2];
  const q = g.addInput('q', { elemType: F, shape: [heads, tokens, dim] });
  const k = g.addInput('k', { elemType: F, shape: [heads, tokens, dim] });
  const v = g.addInput('v', { elemType: F, shape: [heads, tokens, dim] });
  const proj = g.addInput('proj', { elemType: F, shape: [1, tokens, 8] });
  const b = new GraphBuilder(g);
  const typed = (x: Value, shape: number[]) => ((x.type = { elemType: F, shape }), x);
  const attn = b.within('attn1');
  const kT = typed(attn.op('Transpose', [k], { perm: [0, 2, 1] }), [heads, dim, tokens]);
  const scores = typed(attn.op('MatMul', [q, kT]), [heads, tokens, tokens]);
  const scaled = typed(attn.op('Mul', [scores, attn.constant(Float32Array.of(0.5), [])]), [heads, tokens, tokens]);
  const probs = typed(attn.op('Softmax', [scaled], { axis: -1 }), [heads, tokens, tokens]);
  const attended = typed(attn.op('MatMul', [probs, v]), [heads, tokens, dim]);
  const ff = b.within('ff/net.0');
  const bound = (x: number) => ff.constant(BigInt64Array.of(BigInt(x)), [1]);
  const half = (start: number, end: number) => typed(ff.op('Slice', [proj, bound(start), bound(end), bound(-1)]), [1, tokens, 4]);
  const [x, gate] = [half(0, 4), half(4, 8)];
  const geglu = typed(ff.op('Mul', [x, typed(ff.op('Sigmoid', [gate]), [1, tokens, 4])]), [1, tokens, 4]);
  return modelWithOutputs(g, { attention: attended, geglu });
}

/** `g` as an opset-17 model whose outputs are the named values (each through an Identity, so the names are exact). */
export function modelWithOutputs(g: Graph, outputs: Record<string, Value>): Model {
  for (const [name, y] of Object.entries(outputs)) {
    const node = g.addNode({ opType: 'Identity', inputs: [y], outputs: [name], name: `/${name}` });
    node.outputs[0].type = y.type;
    g.outputs.push(node.outputs[0]);
  }
  const model = new Model(g);
  model.irVersion = 8;
  model.opsetImports = [{ domain: '', version: 17 }];
  return model;
}

/** A 0-d timestep as optimum >= 1.24 exports it, unsqueezed to [1] and expanded to the batch (timestep-per-sample). */
export function scalarTimestepGraph(): Model {
  const g = new Graph();
  g.name = 'scalar_timestep';
  const sample = g.addInput('sample', { elemType: F, shape: ['batch', 4] });
  const t = g.addInput('timestep', { elemType: F, shape: [] });
  const b = new GraphBuilder(g);
  const batch = b.op('Shape', [sample], { start: 0, end: 1 });
  const expanded = b.op('Expand', [b.op('Unsqueeze', [t, b.int64s([0])]), batch]);
  const column = b.op('Unsqueeze', [expanded, b.int64s([1])]);
  const node = g.addNode({ opType: 'Mul', inputs: [sample, column], outputs: ['out'], name: '/out' });
  node.outputs[0].type = { elemType: F, shape: ['batch', 4] };
  g.outputs.push(node.outputs[0]);
  const model = new Model(g);
  model.opsetImports = [{ domain: '', version: 17 }];
  return model;
}
