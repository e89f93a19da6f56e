// Builder of SD-shaped ONNX UNets with seeded random weights (see unet.ts).
export { buildUNet, buildUNetGraph, describeUNet, unetSignature, textEmbedsDim, normalizeSeed, OPSET, IR_VERSION } from './unet';
export type { BuildUNetOptions, BuildUNetResult, BuiltGraph, UNetSignature } from './unet';
export type { ParameterRecord, ParameterLayout, WeightSink } from './weights';
export { StreamingWeightSink, VirtualWeightSink } from './weights';
export { Rng, hashString } from '../random';
export { timestepFrequencies } from './embeddings';
