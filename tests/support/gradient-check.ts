/**
 * Numeric-vs-analytic gradient checks on onnxruntime: build a small graph, take
 * loss = Σ Y·R (R a fixed random probe), differentiate it with our pass, and compare every
 * gradient element with a central difference of the forward model. Failures name the case and
 * the seed that reproduces it.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../../compiler/builder';
import { DataType, DataTypeCode } from '../../compiler/dtype';
import { Graph, Model, Node, Value } from '../../compiler/ir';
import { saveModel } from '../../compiler/serde';
import { assertValidGraph } from '../../compiler/verify';
import { differentiate } from '../../passes/training/differentiate';
import { addGradientOutputs } from '../../passes/training/expose-gradients';
import { OpEmitter } from '../../compiler/op-emitter';
import { inferShapes } from '../../compiler/shape-inference';
import { tempDir } from './fixture';

export type FloatKind = 'float32' | 'float64';

export interface InputSpec {
  name: string;
  shape: number[];
  /** Differentiate w.r.t. this input (float inputs default to true). */
  grad?: boolean;
  /** 'float' (the check's dtype, default), 'int64' or 'bool'. */
  kind?: 'float' | 'int64' | 'bool';
  /** Fixed values; else random normal (floats), 0/1 (bool). */
  data?: number[];
  /** Maps each random normal draw (e.g. to keep Sqrt's input positive). */
  transform?: (x: number) => number;
}

export interface GradientCase {
  name: string;
  dtype: FloatKind;
  opset?: number;
  inputs: InputSpec[];
  build: (e: OpEmitter, x: Record<string, Value>) => Value;
  seed: number;
  /** Central-difference step (default 1e-5 for float64, 1e-2 for float32). */
  step?: number;
  /** Allowed max |numeric − analytic| / max |analytic| (default 1e-6 / 3e-3). */
  tolerance?: number;
}

export interface GradientReport {
  maxError: number;
  scale: number;
  elements: number;
  nodesAdded: number;
  opsAdded: string[];
  /** Op types of the forward nodes on a path from a checked input to the loss: the rules exercised. */
  opsDifferentiated: string[];
}

function opsOnPath(nodes: Iterable<Node>, wrt: readonly Value[], loss: Value): string[] {
  const fromWrt = new Set<Value>(wrt);
  const toLoss = new Set<Value>([loss]);
  const list = [...nodes];
  for (const n of list) if (n.inputs.some((v) => v && fromWrt.has(v))) n.outputs.forEach((o) => fromWrt.add(o));
  for (const n of [...list].reverse()) if (n.outputs.some((o) => toLoss.has(o))) n.inputs.forEach((v) => v && toLoss.add(v));
  return [...new Set(list.filter((n) => n.outputs.some((o) => fromWrt.has(o) && toLoss.has(o))).map((n) => n.opType))].sort();
}

export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function normal(random: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

const FLOAT_CODE: Record<FloatKind, DataTypeCode> = { float32: DataType.FLOAT, float64: DataType.DOUBLE };

interface Built {
  model: Model;
  loss: Value;
  wrt: Value[];
}

function buildModel(c: GradientCase, probeShape: number[] | undefined): Built & { outputShape: number[] } {
  const g = new Graph();
  const model = new Model(g);
  model.opsetImports = [{ domain: '', version: c.opset ?? 17 }];
  const elemType = FLOAT_CODE[c.dtype];
  const x: Record<string, Value> = {};
  for (const s of c.inputs) {
    const kind = s.kind ?? 'float';
    const t = kind === 'float' ? elemType : kind === 'int64' ? DataType.INT64 : DataType.BOOL;
    x[s.name] = g.addInput(s.name, { elemType: t, shape: [...s.shape] });
  }
  const e = new OpEmitter(new GraphBuilder(g, '/case'), model.opsetVersion(''));
  const y = c.build(e, x);
  inferShapes(model);
  const outputShape = y.type!.shape as number[];
  const probe = g.addInput('probe', { elemType: y.type!.elemType, shape: [...(probeShape ?? outputShape)] });
  const le = new OpEmitter(new GraphBuilder(g, '/loss'), model.opsetVersion(''));
  const lossValue = le.reduce(
    'ReduceSum',
    le.op('Mul', [y, probe]),
    outputShape.map((_, i) => i),
    false,
  );
  const loss = g.addNode({ opType: 'Identity', name: '/loss/Identity', inputs: [lossValue], outputs: ['loss'] }).outputs[0];
  loss.type = { elemType: y.type!.elemType, shape: [] };
  g.outputs.push(loss);
  const wrt = c.inputs.filter((s) => (s.kind ?? 'float') === 'float' && s.grad !== false).map((s) => x[s.name]);
  return { model, loss, wrt, outputShape };
}

function makeFeeds(
  c: GradientCase,
  outputShape: number[],
  outputType: DataTypeCode,
): Record<string, { data: number[]; shape: number[]; type: 'float32' | 'float64' | 'int64' | 'bool' }> {
  const random = rng(c.seed);
  const gauss = normal(random);
  const feeds: Record<string, { data: number[]; shape: number[]; type: 'float32' | 'float64' | 'int64' | 'bool' }> = {};
  const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  for (const s of c.inputs) {
    const kind = s.kind ?? 'float';
    const n = count(s.shape);
    const data =
      s.data ??
      Array.from({ length: n }, () => (kind === 'bool' ? (random() < 0.5 ? 1 : 0) : (s.transform ?? ((v: number) => v))(gauss())));
    feeds[s.name] = { data, shape: s.shape, type: kind === 'float' ? c.dtype : kind };
  }
  feeds.probe = {
    data: Array.from({ length: count(outputShape) }, gauss),
    shape: outputShape,
    type: outputType === DataType.FLOAT ? 'float32' : 'float64',
  };
  return feeds;
}

function toOrt(f: { data: number[]; shape: number[]; type: string }): ort.Tensor {
  switch (f.type) {
    case 'float32':
      return new ort.Tensor('float32', Float32Array.from(f.data), f.shape);
    case 'float64':
      return new ort.Tensor('float64', Float64Array.from(f.data), f.shape);
    case 'int64':
      return new ort.Tensor(
        'int64',
        BigInt64Array.from(f.data, (v) => BigInt(v)),
        f.shape,
      );
    default:
      return new ort.Tensor('bool', Uint8Array.from(f.data), f.shape);
  }
}

/** Runs one gradient check; throws (naming the case and seed) when it fails. */
export async function checkGradient(c: GradientCase): Promise<GradientReport> {
  const dir = tempDir('hollowc-grad-');
  const forward = buildModel(c, undefined);
  const withGrad = buildModel(c, forward.outputShape);
  const forwardNodes = new Set(withGrad.model.graph.nodes);
  const differentiated = opsOnPath(forwardNodes, withGrad.wrt, withGrad.loss);
  const result = differentiate(withGrad.model, withGrad.loss, withGrad.wrt);
  const outputs = addGradientOutputs(withGrad.model.graph, result.gradients);
  assertValidGraph(withGrad.model.graph, `differentiate (${c.name})`);
  const added = withGrad.model.graph.nodes.filter((n) => !forwardNodes.has(n));
  const foreign = withGrad.model.graph.nodes.filter((n) => n.domain !== '');
  if (foreign.length) throw new Error(`${c.name}: non-standard op ${foreign[0].domain}.${foreign[0].opType}`);
  // Our own shape inference must agree with the shapes the rules promise.
  inferShapes(withGrad.model);
  for (const [w, out] of outputs) {
    if (JSON.stringify(out.type?.shape) !== JSON.stringify(w.type?.shape))
      throw new Error(`${c.name}: gradient of ${w.name} has shape [${out.type?.shape}], expected [${w.type?.shape}]`);
  }
  saveModel(forward.model, path.join(dir, 'forward.onnx'));
  saveModel(withGrad.model, path.join(dir, 'grad.onnx'));
  const feeds = makeFeeds(c, forward.outputShape, forward.loss.type!.elemType);
  const opts: ort.InferenceSession.SessionOptions = { executionProviders: ['cpu'], graphOptimizationLevel: 'disabled' };
  const fwd = await ort.InferenceSession.create(path.join(dir, 'forward.onnx'), opts);
  const grad = await ort.InferenceSession.create(path.join(dir, 'grad.onnx'), opts);
  try {
    const ortFeeds = () => Object.fromEntries(Object.entries(feeds).map(([k, f]) => [k, toOrt(f)]));
    const analytic = await grad.run(ortFeeds());
    const step = c.step ?? (c.dtype === 'float64' ? 1e-5 : 1e-2);
    const tolerance = c.tolerance ?? (c.dtype === 'float64' ? 1e-6 : 3e-3);
    let maxError = 0;
    let scale = 1e-6;
    let elements = 0;
    let worst = '';
    for (const w of withGrad.wrt) {
      const ana = analytic[`${w.name}.grad`].data as Float32Array | Float64Array;
      const x = feeds[w.name].data;
      for (let k = 0; k < x.length; k++) {
        const orig = x[k];
        x[k] = orig + step;
        const plus = Number((await fwd.run(ortFeeds())).loss.data[0]);
        x[k] = orig - step;
        const minus = Number((await fwd.run(ortFeeds())).loss.data[0]);
        x[k] = orig;
        const numeric = (plus - minus) / (2 * step);
        const err = Math.abs(numeric - ana[k]);
        scale = Math.max(scale, Math.abs(ana[k]));
        if (!(err <= maxError)) {
          maxError = Number.isNaN(err) ? Infinity : err;
          worst = `${w.name}[${k}]: numeric ${numeric}, analytic ${ana[k]}`;
        }
        elements++;
      }
    }
    const relative = maxError / scale;
    if (!(relative <= tolerance)) {
      throw new Error(
        `gradient check "${c.name}" (${c.dtype}, opset ${c.opset ?? 17}) failed with seed ${c.seed}: max |numeric − analytic| / scale = ${relative.toExponential(3)} > ${tolerance} (worst ${worst})`,
      );
    }
    return {
      maxError: relative,
      scale,
      elements,
      nodesAdded: result.nodesAdded,
      opsAdded: [...new Set(added.map((n) => n.opType))].sort(),
      opsDifferentiated: differentiated,
    };
  } finally {
    await fwd.release();
    await grad.release();
  }
}
