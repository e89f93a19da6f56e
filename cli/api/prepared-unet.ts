/**
 * `generate --model`: the pipeline's UNet graph as this run executes it, written where onnxruntime
 * can load it without copying the base weights: with a LoRA (`--lora file`) folded into the
 * weights it targets (passes/fold/fold-lora.ts), and its large attention maps computed in blocks of
 * query rows at the run's shapes (passes/memory/chunk-attention.ts, as precompute.onnx and infer.onnx
 * have them; at 512 px with guidance the outer self-attention maps of full SD are 5 x 4096 x 4096
 * per image, 640 MiB at batch 2).
 *
 * onnxruntime refuses external data outside the model's folder, links included, so the new graph
 * goes to a temporary folder holding hard links to the original data files (plus one new data
 * file with the folded weights). Where hard links cannot be made (another file system) the
 * temporary graph and data file are written next to the original model instead. Either way the
 * files are removed by `cleanup()`.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DataType } from '../../compiler/dtype';
import { ExternalDataWriter } from '../../compiler/external-data';
import { HollowcError } from '../../compiler/errors';
import { Model } from '../../compiler/ir';
import { loadModel, saveModel } from '../../compiler/serde';
import { chunkAttention } from '../../passes/memory/chunk-attention';
import { foldLoraWeights } from '../../passes/fold/fold-lora';
import { readUnetLora } from '../../runtime/formats/lora-file';

export interface PreparedUnet {
  model: string;
  /** With a LoRA: the layers it was folded into, its format, the text-encoder layers it ignored. */
  lora?: { folded: string[]; format: string; ignored: number };
  /** Attention maps computed in blocks of query rows, and the blocks. */
  attention: { chunked: number; blocks: number };
  cleanup(): void;
}

/** The run's UNet evaluation: images per call (with guidance, twice the prompts), latent channels and size. */
export interface UnetRunShape {
  batch: number;
  channels: number;
  height: number;
  width: number;
}

/**
 * The shape of every UNet input at `run`: a declared size stays, a free one is the batch (axis 0),
 * the latent channels, height and width (the sample's axes 1 to 3: torch's exports name all four)
 * or the CLIP sequence (77). An input with a free axis none of these names gives the reason no map
 * can be designed (then none is chunked, and generate says so).
 */
export function unetInputShapes(model: Model, run: UnetRunShape): { shapes: Record<string, number[]> } | { reason: string } {
  const shapes: Record<string, number[]> = {};
  for (const v of model.graph.inputs) {
    if (v.initializer) continue;
    const dims = v.type?.shape;
    if (!dims) return { reason: `input ${v.name} declares no shape` };
    const spatial = dims.length === 4;
    const shape = dims.map((d, i) => {
      if (typeof d === 'number') return d;
      if (i === 0) return run.batch;
      if (spatial) return [undefined, run.channels, run.height, run.width][i];
      if (dims.length === 3 && i === 1) return 77;
      return undefined;
    });
    const free = shape.findIndex((d) => d === undefined);
    if (free >= 0) return { reason: `input ${v.name} has a free axis ${free} (${String(dims[free])}) hollowc cannot size` };
    shapes[v.name] = shape as number[];
  }
  return { shapes };
}

function linkDataFiles(files: Set<string>, modelDir: string, into: string): Map<string, string> | undefined {
  const links = new Map<string, string>();
  for (const file of files) {
    const rel = path.relative(modelDir, file);
    const link = path.join(into, rel);
    fs.mkdirSync(path.dirname(link), { recursive: true });
    try {
      fs.linkSync(file, link);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EXDEV' || code === 'EPERM' || code === 'EMLINK' || code === 'ENOTSUP') return undefined;
      throw e;
    }
    links.set(file, link);
  }
  return links;
}

/**
 * The UNet of `unetModel` prepared for a run: the LoRA of `loraFile` folded in, attention chunked at
 * `run`'s shapes (`chunkBytes` per block of a map, default chunk-attention's). Undefined when
 * neither changes the graph (the original file is used as it is).
 */
export function prepareUnet(
  unetModel: string,
  options: { loraFile?: string; run?: UnetRunShape; chunkBytes?: number; warn?: (line: string) => void },
): PreparedUnet | undefined {
  const { loraFile, run } = options;
  const lora = loraFile ? readUnetLora(loraFile) : undefined;
  const model = loadModel(unetModel);
  const sized = run ? unetInputShapes(model, run) : undefined;
  if (sized && 'reason' in sized)
    options.warn?.(`${unetModel}: ${sized.reason}: its attention maps run whole (more memory)`);
  const attention = sized && 'shapes' in sized ? chunkAttention(model, sized.shapes, options.chunkBytes) : { chunked: 0, blocks: 0 };
  if (!lora && attention.chunked === 0) return undefined;
  const modelDir = fs.realpathSync(path.dirname(path.resolve(unetModel)));
  const dataFiles = new Set<string>();
  for (const v of model.graph.initializers())
    if (v.initializer!.data.kind === 'external') dataFiles.add((v.initializer!.data as { file: string }).file);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-unet-'));
  let dir = tmp;
  let stem = 'model';
  const links = linkDataFiles(dataFiles, modelDir, tmp);
  if (!links) {
    // no hard links here: the temporary files go next to the model
    dir = modelDir;
    stem = `.hollowc-unet-${process.pid}-${Date.now()}`;
  }
  const graphFile = path.join(dir, `${stem}.onnx`);
  const dataFile = path.join(dir, `${stem}.lora.onnx_data`);
  const cleanup = () => {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (dir !== tmp) for (const f of [graphFile, dataFile]) fs.rmSync(f, { force: true });
  };
  try {
    let folded: PreparedUnet['lora'];
    if (lora) {
      const writer = new ExternalDataWriter(dataFile);
      try {
        const r = foldLoraWeights(
          model.graph,
          (m) => lora.lookup(m),
          (name, dims, bytes) => {
            const at = writer.appendStream((write) => write(bytes));
            return {
              name,
              dataType: DataType.FLOAT,
              dims,
              data: { kind: 'external', file: dataFile, offset: at.offset, length: at.length },
            };
          },
        );
        writer.commit();
        folded = { folded: r.folded, format: lora.format, ignored: lora.ignored };
      } catch (e) {
        writer.abort();
        throw e;
      }
      const unused = lora.unused();
      if (unused.length) {
        throw new HollowcError(
          `${unused.length} LoRA layer(s) match no Linear or Conv layer of this UNet, e.g. ${unused.slice(0, 3).join(', ')} (a LoRA for another model?)`,
          loraFile,
        );
      }
    }
    if (links) {
      for (const v of model.graph.initializers()) {
        const d = v.initializer!.data;
        if (d.kind === 'external' && links.has(d.file)) v.initializer!.data = { ...d, file: links.get(d.file)! };
      }
    }
    saveModel(model, graphFile, { externalData: 'inline', referenceInPlace: true });
    return { model: graphFile, lora: folded, attention, cleanup };
  } catch (e) {
    cleanup();
    throw e;
  }
}
