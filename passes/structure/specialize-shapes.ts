/**
 * Static specialization: fixes the graph inputs' shapes (the training or inference shapes a
 * spec asks for), infers every value's shape, folds the exporter's shape arithmetic
 * (`Shape -> Gather -> Unsqueeze -> Concat -> Reshape`, `ConstantOfShape`, `Expand` targets, ...)
 * into constants, drops no-op nodes (same-type Cast, Reshape/Expand to the same shape, adding
 * a zero splat, ...) and dead nodes, and records the shapes as value_info. The forward stays
 * numerically identical; only the nodes that compute shapes go.
 */
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';
import { trainingShapes } from '../lib/training-shapes';
import { ConstTensor, mergeEqualConstants, resolveSlice, sizeOf, tensorFromConst } from '../../compiler/constant-eval';
import { ShapeAnalysis, inferShapes } from '../../compiler/shape-inference';

export interface SpecializeOptions {
  /** Write every value's shape into value_info (default true; onnxruntime checks them). */
  recordValueInfo?: boolean;
}

export interface SpecializeResult {
  model: Model;
  changed: boolean;
  nodesBefore: number;
  nodesAfter: number;
  /** Values replaced by constants. */
  folded: number;
  /** No-op nodes bypassed. */
  simplified: number;
}

/** Splat constants up to this size become a dense Constant; larger ones a ConstantOfShape. */
const DENSE_SPLAT_LIMIT = 64;

function fixInputShapes(g: Graph, shapes: Record<string, number[]>): void {
  const names = new Set(g.inputs.map((v) => v.name));
  for (const name of Object.keys(shapes)) {
    if (!names.has(name))
      throw new HollowcError(`specialize: the graph has no input named ${JSON.stringify(name)} (inputs: ${[...names].join(', ')})`);
  }
  for (const v of g.inputs) {
    const wanted = shapes[v.name];
    const declared = v.type?.shape;
    if (!wanted) {
      if (v.initializer) continue;
      if (!declared || declared.some((d) => typeof d !== 'number')) {
        throw new HollowcError(
          `specialize: input ${v.name} has dims [${declared?.map((d) => d ?? '?').join(', ') ?? '?'}]; give its shape`,
        );
      }
      continue;
    }
    if (wanted.some((d) => !Number.isInteger(d) || d < 0))
      throw new HollowcError(`specialize: shape [${wanted}] of input ${v.name} is not a list of sizes`);
    if (declared) {
      if (declared.length !== wanted.length)
        throw new HollowcError(`specialize: input ${v.name} has rank ${declared.length}, shape [${wanted}] has rank ${wanted.length}`);
      declared.forEach((d, i) => {
        if (typeof d === 'number' && d !== wanted[i])
          throw new HollowcError(`specialize: input ${v.name} has fixed dim ${i} = ${d}, shape [${wanted}] asks for ${wanted[i]}`);
      });
    }
    v.type = { elemType: v.type?.elemType ?? DataType.FLOAT, shape: [...wanted] };
  }
}

function addConstantNode(g: Graph, before: Node, base: string, c: ConstTensor): Value {
  const name = g.freshName(`${base}_folded`);
  if (c.data !== undefined || sizeOf(c.dims) <= DENSE_SPLAT_LIMIT) {
    const node = g.addNode(
      {
        opType: 'Constant',
        name: `${before.name}/Constant_folded`,
        inputs: [],
        outputs: [name],
        attributes: [{ name: 'value', type: 'tensor', value: tensorFromConst(c) }],
      },
      before,
    );
    return node.outputs[0];
  }
  const shape = g.addNode(
    {
      opType: 'Constant',
      name: `${before.name}/Constant_folded_shape`,
      inputs: [],
      outputs: [g.freshName(`${base}_folded_shape`)],
      attributes: [
        { name: 'value', type: 'tensor', value: tensorFromConst({ dataType: DataType.INT64, dims: [c.dims.length], data: c.dims }) },
      ],
    },
    before,
  ).outputs[0];
  shape.type = { elemType: DataType.INT64, shape: [c.dims.length] };
  const fill = tensorFromConst({ dataType: c.dataType, dims: [1], data: [c.splat ?? 0] });
  return g.addNode(
    {
      opType: 'ConstantOfShape',
      name: `${before.name}/ConstantOfShape_folded`,
      inputs: [shape],
      outputs: [name],
      attributes: [{ name: 'value', type: 'tensor', value: fill }],
    },
    before,
  ).outputs[0];
}

/** Replaces every folded value that a live (non-folded) node reads with a constant. */
function materializeConstants(g: Graph, analysis: ShapeAnalysis): number {
  let count = 0;
  for (const node of [...g.nodes]) {
    if (!analysis.foldable.has(node) || node.opType === 'Constant') continue;
    for (const out of node.outputs) {
      if (g.outputs.includes(out)) continue;
      if (!out.uses.some((u) => !analysis.foldable.has(u.node))) continue;
      const c = analysis.constants.get(out)!;
      const replacement = addConstantNode(g, node, out.name, c);
      replacement.type = { elemType: c.dataType, shape: [...c.dims] };
      analysis.constants.set(replacement, c);
      g.replaceAllUsesWith(out, replacement);
      count++;
    }
  }
  return count;
}

function sameShape(a: Value, b: Value): boolean {
  const x = a.type?.shape;
  const y = b.type?.shape;
  return !!x && !!y && x.length === y.length && x.every((d, i) => typeof d === 'number' && d === y[i]);
}

function isSplat(v: Value | null, value: number, analysis: ShapeAnalysis): boolean {
  const c = v ? analysis.constants.get(v) : undefined;
  if (!c) return false;
  if (c.data === undefined) return c.splat === value;
  return c.data.every((x) => x === value);
}

/** The input a no-op node passes through unchanged, if it is one. */
function passThrough(n: Node, analysis: ShapeAnalysis, opset: number): Value | undefined {
  const out = n.outputs[0];
  const x = n.inputs[0];
  if (!x || !out) return undefined;
  switch (n.opType) {
    case 'Identity':
      return x;
    case 'Cast':
      return x.type?.elemType === out.type?.elemType ? x : undefined;
    case 'Reshape':
    case 'Expand':
    case 'Squeeze':
    case 'Unsqueeze':
    case 'Flatten':
      return sameShape(x, out) ? x : undefined;
    case 'Transpose': {
      const perm = n.attrInts('perm', []);
      return perm.every((p, i) => p === i) && perm.length > 0 ? x : undefined;
    }
    case 'Slice': {
      if (!sameShape(x, out) || opset < 10) return undefined;
      const c = (i: number) => (n.inputs[i] ? analysis.constants.get(n.inputs[i]!)?.data : undefined);
      const [starts, ends, axes, steps] = [c(1), c(2), c(3), c(4)];
      if (!starts || !ends || (n.inputs[3] && !axes) || (n.inputs[4] && !steps)) return undefined;
      const r = resolveSlice(x.type!.shape as number[], starts, ends, axes, steps, n.name);
      return r.starts.every((s) => s === 0) && r.steps.every((s) => s === 1) ? x : undefined;
    }
    case 'Add':
    case 'Sub':
    case 'Mul':
    case 'Div': {
      const neutral = n.opType === 'Add' || n.opType === 'Sub' ? 0 : 1;
      const y = n.inputs[1];
      if (isSplat(y, neutral, analysis) && sameShape(x, out) && x.type?.elemType === out.type?.elemType) return x;
      if ((n.opType === 'Add' || n.opType === 'Mul') && y && isSplat(x, neutral, analysis) && sameShape(y, out)) return y;
      return undefined;
    }
    default:
      return undefined;
  }
}

function bypassNoOps(g: Graph, analysis: ShapeAnalysis, opset: number): number {
  let count = 0;
  for (const n of [...g.nodes]) {
    if (n.outputs.length !== 1 || analysis.foldable.has(n)) continue;
    const out = n.outputs[0];
    if (g.outputs.includes(out)) continue;
    const x = passThrough(n, analysis, opset);
    if (!x) continue;
    g.replaceAllUsesWith(out, x);
    count++;
  }
  return count;
}

export function specializeShapes(model: Model, shapes: Record<string, number[]>, options: SpecializeOptions = {}): SpecializeResult {
  const g = model.graph;
  const nodesBefore = g.nodes.length;
  fixInputShapes(g, shapes);
  const analysis = inferShapes(model);
  const folded = materializeConstants(g, analysis);
  const simplified = bypassNoOps(g, analysis, model.opsetVersion(''));
  g.eliminateDeadNodes();
  mergeEqualConstants(g);
  if (options.recordValueInfo ?? true) {
    const outputs = new Set(g.outputs);
    for (const n of g.nodes) for (const v of n.outputs) if (!outputs.has(v) && v.type) v.hasValueInfo = true;
  }
  return { model, changed: g.nodes.length !== nodesBefore || folded > 0, nodesBefore, nodesAfter: g.nodes.length, folded, simplified };
}

/** The training graphs are built for static shapes: the spec's, else the family's defaults. */
export const specializeShapesPass: Pass<ArtifactState> = {
  name: 'specialize-shapes',
  run(model, state) {
    const r = specializeShapes(model, trainingShapes(model, state.analysis.family, state.training));
    return {
      changed: r.changed,
      summary: `${r.nodesBefore} -> ${r.nodesAfter} nodes, ${r.folded} folded, ${r.simplified} no-ops bypassed`,
    };
  },
};
