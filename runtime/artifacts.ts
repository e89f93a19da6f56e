/**
 * What the runtime needs from a compiled folder: the manifest, the training settings the spec
 * fixed (prediction type, prior weight, seed, learning rate, steps, checkpoint interval), and
 * onnxruntime tensors built to the dtypes and shapes the manifest describes.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../compiler/errors';
import {
  ArtifactDescription,
  ArtifactName,
  CompileManifest,
  MANIFEST_FILE,
  SAMPLE,
  TensorDescription,
  readManifest,
} from '../compiler/manifest';
import { FAMILIES, FamilyName, isFamilyName } from '../models/families';
import { fromFloat16, toFloat16 } from './float16';

/** The manifest of a compiled folder, validated, with a family this hollowc knows. */
export function loadManifest(out: string): CompileManifest {
  const manifest = readManifest(out);
  if (!isFamilyName(manifest.family))
    throw new HollowcError(`unknown model family ${JSON.stringify(manifest.family)} in the manifest`, out);
  return manifest;
}

/** Refuses an output path that is one of the files compile wrote into `out` (manifest, artifacts, weights). */
export function refuseOverwrite(out: string, manifest: CompileManifest, output: string, extra: readonly string[] = []): void {
  const own = [MANIFEST_FILE, ...manifest.weights, ...Object.values(manifest.artifacts).map((a) => a!.file), ...extra];
  const target = path.resolve(output);
  const hit = own.find((f) => path.resolve(out, f) === target);
  if (hit) throw new HollowcError(`would overwrite ${hit}, a file of the compiled folder ${out}: write somewhere else`, output);
}

export function familyOf(manifest: CompileManifest): FamilyName {
  return manifest.family as FamilyName;
}

export function requireArtifact(
  out: string,
  manifest: CompileManifest,
  name: ArtifactName,
  why: string,
): ArtifactDescription & { path: string } {
  const a = manifest.artifacts[name];
  if (!a)
    throw new HollowcError(
      `this folder has no ${name}.onnx, which ${why} needs (add \`${name}\` to the spec's emit line and compile again)`,
      out,
    );
  return { ...a, path: path.join(out, a.file) };
}

export type TensorValues = Float32Array | number[];

/** An onnxruntime tensor of the described input's dtype (float32, float64, float16, int64, int32). */
export function tensorFor(
  desc: Pick<Readonly<TensorDescription>, 'name' | 'dtype'> | undefined,
  values: TensorValues,
  dims: readonly number[],
): ort.Tensor {
  const dtype = desc?.dtype ?? 'float32';
  const count = dims.reduce((a, b) => a * b, 1);
  if (values.length !== count) throw new Error(`${desc?.name ?? 'tensor'}: ${values.length} values for shape [${dims}]`);
  switch (dtype) {
    case 'float32':
      return new ort.Tensor('float32', values instanceof Float32Array ? values : Float32Array.from(values), dims);
    case 'float64':
      return new ort.Tensor('float64', Float64Array.from(values), dims);
    case 'float16':
      return new ort.Tensor('float16', toFloat16(values), dims);
    case 'int64':
      return new ort.Tensor(
        'int64',
        BigInt64Array.from(values as ArrayLike<number>, (v) => BigInt(Math.round(v))),
        dims,
      );
    case 'int32':
      return new ort.Tensor(
        'int32',
        Int32Array.from(values as ArrayLike<number>, (v) => Math.round(v)),
        dims,
      );
    default:
      throw new HollowcError(`input ${desc?.name} has dtype ${dtype}; hollowc's runtime feeds float32, float64, float16, int32 or int64`);
  }
}

/** A scalar input (`lr`, `step`) in the rank the graph declares: [] or [1]. */
export function scalarFor(desc: TensorDescription | undefined, value: number): ort.Tensor {
  const dims = desc && desc.shape.length === 1 ? [1] : [];
  return tensorFor(desc, [value], dims);
}

/** Static dims of a described tensor, or an error naming the dynamic one. */
export function staticShape(desc: TensorDescription, label: string): number[] {
  const bad = desc.shape.find((d) => typeof d !== 'number');
  if (bad !== undefined)
    throw new HollowcError(
      `${desc.name} has a dynamic dimension (${String(bad)}); train.onnx needs static shapes (spec \`shape\` lines)`,
      label,
    );
  return desc.shape as number[];
}

export function float32Data(t: ort.Tensor, name: string): Float32Array {
  if (t.type !== 'float32') throw new HollowcError(`output ${name} is ${t.type}, expected float32`);
  return t.data as Float32Array;
}

/** An output's values as float32, converting float16 (fp16 exports) and float64. */
export function floatValues(t: ort.Tensor, name: string): Float32Array {
  if (t.type === 'float32') return t.data as Float32Array;
  if (t.type === 'float16') return t.data instanceof Uint16Array ? fromFloat16(t.data) : Float32Array.from(t.data as ArrayLike<number>);
  if (t.type === 'float64') return Float32Array.from(t.data as Float64Array);
  throw new HollowcError(`output ${name} is ${t.type}, expected a float tensor`);
}

/**
 * Latent shape [C, h, w] to sample at when none is given: train.onnx's static sample shape, else
 * the spec's `shape sample` line, else the family's default training shape.
 */
export function defaultLatentShape(manifest: CompileManifest): number[] {
  const fromTrain = manifest.artifacts.train?.inputs.find((i) => i.name === SAMPLE)?.shape.slice(1);
  if (fromTrain && fromTrain.length === 3 && fromTrain.every((d) => typeof d === 'number')) return fromTrain as number[];
  const declared = manifest.training.shapes[SAMPLE];
  if (declared && declared.length === 4) return declared.slice(1);
  return FAMILIES[familyOf(manifest)].full.shapes.sample.slice(1);
}
