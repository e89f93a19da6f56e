/** `hollowc bake` as a function: a trained LoRA folded into a compiled folder's infer.onnx. */
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { withFolderLock } from '../../compiler/folder-lock';
import { readManifest } from '../../compiler/manifest';
import { loadModel, saveModel } from '../../compiler/serde';
import { bakeLora } from '../../passes/fold/bake-lora';
import { widenStoredFloat16 } from '../../passes/lib/widen-float16';
import { storeFloat16 } from '../../passes/precision/float16-weights';
import { readLoraForManifest } from '../../runtime/formats/lora-file';

export interface BakeResult {
  file: string;
  folded: number;
  kept: number;
}

export function bakeCompiled(out: string, loraFile: string, output?: string): BakeResult {
  return withFolderLock(out, 'hollowc bake', () => bakeUnlocked(out, loraFile, output));
}

function bakeUnlocked(out: string, loraFile: string, output?: string): BakeResult {
  const manifest = readManifest(out);
  if (!manifest.artifacts.infer)
    throw new HollowcError("this folder has no infer.onnx to bake into (add `infer` to the spec's emit line)", out);
  const values = readLoraForManifest(loraFile, manifest);
  const model = loadModel(path.join(out, manifest.artifacts.infer.file));
  // float16 weights cast at each use (a float16 export): seen as float32 weights while baking, stored
  // as they were after; the folded layers' new weights are float32
  const float16 = widenStoredFloat16(model.graph);
  const result = bakeLora(model.graph, values, manifest.lora.rank, manifest.lora.scale);
  if (float16) storeFloat16(model.graph, { float16Io: [], round: false });
  const file = output ?? path.join(out, 'infer-baked.onnx');
  if (path.resolve(path.dirname(file)) !== path.resolve(out))
    throw new HollowcError('the baked model must be written into the compiled folder, next to the weights it references', file);
  saveModel(model, file, { externalData: `${path.basename(file)}_data`, referenceInPlace: true });
  return { file, folded: result.folded.length, kept: result.kept.length };
}
