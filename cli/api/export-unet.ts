/**
 * `hollowc export-unet`: a fine-tuned UNet (`train base`, with any LoRA the run trained folded in)
 * for other tools, in either form:
 *
 * - diffusers: a UNet folder, `config.json` + `diffusion_pytorch_model.safetensors`, every
 *   parameter by its diffusers name in torch's layout, float32: what `UNet2DConditionModel.
 *   from_pretrained` loads.
 * - onnx: the source export's graph with the new weights, `model.onnx` + `model.onnx_data`, each
 *   weight stored as the export stored it (pre-transposed where it was); with a pipeline folder, a
 *   new pipeline folder whose `unet/` is this and whose other components are the given one's
 *   (hard links; copies across file systems), for `hollowc generate --model` and any onnxruntime app.
 *
 * A float16 source (optimum's `--dtype fp16`, `model build --dtype fp16`) trained in float32, as
 * compile widens it: the onnx form stores the changed weights rounded to float16 in the source's
 * layout (the frozen ones are its bytes), a float16 export like the user's; the diffusers form is
 * float32, the trained values exactly (`from_pretrained(..., torch_dtype=torch.float16)` rounds
 * them on load, as it does any float32 checkpoint, so a float16 file would only lose precision).
 *
 * Weights are streamed one at a time: the frozen ones from the source's files, the trained ones from
 * `trained-base.safetensors`; no form holds the whole model in memory. The output is built beside
 * and renamed into place, so a failed export leaves nothing that looks finished.
 */
import { sha256File } from '../../compiler/model-identity';
import * as fs from 'fs';
import * as path from 'path';
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { streamBytes } from '../../compiler/float16-data';
import { Model, TensorData } from '../../compiler/ir';
import { CompileManifest, readManifest } from '../../compiler/manifest';
import { loadModel, saveModel } from '../../compiler/serde';
import { writeFileAtomic } from '../../compiler/atomic-files';
import { narrowFloat32Bytes } from '../../compiler/float16';
import { BaseParameter, findBaseParameters, torchLayoutData } from '../../passes/lib/base-parameters';
import { widenFloat16 } from '../../passes/lib/widen-float16';
import { readLoraForManifest } from '../../runtime/formats/lora-file';
import { TRAINED_LORA_FILE } from '../../runtime/formats/lora-format';
import {
  IndexedTensor,
  StreamedTensor,
  readIndexedTensor,
  readSafetensorsIndex,
  writeSafetensorsStreamed,
} from '../../runtime/formats/safetensors-stream';
import { TRAINED_BASE_FILE } from '../../runtime/train/base-weights';

export type UnetExportFormat = 'diffusers' | 'onnx';
export const UNET_EXPORT_FORMATS: readonly UnetExportFormat[] = ['diffusers', 'onnx'];
/** diffusers' file names in a UNet folder. */
export const DIFFUSERS_WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors';
export const DIFFUSERS_CONFIG_FILE = 'config.json';

export interface ExportUnetOptions {
  /** The compiled folder a run trained in. */
  out: string;
  format: UnetExportFormat;
  /** The folder to write (replaced when it exists). */
  output: string;
  /** The source UNet (default: the manifest's), checked against the compiled one's sha256. */
  model?: string;
  /** diffusers: the UNet's config.json (default: the one beside the source model). */
  config?: string;
  /** onnx: a pipeline folder; the output is then a pipeline folder with this UNet. */
  pipeline?: string;
}

export interface ExportUnetResult {
  output: string;
  files: string[];
  /** Parameters that differ from the source: trained base weights, and weights LoRA was folded into. */
  changed: number;
  parameters: number;
}

function sourceModel(manifest: CompileManifest, asked: string | undefined, out: string): { file: string; model: Model } {
  const file = asked ?? manifest.model.file;
  if (!fs.existsSync(file))
    throw new HollowcError(`the compiled UNet is gone from ${file}: give its path with --model`, path.join(out, 'manifest.json'));
  if (sha256File(file) !== manifest.model.sha256)
    throw new HollowcError(`is not the UNet ${out} was compiled from (sha256 differs from the manifest's)`, file);
  return { file, model: loadModel(file) };
}

/** torch-layout float32 values of every parameter that changed: trained base weights, plus LoRA folded in. */
function changedValues(out: string, manifest: CompileManifest, params: readonly BaseParameter[]): Map<string, () => Float32Array> {
  const values = new Map<string, () => Float32Array>();
  const byName = new Map(params.map((p) => [p.name, p]));
  if (manifest.trainBase?.length) {
    const file = path.join(out, TRAINED_BASE_FILE);
    if (!fs.existsSync(file))
      throw new HollowcError(`no ${TRAINED_BASE_FILE}: train first (hollowc train writes it at the end of a run)`, out);
    const index = readSafetensorsIndex(file).tensors;
    for (const p of manifest.trainBase) {
      const t = index.get(p.name);
      if (!t || t.dtype !== 'F32' || t.shape.join() !== p.shape.join())
        throw new HollowcError(`${p.name} is missing or not float32 [${p.shape}]`, file);
      values.set(p.name, () => float32Of(file, t));
    }
  }
  const lora = manifest.lora.targets.filter((t) => t.trained);
  if (lora.length) {
    const file = path.join(out, TRAINED_LORA_FILE);
    if (!fs.existsSync(file)) throw new HollowcError(`no ${TRAINED_LORA_FILE}: train first`, out);
    const read = readLoraForManifest(file, manifest);
    for (const t of lora) {
      const name = `${t.module}.weight`;
      const p = byName.get(name);
      if (!p) throw new HollowcError(`LoRA target ${t.module} has no weight ${name} in the source UNet`, file);
      // the source's bytes, taken now: writeOnnx gives the initializer new data later
      const source = torchLayoutData(p);
      const base = values.get(name) ?? (() => float32OfData(p, source));
      const [a, b] = [read.get(t.lora_A.name)!, read.get(t.lora_B.name)!];
      values.set(name, () => foldLora(base(), p.shape, a, b, t.lora_B.shape[0], t.lora_A.shape[0], manifest.lora.scale));
    }
  }
  return values;
}

function float32Of(file: string, t: IndexedTensor): Float32Array {
  const bytes = readIndexedTensor(file, t);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** A parameter's source value in torch's layout (`data`: torchLayoutData of it). */
function float32OfData(p: BaseParameter, data: TensorData): Float32Array {
  const n = p.shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(4 * n);
  let at = 0;
  streamBytes(p.name, data, (chunk) => {
    out.set(chunk, at);
    at += chunk.byteLength;
  });
  return new Float32Array(out.buffer);
}

/** W + scale·B·A for W [out, in(, kh, kw)], A [r, in(, kh, kw)], B [out, r(, 1, 1)]: the layer with its LoRA in it. */
export function foldLora(
  w: Float32Array,
  shape: readonly number[],
  a: Float32Array,
  b: Float32Array,
  out: number,
  rank: number,
  scale: number,
): Float32Array {
  const perOut = w.length / out;
  const folded = Float32Array.from(w);
  for (let o = 0; o < out; o++)
    for (let r = 0; r < rank; r++) {
      const k = scale * b[o * rank + r];
      if (k === 0) continue;
      for (let i = 0; i < perOut; i++) folded[o * perOut + i] += k * a[r * perOut + i];
    }
  if (perOut * out !== shape.reduce((x, y) => x * y, 1)) throw new Error('internal: LoRA fold shapes');
  return folded;
}

/** The stored layout's float32 bytes of torch-layout `value` (transposed back where the export stores [in, out]). */
function storedBytes(p: BaseParameter, value: Float32Array): Uint8Array {
  if (p.layout !== 'transposed') return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  const [rows, cols] = p.shape;
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = value[r * cols + c];
  return new Uint8Array(t.buffer);
}

/** Builds `output` in a temporary sibling and renames it into place. */
function writeFolder(output: string, build: (dir: string) => string[]): string[] {
  const parent = path.dirname(path.resolve(output));
  fs.mkdirSync(parent, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(parent, `.${path.basename(output)}.hollowc-`));
  try {
    const files = build(tmp);
    fs.rmSync(output, { recursive: true, force: true });
    fs.renameSync(tmp, output);
    return files;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

export function exportUnet(options: ExportUnetOptions): ExportUnetResult {
  const manifest = readManifest(options.out);
  if (!manifest.trainBase?.length && !manifest.lora.targets.some((t) => t.trained))
    throw new HollowcError('this folder trains neither base weights nor LoRA: nothing to export', options.out);
  const { file, model } = sourceModel(manifest, options.model, options.out);
  // As the source stores them (float32 or float16), and as float32 (a float16 export widened as
  // compile widens it, no weight read): values are computed on the second, written into the first.
  const stored = findBaseParameters(model.graph);
  const other = stored.find((p) => p.value.initializer!.dataType !== DataType.FLOAT && p.value.initializer!.dataType !== DataType.FLOAT16);
  if (other)
    throw new HollowcError(
      `${other.name} is stored as type ${other.value.initializer!.dataType}: export-unet writes float32 and float16 UNets only`,
      file,
    );
  const widened = widenFloat16(model);
  const params = widened ? findBaseParameters(widened.model.graph) : stored;
  const changed = changedValues(options.out, manifest, params);
  const files =
    options.format === 'diffusers'
      ? writeFolder(options.output, (dir) =>
          writeDiffusers(dir, params, changed, options.config ?? path.join(path.dirname(file), DIFFUSERS_CONFIG_FILE)),
        )
      : writeFolder(options.output, (dir) => writeOnnx(dir, model, stored, changed, options.pipeline));
  return { output: options.output, files, changed: changed.size, parameters: params.length };
}

function writeDiffusers(dir: string, params: readonly BaseParameter[], changed: Map<string, () => Float32Array>, config: string): string[] {
  if (!fs.existsSync(config))
    throw new HollowcError("no diffusers config.json for the UNet (a diffusers export's unet/config.json): give it with --config", config);
  const tensors = new Map<string, StreamedTensor>(
    params.map((p) => [
      p.name,
      {
        dtype: 'F32',
        shape: [...p.shape],
        produce: (write) => {
          const value = changed.get(p.name);
          if (value) {
            const v = value();
            write(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
          } else streamBytes(p.name, torchLayoutData(p), write);
        },
      },
    ]),
  );
  writeSafetensorsStreamed(path.join(dir, DIFFUSERS_WEIGHTS_FILE), tensors, { format: 'pt' });
  writeFileAtomic(path.join(dir, DIFFUSERS_CONFIG_FILE), fs.readFileSync(config));
  return [DIFFUSERS_WEIGHTS_FILE, DIFFUSERS_CONFIG_FILE];
}

function writeOnnx(
  dir: string,
  model: Model,
  params: readonly BaseParameter[],
  changed: Map<string, () => Float32Array>,
  pipeline?: string,
): string[] {
  let unetDir = dir;
  const files: string[] = [];
  if (pipeline) {
    if (!fs.existsSync(path.join(pipeline, 'model_index.json')))
      throw new HollowcError('not a pipeline folder (no model_index.json)', pipeline);
    linkTree(pipeline, dir, (rel) => rel !== 'unet', files);
    unetDir = path.join(dir, 'unet');
    fs.mkdirSync(unetDir);
  }
  for (const p of params) {
    const value = changed.get(p.name);
    if (!value) continue;
    const half = p.value.initializer!.dataType === DataType.FLOAT16;
    const data: TensorData = {
      kind: 'computed',
      key: `export:${p.name}`,
      length: (half ? 2 : 4) * p.shape.reduce((a, b) => a * b, 1),
      // float16: rounded to nearest even, as torch's .half() rounds
      produce: (write) => write(half ? narrowFloat32Bytes(storedBytes(p, value())) : storedBytes(p, value())),
    };
    // a new tensor: the old one's data stays what the values above read
    p.value.initializer = { ...p.value.initializer!, data };
  }
  saveModel(model, path.join(unetDir, 'model.onnx'), { externalData: 'model.onnx_data' });
  const prefix = pipeline ? 'unet/' : '';
  files.push(`${prefix}model.onnx`, `${prefix}model.onnx_data`);
  const config = pipeline ? path.join(pipeline, 'unet', DIFFUSERS_CONFIG_FILE) : undefined;
  if (config && fs.existsSync(config)) {
    linkOrCopy(config, path.join(unetDir, DIFFUSERS_CONFIG_FILE));
    files.push(`${prefix}${DIFFUSERS_CONFIG_FILE}`);
  }
  return files;
}

/** Hard-links `from`'s files into `to`, skipping top-level entries `keep` refuses. */
function linkTree(from: string, to: string, keep: (rel: string) => boolean, files: string[], rel = ''): void {
  for (const entry of fs.readdirSync(path.join(from, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${entry.name}` : entry.name;
    if (!rel && !keep(r)) continue;
    if (entry.isDirectory()) {
      fs.mkdirSync(path.join(to, r), { recursive: true });
      linkTree(from, to, keep, files, r);
    } else {
      linkOrCopy(path.join(from, r), path.join(to, r));
      files.push(r);
    }
  }
}

/** A hard link, or a copy where the output is on another file system (a personalize run folder on another disk than the model). */
function linkOrCopy(from: string, to: string): void {
  try {
    fs.linkSync(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    fs.copyFileSync(from, to);
  }
}
