/**
 * Folds trained LoRA tensors into infer.onnx. Where only path 2 (the personalized hollowed net)
 * uses a layer's weight, W' = W + (alpha/r)·ΔW replaces it and the low-rank branch disappears;
 * where path 1 (the base path) shares the weight, the branch stays with A and B as initializers,
 * so the base path keeps computing the base model. Only the weights of folded layers are read.
 */
import { tensorFromTyped } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Graph, Node, Value, inlineTensor } from '../../compiler/ir';
import { isLoraParam, loraParamNames } from '../../compiler/manifest';
import { readTensorBytes } from '../../compiler/serde';
import { isBasePath } from '../lib/base-path';
import { findLoraSites, LoraSite } from '../lib/lora-sites';

export interface BakeResult {
  folded: string[];
  kept: string[];
}

function float32Of(v: Value): Float32Array {
  const t = v.initializer!;
  if (t.dataType !== DataType.FLOAT) throw new HollowcError(`cannot fold LoRA into ${t.name}: it is not float32`);
  const bytes = readTensorBytes(t);
  return new Float32Array(new Uint8Array(bytes).buffer);
}

/** ΔW in the layout the node stores its weight in, times `scale`, added to `w`. */
export function foldInto(
  site: Pick<LoraSite, 'weightTransposed' | 'inFeatures' | 'outFeatures' | 'kernel'>,
  w: Float32Array,
  a: Float32Array,
  b: Float32Array,
  rank: number,
  scale: number,
): Float32Array {
  const out = Float32Array.from(w);
  const inF = site.inFeatures;
  const outF = site.outFeatures;
  const k = site.kernel[0] * site.kernel[1];
  // A TorchScript MatMul stores [in, out]; Gemm with transB, Conv and dynamo exports [out, in(, kh, kw)].
  const transposed = site.weightTransposed;
  for (let o = 0; o < outF; o++) {
    for (let i = 0; i < inF; i++) {
      for (let p = 0; p < k; p++) {
        let sum = 0;
        for (let r = 0; r < rank; r++) sum += b[o * rank + r] * a[(r * inF + i) * k + p];
        const index = transposed ? i * outF + o : (o * inF + i) * k + p;
        out[index] += scale * sum;
      }
    }
  }
  return out;
}

/**
 * The Add that joins a LoRA branch to its layer: insert-lora's `layer output + scale · up(down(x))`,
 * found from the B tensor forwards (the branch is the only thing that reads B).
 */
function branchJoin(site: LoraSite, b: Value): Node | undefined {
  const seen = new Set<Value>([b]);
  const stack = [b];
  while (stack.length) {
    for (const u of stack.pop()!.uses) {
      if (u.node.opType === 'Add' && u.node.inputs.includes(site.output)) return u.node;
      for (const out of u.node.outputs) if (!seen.has(out)) (seen.add(out), stack.push(out));
    }
  }
  return undefined;
}

/**
 * Bakes `values` (LoRA tensor name -> values) into `g`, an infer graph with LoRA inputs.
 * Every LoRA input of the graph must have a value.
 */
export function bakeLora(g: Graph, values: Map<string, Float32Array>, rank: number, scale: number): BakeResult {
  const result: BakeResult = { folded: [], kept: [] };
  const loraInputs = g.inputs.filter((v) => isLoraParam(v.name));
  const missing = loraInputs.filter((v) => !values.has(v.name)).map((v) => v.name);
  if (missing.length)
    throw new HollowcError(`the LoRA file lacks ${missing.length} tensor(s) the graph needs, e.g. ${missing.slice(0, 3).join(', ')}`);
  const sites = findLoraSites(g).filter((s) => !isBasePath(s.node));
  for (const site of sites) {
    const names = loraParamNames(site.module);
    const aIn = g.tryValue(names.a);
    const bIn = g.tryValue(names.b);
    if (!aIn || !bIn || !g.inputs.includes(aIn)) continue;
    const a = values.get(names.a)!;
    const b = values.get(names.b)!;
    const weight = site.weight;
    const join = branchJoin(site, bIn);
    if (!join) throw new Error(`internal: no LoRA branch after ${site.module}`);
    // A dynamo export reads the weight through a Transpose, which both paths may share.
    const readers = weight.uses.flatMap((u) =>
      u.node.opType === 'Transpose' ? [u.node, ...u.node.outputs[0].uses.map((t) => t.node)] : [u.node],
    );
    const shared = readers.some(isBasePath);
    if (shared) {
      // The base path reads this weight too: keep the branch, its tensors become constants.
      for (const [input, data] of [
        [aIn, a],
        [bIn, b],
      ] as const) {
        const shape = input.type!.shape as number[];
        g.inputs = g.inputs.filter((v) => v !== input);
        // Under `lora infer fp16` the input is cast where it is read: the baked values stay fp32.
        for (const u of [...input.uses])
          if (u.node.opType === 'Cast' && u.node.attrInt('to', 0) === DataType.FLOAT) {
            g.replaceAllUsesWith(u.node.outputs[0], input);
            g.removeNode(u.node);
          }
        input.type = { elemType: DataType.FLOAT, shape };
        input.initializer = tensorFromTyped(input.name, data, shape);
      }
      result.kept.push(site.module);
      continue;
    }
    const folded = foldInto(site, float32Of(weight), a, b, rank, scale);
    const baked = g.addInitializer(
      inlineTensor(g.freshName(`${weight.name}.baked`), DataType.FLOAT, [...weight.initializer!.dims], new Uint8Array(folded.buffer)),
    );
    // A dynamo export's MatMul reads the weight through a Transpose of its own.
    const reader = site.node.inputs[1] === weight ? site.node : site.node.inputs[1]!.producer!;
    g.setInput(reader, reader === site.node ? 1 : 0, baked);
    // The layer's readers read the layer output again; the branch is then dead.
    g.replaceAllUsesWith(join.outputs[0], site.output);
    result.folded.push(site.module);
  }
  g.eliminateDeadNodes();
  for (const v of [...g.inputs]) if (v.uses.length === 0 && isLoraParam(v.name)) g.deleteValue(v);
  return result;
}
