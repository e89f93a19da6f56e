/**
 * A UNet as every command takes it: a UNet .onnx, a UNet folder holding model.onnx, or a pipeline
 * folder (its unet/model.onnx); the graph loaded (weights stay in their files) and analysed once.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { Model } from '../../compiler/ir';
import { loadModel } from '../../compiler/serde';
import { UNetAnalysis, analyzeUNet } from '../../passes/lib/analyze-unet';

export interface LoadedUNet {
  /** The UNet's .onnx file (a folder given resolved to it). */
  file: string;
  model: Model;
  analysis: UNetAnalysis;
}

/** The UNet graph file a path names: the path itself, or a folder's model.onnx or unet/model.onnx. */
export function unetModelFile(where: string): string {
  if (!fs.existsSync(where) || !fs.statSync(where).isDirectory()) return where;
  const inPipeline = path.join(where, 'unet', 'model.onnx');
  const own = path.join(where, 'model.onnx');
  if (fs.existsSync(inPipeline)) return inPipeline;
  if (fs.existsSync(own)) return own;
  throw new HollowcError(
    fs.existsSync(path.join(where, 'model_index.json'))
      ? 'pipeline folder has no unet/model.onnx'
      : 'a folder with neither unet/model.onnx (a pipeline folder) nor model.onnx (a UNet folder): give the UNet .onnx file',
    where,
  );
}

export function loadUNet(where: string): LoadedUNet {
  const file = unetModelFile(where);
  const model = loadModel(file);
  return { file, model, analysis: analyzeUNet(model.graph, file) };
}
