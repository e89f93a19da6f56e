/**
 * Folds a LoRA into the weights of a plain UNet graph (unet/model.onnx): for every LoRA site the
 * LoRA has values for, W' = W + scale · B·A replaces the layer's weight initializer; the graph's
 * structure does not change. Only the targeted layers' weights are read, one at a time, and each
 * folded weight goes to `place` (which can stream it to a file) before the next is read, so no
 * full weight set is held: the untouched weights stay where they are (external data).
 */
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Graph, Tensor } from '../../compiler/ir';
import { narrowFloat32Bytes, widenFloat16Bytes } from '../../compiler/float16';
import { readTensorBytes } from '../../compiler/serde';
import { foldInto } from './bake-lora';
import { findLoraSites, loraShapes } from '../lib/lora-sites';

export interface LoraUpdate {
  a: { shape: number[]; data: Float32Array };
  b: { shape: number[]; data: Float32Array };
  /** alpha / rank */
  scale: number;
}

/** Where a folded weight goes: returns the tensor (inline, or a range of a data file) that replaces the old one. */
export type PlaceWeight = (name: string, dims: number[], bytes: Uint8Array) => Tensor;

export const inlineWeight: PlaceWeight = (name, dims, bytes) => ({ name, dataType: DataType.FLOAT, dims, data: { kind: 'inline', bytes } });

export function foldLoraWeights(
  g: Graph,
  lookup: (module: string) => LoraUpdate | undefined,
  place: PlaceWeight = inlineWeight,
): { folded: string[] } {
  const folded: string[] = [];
  for (const site of findLoraSites(g)) {
    const lora = lookup(site.module);
    if (!lora) continue;
    const rank = lora.a.shape[0];
    const want = loraShapes(site, rank);
    const same = (x: number[], y: number[]) => x.length === y.length && x.every((d, i) => d === y[i]);
    // linear LoRA of a 1x1 conv may come as [r, in] / [out, r]
    const flat = (s: number[]) => s.filter((d, i) => i < 2 || d !== 1);
    if (
      !(same(lora.a.shape, want.a) || same(flat(lora.a.shape), flat(want.a))) ||
      !(same(lora.b.shape, want.b) || same(flat(lora.b.shape), flat(want.b)))
    ) {
      throw new HollowcError(
        `${site.module}: LoRA shapes [${lora.a.shape}] / [${lora.b.shape}] do not fit the layer (expected [${want.a}] / [${want.b}])`,
      );
    }
    const weight = site.weight;
    const t = weight.initializer!;
    // a float16 export's weight is folded in float32 and stored float16 again, as the export runs it
    const half = t.dataType === DataType.FLOAT16;
    if (t.dataType !== DataType.FLOAT && !half) throw new HollowcError(`cannot fold LoRA into ${t.name}: it is not float32 or float16`);
    if (weight.uses.length !== 1) throw new HollowcError(`cannot fold LoRA into ${t.name}: ${weight.uses.length} nodes share it`);
    const bytes = half ? widenFloat16Bytes(readTensorBytes(t)) : readTensorBytes(t);
    const w = new Float32Array(new Uint8Array(bytes).buffer);
    const out = new Uint8Array(foldInto(site, w, lora.a.data, lora.b.data, rank, lora.scale).buffer);
    weight.initializer = { ...place(t.name, [...t.dims], half ? narrowFloat32Bytes(out) : out), dataType: t.dataType };
    folded.push(site.module);
  }
  return { folded };
}
