/**
 * The float16 form of an exported model, as `optimum-cli export onnx --dtype fp16` writes it (the
 * pipeline loaded in float16, then exported): every float weight, constant, Cast target and float
 * graph input/output float16, except what torch computes in float32 even then:
 *   - the sinusoidal timestep features (diffusers' Timesteps: `timesteps[:, None].float()`, then
 *     `.to(sample.dtype)` after; scopes `time_proj` and SDXL's `add_time_proj`),
 *   - Resize's `roi` and `scales` and whatever computes them (float32 by the operator's schema).
 * Casts are added where values cross between the two. Weights are converted chunk by chunk as the
 * model is written (TensorData `computed`): nothing is read here.
 */
import { DataType } from '../../compiler/dtype';
import { narrowedData } from '../../compiler/float16-data';
import { narrowFloat32Bytes } from '../../compiler/float16';
import { Attribute, Model, Node, Value, tensorElementCount } from '../../compiler/ir';
import * as fs from 'fs';
import * as path from 'path';
import { loadModel, readTensorBytes, saveModel } from '../../compiler/serde';

/** Node scopes diffusers computes in float32 in a float16 pipeline. */
const FLOAT32_SCOPES = ['/time_proj/', '/add_time_proj/'];

const NOT_FLOAT_OUTPUT = new Set([
  'Shape',
  'Size',
  'Equal',
  'Less',
  'LessOrEqual',
  'Greater',
  'GreaterOrEqual',
  'Not',
  'And',
  'Or',
  'NonZero',
  'ArgMax',
  'ArgMin',
  'IsNaN',
  'IsInf',
]);

/** Whether `v` holds float32 values (from declared types, or its producer where undeclared). */
function floatChecker(): (v: Value) => boolean {
  const memo = new Map<Value, boolean>();
  const isFloat = (v: Value): boolean => {
    const known = memo.get(v);
    if (known !== undefined) return known;
    memo.set(v, false); // cycles cannot happen in a valid graph; this only bounds the recursion
    let r: boolean;
    if (v.type) r = v.type.elemType === DataType.FLOAT;
    else if (v.initializer) r = v.initializer.dataType === DataType.FLOAT;
    else {
      const p = v.producer;
      if (!p) r = false;
      else if (p.opType === 'Constant') {
        const a = p.attributes[0];
        r = (a.type === 'tensor' && a.value.dataType === DataType.FLOAT) || a.name === 'value_float' || a.name === 'value_floats';
      } else if (p.opType === 'Cast') r = p.attrInt('to') === DataType.FLOAT;
      else if (p.opType === 'ConstantOfShape') {
        const a = p.attr('value');
        r = !a || (a.type === 'tensor' && a.value.dataType === DataType.FLOAT);
      } else if (NOT_FLOAT_OUTPUT.has(p.opType)) r = false;
      else if (p.opType === 'Where') r = isFloat(p.input(1));
      else {
        const first = p.inputs.find((x): x is Value => !!x);
        r = !!first && isFloat(first);
      }
    }
    memo.set(v, r);
    return r;
  };
  return isFloat;
}

/** Nodes that stay float32: the timestep features and everything feeding Resize's roi/scales. */
function float32Nodes(nodes: readonly Node[]): Set<Node> {
  const keep = new Set(nodes.filter((n) => FLOAT32_SCOPES.some((s) => n.name.includes(s) || n.name.startsWith(s.slice(1)))));
  const stack = nodes.filter((n) => n.opType === 'Resize').flatMap((n) => n.inputs.slice(1, 3).filter((v): v is Value => !!v));
  while (stack.length) {
    const p = stack.pop()!.producer;
    if (!p || keep.has(p)) continue;
    keep.add(p);
    for (const v of p.inputs) if (v) stack.push(v);
  }
  return keep;
}

function half(a: Attribute): Attribute {
  // a Constant's value_float / value_floats: as a float32 tensor value, then narrowed below
  const floats =
    a.type === 'float' && a.name === 'value_float' ? [a.value] : a.type === 'floats' && a.name === 'value_floats' ? a.value : undefined;
  if (floats)
    return half({
      name: 'value',
      type: 'tensor',
      value: {
        name: '',
        dataType: DataType.FLOAT,
        dims: a.type === 'float' ? [] : [floats.length],
        data: { kind: 'inline', bytes: new Uint8Array(Float32Array.from(floats).buffer) },
      },
    });
  if (a.type === 'tensor' && a.value.dataType === DataType.FLOAT)
    return {
      ...a,
      value: { ...a.value, dataType: DataType.FLOAT16, data: { kind: 'inline', bytes: narrowFloat32Bytes(readTensorBytes(a.value)) } },
    };
  if (a.type === 'int' && (a.name === 'to' || a.name === 'dtype') && a.value === DataType.FLOAT) return { ...a, value: DataType.FLOAT16 };
  return a;
}

/**
 * Rewrites `model` (a float32 export, loaded with its weights referenced) into its float16 form
 * in place. Returns how many weights became float16.
 */
export function toFloat16Export(model: Model): number {
  const g = model.graph;
  const isFloat = floatChecker();
  for (const v of g.values.values()) isFloat(v); // decided on the float32 graph, before anything changes
  const keep = float32Nodes(g.nodes);
  const halfNode = (n: Node) => !keep.has(n);
  // Where each float value will be float16: graph inputs, half nodes' outputs, weights a half node reads.
  const halfValue = (v: Value): boolean =>
    isFloat(v) && (v.producer ? halfNode(v.producer) : v.initializer ? v.uses.some((u) => halfNode(u.node)) : true);
  const wantsHalf = (n: Node, index: number) => halfNode(n) && !(n.opType === 'Resize' && index > 0);

  // Edges whose two ends disagree get a Cast (one per value and direction).
  const crossings: { node: Node; index: number; v: Value; to: number }[] = [];
  for (const n of g.nodes) {
    if (n.opType === 'Cast' || n.opType === 'Shape' || n.opType === 'Size') continue; // any element type
    n.inputs.forEach((v, index) => {
      if (!v || !isFloat(v) || halfValue(v) === wantsHalf(n, index)) return;
      crossings.push({ node: n, index, v, to: wantsHalf(n, index) ? DataType.FLOAT16 : DataType.FLOAT });
    });
  }
  const halfValues = [...g.values.values()].filter(halfValue);
  let weights = 0;
  for (const v of halfValues) {
    if (v.type) v.type = { ...v.type, elemType: DataType.FLOAT16 };
    const t = v.initializer;
    if (t) {
      v.initializer = { ...t, dataType: DataType.FLOAT16, data: narrowedData(t.name, t.data, tensorElementCount(t)) };
      weights++;
    }
  }
  for (const n of g.nodes) if (halfNode(n)) n.attributes = n.attributes.map(half);
  const casts = new Map<string, Value>();
  for (const c of crossings) {
    const key = `${c.v.name}\0${c.to}`;
    let cast = casts.get(key);
    if (!cast) {
      cast = g.addNode(
        {
          name: `${c.v.name}/to_float${c.to === DataType.FLOAT ? 32 : 16}`,
          opType: 'Cast',
          inputs: [c.v],
          outputs: 1,
          attributes: [{ name: 'to', type: 'int', value: c.to }],
        },
        c.node,
      ).outputs[0];
      casts.set(key, cast);
    }
    g.setInput(c.node, c.index, cast);
  }
  g.topologicalSort();
  return weights;
}

/** Element types a built model can be written in (`hollowc model build --dtype`). */
export const BUILD_DTYPES = ['fp32', 'fp16'] as const;
export type BuildDtype = (typeof BUILD_DTYPES)[number];

/**
 * Replaces the model file `file` (+ `<file>_data`) by its float16 form: written into a folder
 * beside it, then renamed over it once complete (the weights are read from the float32 data file
 * while the float16 one is written).
 */
export function convertToFloat16InPlace(file: string): { weights: number } {
  const tmp = fs.mkdtempSync(path.join(path.dirname(file), '.float16-'));
  try {
    const dst = path.join(tmp, path.basename(file));
    const r = writeFloat16Export(file, dst);
    fs.renameSync(`${dst}_data`, `${file}_data`);
    fs.renameSync(dst, file);
    return r;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Writes the float16 form of the model file `src` as `dst` (+ `<dst>_data`), streaming the weights. */
export function writeFloat16Export(src: string, dst: string): { weights: number } {
  const model = loadModel(src);
  const weights = toFloat16Export(model);
  saveModel(model, dst, { externalData: `${path.basename(dst)}_data` });
  return { weights };
}
