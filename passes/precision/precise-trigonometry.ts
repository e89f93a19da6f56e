/**
 * Replaces float32 Sin and Cos with a range reduction and polynomials in standard ops, in every
 * artifact, so that the timestep embedding is as precise on a GPU as on the CPU.
 *
 * Why: WGSL (and Vulkan) only promise sin/cos to 2^-11 absolute on [−π, π], and SwiftShader is
 * that coarse: 1.9e-4 off the CPU on [0, 3), 2e-4 on [0, 1000) (tests/bench/webgpu-ops.ts). SD's
 * timestep embedding is sin/cos of t·f with t up to 999, and that error alone kept the sd15-tiny
 * fixture's LoRA gradients 8e-5 off PyTorch's on WebGPU (1e-5 with Sin and Cos on the CPU).
 *
 * How: q = ⌊x·2/π + ½⌋ quarter turns, r = x − q·π/2 with π/2 split in three (Cody–Waite: the first
 * two parts have 8 and 11 significant bits, so q·C1 and q·C2 are exact for |x| < 6400; each product and
 * difference is its own node, rounded to float32, so no device fuses them differently), then sin r
 * and cos r by Taylor polynomials on |r| ≤ π/4 (truncation below 3e-9), and the quadrant q mod 4
 * picks ±sin r or ±cos r by arithmetic on small integers (exact in float32). Sin and Cos of the
 * same input share the reduction. About 40 elementwise nodes on a [batch, channels/2] tensor.
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Model, Node, Value } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';

// π/2 = C1 + C2 + C3 (C1, C2: 8 and 11 significant bits, at most 12; C3: float32 of the rest).
const C1 = 1.5703125;
const C2 = 0.0004837512969970703;
const C3 = 7.549790126404332e-8;
// Taylor coefficients of sin r / r and cos r in r², lowest first.
const SIN = [1, -1 / 6, 1 / 120, -1 / 5040, 1 / 362880];
const COS = [1, -1 / 2, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800];

interface Reduced {
  q: Value;
  sinR: Value;
  cosR: Value;
}

/** Emits ops on float32 values of one shape; every output gets the input's type. */
class Elementwise {
  constructor(
    private readonly e: OpEmitter,
    private readonly like: Value,
  ) {}

  op(opType: string, inputs: Value[]): Value {
    const v = this.e.op(opType, inputs);
    if (!v.type && this.like.type) v.type = { elemType: this.like.type.elemType, shape: this.like.type.shape && [...this.like.type.shape] };
    return v;
  }

  c(value: number): Value {
    return this.e.scalar(value, DataType.FLOAT);
  }

  mul(a: Value, k: number | Value): Value {
    return this.op('Mul', [a, typeof k === 'number' ? this.c(k) : k]);
  }

  add(a: Value, k: number | Value): Value {
    return this.op('Add', [a, typeof k === 'number' ? this.c(k) : k]);
  }

  sub(a: Value, b: Value): Value {
    return this.op('Sub', [a, b]);
  }

  floor(a: Value): Value {
    return this.op('Floor', [a]);
  }

  /** Σ coefficients[i]·z^i by Horner. */
  horner(z: Value, coefficients: readonly number[]): Value {
    let acc = this.c(coefficients[coefficients.length - 1]);
    for (let i = coefficients.length - 2; i >= 0; i--) acc = this.add(this.mul(z, acc), coefficients[i]);
    return acc;
  }
}

function reduce(w: Elementwise, x: Value): Reduced {
  const q = w.floor(w.add(w.mul(x, 2 / Math.PI), 0.5));
  const r = w.sub(w.sub(w.sub(x, w.mul(q, C1)), w.mul(q, C2)), w.mul(q, C3));
  const r2 = w.mul(r, r);
  return { q, sinR: w.mul(r, w.horner(r2, SIN)), cosR: w.horner(r2, COS) };
}

/** sin(q·π/2 + r) for quadrant `turns` = q (Sin) or q + 1 (Cos). */
function fromQuadrant(w: Elementwise, turns: Value, { sinR, cosR }: Reduced): Value {
  const m = w.sub(turns, w.mul(w.floor(w.mul(turns, 0.25)), 4)); // 0..3
  const half = w.floor(w.mul(m, 0.5)); // 0 for m = 0, 1; 1 for m = 2, 3
  const odd = w.sub(m, w.mul(half, 2)); // picks cos r
  const even = w.add(w.mul(odd, -1), 1); // picks sin r
  const sign = w.add(w.mul(half, -2), 1);
  // (1 − odd)·sin r + odd·cos r selects exactly (each product is x·0 or x·1).
  return w.mul(w.add(w.mul(sinR, even), w.mul(cosR, odd)), sign);
}

export function makeTrigonometryPrecise(model: Model): { replaced: number } {
  const g = model.graph;
  const opset = model.opsetVersion('');
  const reduced = new Map<Value, Reduced>();
  let replaced = 0;
  const nodes = g.nodes.filter(
    (n): n is Node => n.domain === '' && (n.opType === 'Sin' || n.opType === 'Cos') && n.inputs[0]?.type?.elemType === DataType.FLOAT,
  );
  for (const n of nodes) {
    const x = n.inputs[0]!;
    const w = new Elementwise(new OpEmitter(new GraphBuilder(g, `${n.name}/precise`), opset, n), x);
    let parts = reduced.get(x);
    if (!parts) reduced.set(x, (parts = reduce(w, x)));
    const y = fromQuadrant(w, n.opType === 'Sin' ? parts.q : w.add(parts.q, 1), parts);
    // A graph output keeps its name: the polynomial ends in an Identity that produces it.
    const out = n.outputs[0];
    g.replaceAllUsesWith(out, y);
    g.removeNode(n);
    if (g.outputs.includes(y) && !g.tryValue(out.name)) {
      const named = g.addNode({ opType: 'Identity', inputs: [y], outputs: [out.name], name: `${n.name}/precise/Identity` });
      named.outputs[0].type = out.type;
      g.outputs = g.outputs.map((o) => (o === y ? named.outputs[0] : o));
    }
    replaced++;
  }
  return { replaced };
}

export const preciseTrigonometryPass: Pass<ArtifactState> = {
  name: 'precise-trigonometry',
  run(model) {
    const { replaced } = makeTrigonometryPrecise(model);
    return { changed: replaced > 0, summary: `${replaced} Sin/Cos nodes computed by polynomials` };
  },
};
