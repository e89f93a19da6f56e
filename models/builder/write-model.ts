/**
 * Writes one built model as `<dir>/model.onnx` + `model.onnx_data`: weights are streamed into
 * the data file while the graph is built (StreamingWeightSink), then the graph file references
 * those ranges in place. Shared by the UNet, text encoder, VAE and pipeline builders.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Model } from '../../compiler/ir';
import { saveModel } from '../../compiler/serde';
import { StreamingWeightSink, WeightSink, normalizeSeed } from './weights';

export interface WrittenModel {
  readonly file: string;
  readonly dataFile: string;
  readonly parameterCount: number;
  /** bytes of weights written (external data plus the few inline ones) */
  readonly weightBytes: number;
  readonly seconds: number;
}

export interface WriteModelOptions {
  readonly outDir: string;
  readonly seed?: number;
  /** graph file name (default `model.onnx`); weights go to `<fileName>_data` */
  readonly fileName?: string;
  /** extra metadata_props (the config that made the model, for instance) */
  readonly metadata?: Readonly<Record<string, string>>;
}

export function writeBuiltModel(
  options: WriteModelOptions,
  build: (sink: WeightSink) => { model: Model; parameterCount: number },
): WrittenModel {
  const started = process.hrtime.bigint();
  const seed = normalizeSeed(options.seed);
  fs.mkdirSync(options.outDir, { recursive: true });
  const file = path.resolve(options.outDir, options.fileName ?? 'model.onnx');
  const dataFile = `${file}_data`;
  const sink = new StreamingWeightSink(dataFile, seed);
  let built: { model: Model; parameterCount: number };
  try {
    built = build(sink);
    sink.finish();
  } catch (e) {
    sink.abort();
    throw e;
  }
  built.model.metadataProps = [
    { key: 'hollowc.builder', value: JSON.stringify({ seed, weights: 'xoshiro128** uniform, per-parameter streams' }) },
    ...Object.entries(options.metadata ?? {}).map(([key, value]) => ({ key, value })),
  ];
  saveModel(built.model, file, { externalData: 'inline', referenceInPlace: true });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { file, dataFile, parameterCount: built.parameterCount, weightBytes: sink.bytes, seconds };
}
