/** A UNet as every command takes it: the graph loaded (weights stay in their files) and analysed once. */
import { Model } from '../compiler/ir';
import { loadModel } from '../compiler/serde';
import { UNetAnalysis, analyzeUNet } from '../passes/lib/analyze-unet';

export interface LoadedUNet {
  file: string;
  model: Model;
  analysis: UNetAnalysis;
}

export function loadUNet(file: string): LoadedUNet {
  const model = loadModel(file);
  return { file, model, analysis: analyzeUNet(model.graph, file) };
}
