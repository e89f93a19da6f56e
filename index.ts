/**
 * hollowc as a library: every step the CLI runs, callable from code. The CLI (cli/) is a thin
 * layer over these; see the README's "Library" section for a worked example.
 */
// Inspect and compile
export { loadUNet } from './cli/api/unet';
export type { LoadedUNet } from './cli/api/unet';
export { checkSpecFile } from './cli/api/spec';
export type { CheckedSpec } from './cli/api/spec';
export { compileSpec, compileFromSpec } from './cli/api/compile-spec';
export type { CompileOptions } from './cli/api/compile-spec';
export { bakeCompiled } from './cli/api/bake';
export type { BakeResult } from './cli/api/bake';
export { inspectJson, inspectText } from './cli/api/inspect';
export { analyzeUNet } from './passes/lib/analyze-unet';
export type { UNetAnalysis, CutInfo } from './passes/lib/analyze-unet';
export { compile } from './passes/compile-unet';
export type { CompileRequest } from './passes/compile-unet';
export { ARTIFACT_PASSES, buildArtifact } from './passes/artifact-passes';
export { parseSpec, checkSpec } from './dsl';

// Plan: the paper's resource tables for a UNet, before anything is trained
export { planFor as plan, parseBytes } from './cli/api/plan';
export type { PlanOptions } from './cli/api/plan';
export { planUNet } from './passes/plan/plan';
export type { Plan, PlanRequest, PlanRow } from './passes/plan/plan';
export { planText, planSvg } from './passes/plan/render';

// The artifact contract
export * from './compiler/manifest';
export { loadModel, saveModel } from './compiler/serde';

// Run what compile wrote
export { precompute } from './runtime/store/precompute';
export type { PrecomputeOptions, PrecomputeResult } from './runtime/store/precompute';
export { loadTrainingData, readConditioning } from './runtime/store/training-data';
export { train, evaluateLoss } from './runtime/train/train';
export type { TrainOptions, TrainResult } from './runtime/train/train';
export { generate, Sampler } from './runtime/sampling/two-path';
export type { GenerateOptions, GenerateResult } from './runtime/sampling/two-path';
export { exportLora } from './runtime/train/export-lora';
export { readLoraFile, writeLoraFile } from './runtime/formats/lora-file';
export { createSession, installedProviders } from './runtime/ort/session';

// Photos and a prompt in, a LoRA, images and a report out (the compiler handed in)
export { personalize } from './cli/api/personalize';
export type { PersonalizeOptions, PersonalizeResult } from './cli/api/personalize';

// Pipeline folders, tokenizer, images
export { openPipelineFolder } from './runtime/text-to-image/pipeline-folder';
export { generateFromPipeline } from './cli/api/generate-pipeline';
export type { PipelineGenerateOptions, PipelineGenerateResult } from './cli/api/generate-pipeline';
export { loadTokenizer } from './runtime/text-to-image/tokenizer';
export { loadImage, savePng, listImages } from './runtime/formats/images';

// Any builder graph trained by hollowc's own passes: the world's VAE (issue 32)
export { compileGraph } from './passes/compile-graph';
export { trainGraph, writeTrainedExport } from './runtime/train/graph-train';
export { trainVae, WORLD_VAE } from './cli/api/train-vae';
export type { TrainVaeOptions, TrainVaeResult } from './cli/api/train-vae';
export { checkVae } from './cli/api/check-vae';
export type { VaeCheck } from './cli/api/check-vae';

// SD-shaped models for tests and demos
export { buildUNet } from './models/builder/unet';
export { buildPipeline } from './models/builder/pipeline';
export { FAMILIES, FAMILY_NAMES } from './models/families';
