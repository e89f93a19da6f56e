/**
 * `generate --model ... --lora file`: a UNet graph with a LoRA folded into the weights it targets
 * (passes/fold-lora.ts), written where onnxruntime can load it without copying the base weights.
 *
 * onnxruntime refuses external data outside the model's folder, links included, so the folded
 * graph goes to a temporary folder holding hard links to the original data files plus one new
 * data file with the folded weights. Where hard links cannot be made (another file system) the
 * temporary graph and data file are written next to the original model instead. Either way the
 * files are removed by `cleanup()`.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DataType } from '../compiler/dtype';
import { ExternalDataWriter } from '../compiler/external-data';
import { HollowcError } from '../compiler/errors';
import { loadModel, saveModel } from '../compiler/serde';
import { foldLoraWeights } from '../passes/fold-lora';
import { readUnetLora } from '../runtime/formats/lora-file';

export interface FoldedUnet {
  model: string;
  folded: string[];
  format: string;
  ignored: number;
  cleanup(): void;
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

export function foldLoraIntoUnet(unetModel: string, loraFile: string): FoldedUnet {
  const lora = readUnetLora(loraFile);
  const model = loadModel(unetModel);
  const modelDir = fs.realpathSync(path.dirname(path.resolve(unetModel)));
  const dataFiles = new Set<string>();
  for (const v of model.graph.initializers())
    if (v.initializer!.data.kind === 'external') dataFiles.add((v.initializer!.data as { file: string }).file);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hollowc-lora-unet-'));
  let dir = tmp;
  let stem = 'model';
  const links = linkDataFiles(dataFiles, modelDir, tmp);
  if (!links) {
    // no hard links here: the temporary files go next to the model
    dir = modelDir;
    stem = `.hollowc-lora-${process.pid}-${Date.now()}`;
  }
  const graphFile = path.join(dir, `${stem}.onnx`);
  const dataFile = path.join(dir, `${stem}.lora.onnx_data`);
  const cleanup = () => {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (dir !== tmp) for (const f of [graphFile, dataFile]) fs.rmSync(f, { force: true });
  };
  try {
    const writer = new ExternalDataWriter(dataFile);
    let folded: string[];
    try {
      ({ folded } = foldLoraWeights(
        model.graph,
        (m) => lora.lookup(m),
        (name, dims, bytes) => {
          const at = writer.appendStream((write) => write(bytes));
          return { name, dataType: DataType.FLOAT, dims, data: { kind: 'external', file: dataFile, offset: at.offset, length: at.length } };
        },
      ));
      writer.commit();
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
    if (links) {
      for (const v of model.graph.initializers()) {
        const d = v.initializer!.data;
        if (d.kind === 'external' && links.has(d.file)) v.initializer!.data = { ...d, file: links.get(d.file)! };
      }
    }
    saveModel(model, graphFile, { externalData: 'inline', referenceInPlace: true });
    return { model: graphFile, folded, format: lora.format, ignored: lora.ignored, cleanup };
  } catch (e) {
    cleanup();
    throw e;
  }
}
