// Builder of SD-shaped ONNX UNets with seeded random weights (see unet.ts).
export { buildUNet, buildUNetGraph, describeUNet, unetSignature, textEmbedsDim, OPSET, IR_VERSION } from './unet';
export { normalizeSeed } from './weights';
export type { BuildUNetOptions, BuildUNetResult, BuiltGraph, UNetSignature } from './unet';
export type { ParameterRecord, ParameterLayout, WeightSink } from './weights';
export { StreamingWeightSink, VirtualWeightSink } from './weights';
export { Rng, hashString } from '../random';
export { timestepFrequencies } from './embeddings';
export { buildClipText, buildClipTextGraph, describeClipText } from './clip-text';
export type { BuiltTextEncoder, ClipTextBuildOptions } from './clip-text';
export { buildAutoencoder, buildAutoencoderGraph, buildVae, buildVaeGraph, describeVae, LATENT_NOISE, RECONSTRUCTION, VAE_PARTS } from './vae';
export type { BuiltVae, VaePart } from './vae';
export { writeBuiltModel } from './write-model';
export type { WriteModelOptions, WrittenModel } from './write-model';
export { buildPipeline } from './pipeline';
export type { BuildPipelineOptions, BuildPipelineResult, PipelineComponentResult } from './pipeline';
