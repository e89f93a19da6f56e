/** Plan requests over full-size UNet graphs (no weights read) for the plan tests. */
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { Model } from '../../compiler/ir';
import { loadModel } from '../../compiler/serde';
import { FAMILIES, FamilyName } from '../../models/families';
import { describeUNet } from '../../models/builder/unet';
import { defaultTrainingSettings } from '../../models/training-defaults';
import { analyzeUNet } from '../../passes/lib/analyze-unet';
import { findLoraSites } from '../../passes/lib/lora-sites';
import { PlanRequest } from '../../passes/plan/plan';
import { recordLayout } from '../../runtime/store/store-format';
import { tempDir } from './fixture';

/** The bench's LoRA targets: attn1/attn2 q, k, v, out.0. */
const ATTENTION = /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$/;

const REAL_EXPORTS = path.join(__dirname, '..', 'fixtures', 'real-exports');

/**
 * The graph of a full-size torch 1.13 export (tests/fixtures/real-exports, PROVENANCE.md) in a
 * temporary folder, beside a sparse file of its external data's size: the graph is the real one,
 * the weights (never read by plan) are holes.
 */
export function realExportGraph(name: 'sd21-opset14' | 'sd15-opset17'): string {
  const index = JSON.parse(fs.readFileSync(path.join(REAL_EXPORTS, 'exports.json'), 'utf8')) as Record<
    string,
    { dataFile: string; dataBytes: number }
  >;
  const entry = index[`${name}.onnx.gz`];
  const dir = tempDir(`hollowc-real-${name}-`);
  const file = path.join(dir, 'model.onnx');
  fs.writeFileSync(file, zlib.gunzipSync(fs.readFileSync(path.join(REAL_EXPORTS, `${name}.onnx.gz`))));
  fs.closeSync(fs.openSync(path.join(dir, entry.dataFile), 'w'));
  fs.truncateSync(path.join(dir, entry.dataFile), entry.dataBytes);
  return file;
}

/** The builder's full-size UNet of `family`, as a graph without weights. */
export function builderGraph(family: FamilyName): Model {
  return describeUNet(FAMILIES[family].full.config).model;
}

/** Shapes of one training sample at `side` x `side` latents with the family's conditioning. */
function shapesFor(family: FamilyName, side: number, width: number): Record<string, number[]> {
  const shapes: Record<string, number[]> = { sample: [1, 4, side, side], timestep: [1], encoder_hidden_states: [1, 77, width] };
  return family === 'sdxl' ? { ...shapes, text_embeds: [1, 1280], time_ids: [1, 6] } : shapes;
}

/** A plan request as the bench's rows compile them: LoRA r128 on the attention projections, 200 samples. */
export function fullSizeRequest(family: FamilyName, side: number, model: Model | string): PlanRequest {
  const graph = typeof model === 'string' ? loadModel(model) : model;
  const file = typeof model === 'string' ? model : `${family}-full`;
  const declared = graph.graph.inputs.find((v) => v.name === 'encoder_hidden_states')?.type?.shape?.[2];
  const width = typeof declared === 'number' ? declared : Number(FAMILIES[family].full.config.cross_attention_dim);
  const targets = findLoraSites(graph.graph)
    .map((s) => s.module)
    .filter((m) => ATTENTION.test(m));
  return {
    unet: { file, model: graph, analysis: analyzeUNet(graph.graph, file) },
    targets,
    lora: { rank: 128, alpha: 128 },
    training: { ...defaultTrainingSettings(family), shapes: shapesFor(family, side, width) },
    samples: 200,
    steps: 1000,
    storeRecordBytes: (latent, activation) => recordLayout(latent, activation).recordBytes,
  };
}
