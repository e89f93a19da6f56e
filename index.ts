/**
 * hollowc as a library: every step the CLI runs, callable from code. The CLI (cli/) is a thin
 * layer over these; see the README's "Library" section for a worked example.
 */
// Inspect and compile
export { loadUNet, checkSpecFile, compileSpec, compileFromSpec, bakeCompiled } from './cli/compile';
export type { LoadedUNet, CheckedSpec, CompileCliOptions } from './cli/compile';
export { inspectJson, inspectText } from './cli/inspect';
export { analyzeUNet } from './passes/lib/analyze-unet';
export type { UNetAnalysis, CutInfo } from './passes/lib/analyze-unet';
export { compile } from './passes/compile';
export type { CompileRequest } from './passes/compile';
export { PIPELINES, buildArtifact } from './passes/pipeline';
export { parseSpec, checkSpec } from './dsl';

// The artifact contract
export * from './compiler/manifest';
export { loadModel, saveModel } from './compiler/serde';

// Run what compile wrote
export { precompute } from './runtime/precompute';
export type { PrecomputeOptions, PrecomputeResult } from './runtime/precompute';
export { loadTrainingData, readConditioning } from './runtime/training-data';
export { train, evaluateLoss } from './runtime/train';
export type { TrainOptions, TrainResult } from './runtime/train';
export { generate, Sampler } from './runtime/sample';
export type { GenerateOptions, GenerateResult } from './runtime/sample';
export { exportLora } from './runtime/export-lora';
export { readLoraFile, writeLoraFile } from './runtime/lora-file';
export { createSession, installedProviders } from './runtime/session';

// Pipeline folders, tokenizer, images
export { openPipelineFolder } from './runtime/pipeline-folder';
export { loadTokenizer } from './runtime/tokenizer';
export { loadImage, savePng, listImages } from './runtime/images';

// SD-shaped models for tests and demos
export { buildUNet } from './models/builder/unet';
export { buildPipeline } from './models/builder/pipeline';
export { FAMILIES, FAMILY_NAMES } from './models/families';
