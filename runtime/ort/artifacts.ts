/**
 * What the runtime needs from a compiled folder: the manifest, the training settings the spec
 * fixed (prediction type, prior weight, seed, learning rate, steps, checkpoint interval), and
 * onnxruntime tensors built to the dtypes and shapes the manifest describes.
 */
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { HollowcError } from '../../compiler/errors';
import {
  ArtifactDescription,
  ArtifactName,
  CompileManifest,
  MANIFEST_FILE,
  SAMPLE,
  TensorDescription,
  readManifest,
} from '../../compiler/manifest';
import { FAMILIES, FamilyName, isFamilyName } from '../../models/families';
import { TensorValues, feedData, scalarDims } from './feed-data';
import { fromFloat16 } from '../formats/float16';

export type { TensorValues };

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

/** An onnxruntime tensor of the described input's dtype (float32, float64, float16, int64, int32). */
export function tensorFor(
  desc: Pick<Readonly<TensorDescription>, 'name' | 'dtype'> | undefined,
  values: TensorValues,
  dims: readonly number[],
): ort.Tensor {
  const { type, data } = feedData(desc, values, dims);
  return new ort.Tensor(type, data, dims);
}

/**
 * The timestep feed for one t per row, in the rank the graph declares: [rows], or 0-d (optimum
 * >= 1.24 exports) when every row has the same t.
 */
export function timestepFor(
  desc: Pick<Readonly<TensorDescription>, 'name' | 'dtype' | 'shape'> | undefined,
  values: number[],
): ort.Tensor {
  if (desc?.shape.length !== 0) return tensorFor(desc, values, [values.length]);
  if (values.some((t) => t !== values[0]))
    throw new HollowcError(
      `this graph takes one 0-d timestep for the whole batch, but the rows have different timesteps (${values.join(', ')})`,
    );
  return tensorFor(desc, [values[0]], []);
}

/** A scalar input (`lr`, `step`) in the rank the graph declares: [] or [1]. */
export function scalarFor(desc: TensorDescription | undefined, value: number): ort.Tensor {
  return tensorFor(desc, [value], scalarDims(desc));
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
