/**
 * The contract of a graph-training folder (passes/compile-graph.ts writes it, runtime/train/
 * graph-train.ts reads it): the gradients graph of any built model (a VAE as an autoencoder),
 * its parameters' initial values, and the inference graphs the trained values go back into.
 *
 *   graph-training.json   this manifest
 *   grads.onnx            data inputs + every parameter -> loss, its terms, `<param>.grad`
 *   weights.onnx_data     the parameters' values before training, torch's layout, float32
 *   <export>.onnx         an inference graph (vae_encoder, vae_decoder) whose parameters are inputs
 *
 * It reuses compile's types (compiler/manifest.ts: artifact and tensor descriptions, a trained
 * parameter with its initial range, the AdamW constants); it is its own file only because
 * manifest.ts was being changed when it was written, and belongs there.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from './errors';
import { ArtifactDescription, TensorDescription, TrainedBaseParameter, TrainingSettings } from './manifest';

export const GRAPH_MANIFEST_FILE = 'graph-training.json';
export const GRAPH_MANIFEST_FORMAT = 'graph-training/1';
export const GRAPH_GRADS_FILE = 'grads.onnx';

export interface GraphExport {
  /** The graph file in the folder, `<name>.onnx`. */
  file: string;
  /** Its parameter inputs, each one of the manifest's parameters. */
  parameters: string[];
  /** ONNX metadata the written model keeps (the config that made it). */
  metadata?: Record<string, string>;
}

export interface GraphTrainingManifest {
  hollowc: typeof GRAPH_MANIFEST_FORMAT;
  /** What the graph was built from, for people. */
  source: string;
  grads: ArtifactDescription;
  /** The inputs a step feeds besides the parameters. */
  data: TensorDescription[];
  /** The loss outputs of grads.onnx: the loss first, then its terms, each with its weight in the loss. */
  losses: { name: string; weight: number }[];
  parameters: TrainedBaseParameter[];
  exports: Record<string, GraphExport>;
  optimizer: TrainingSettings['optimizer'];
}

function problem(m: Partial<GraphTrainingManifest>): string | undefined {
  if (m.hollowc !== GRAPH_MANIFEST_FORMAT) return `format ${JSON.stringify(m.hollowc)}, expected ${JSON.stringify(GRAPH_MANIFEST_FORMAT)}`;
  if (!m.grads || typeof m.grads.file !== 'string') return 'field "grads" is missing';
  if (!Array.isArray(m.data) || !Array.isArray(m.losses) || m.losses.length === 0) return 'field "data" or "losses" is missing';
  if (!Array.isArray(m.parameters) || m.parameters.length === 0) return 'field "parameters" is missing or empty';
  for (const p of m.parameters) {
    if (typeof p?.name !== 'string' || !Array.isArray(p.shape) || typeof p.init?.file !== 'string' || typeof p.init.offset !== 'number')
      return `parameter ${JSON.stringify(p?.name)} lacks name, shape or init`;
    if (path.isAbsolute(p.init.file) || p.init.file.split(/[\\/]/).includes('..'))
      return `parameter ${p.name} points outside the folder (${p.init.file})`;
  }
  const names = new Set(m.parameters.map((p) => p.name));
  for (const [name, e] of Object.entries(m.exports ?? {})) {
    if (typeof e?.file !== 'string' || !Array.isArray(e.parameters)) return `export ${name} lacks file or parameters`;
    const unknown = e.parameters.find((p) => !names.has(p));
    if (unknown) return `export ${name} reads parameter ${unknown}, which the folder does not train`;
  }
  const o = m.optimizer;
  if (!o || !Array.isArray(o.betas) || typeof o.eps !== 'number' || typeof o.weightDecay !== 'number')
    return 'field "optimizer" is missing';
  return undefined;
}

/** Reads and checks `<dir>/graph-training.json`; every problem is one HollowcError naming the file. */
export function readGraphTrainingManifest(dir: string): GraphTrainingManifest {
  const file = path.join(dir, GRAPH_MANIFEST_FILE);
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new HollowcError(code ? `not a graph-training folder (${code}); compile one first` : `not JSON: ${(e as Error).message}`, file);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new HollowcError('manifest is not a JSON object', file);
  const why = problem(parsed as Partial<GraphTrainingManifest>);
  if (why) throw new HollowcError(`bad graph-training manifest: ${why}`, file);
  return parsed as GraphTrainingManifest;
}
