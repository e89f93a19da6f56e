/**
 * The training data checked against the compiled folder before precompute writes anything: each
 * array's per-sample shape against the spec's `shape` lines and every artifact's static input
 * sizes. Without it a latent of another size made a store that only `train` refused, and a
 * prompt of another width failed inside onnxruntime without naming the file.
 */
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { Dim } from '../../compiler/ir';
import { ARTIFACT_NAMES, CompileManifest, ENCODER_HIDDEN_STATES, SAMPLE, TEXT_EMBEDS, TIME_IDS } from '../../compiler/manifest';
import type { TrainingData } from './training-data';

/** Sizes one input must have per sample (batch dimension dropped), and where the folder says so. */
interface Expected {
  dims: readonly Dim[];
  source: string;
}

/** What the folder fixes for input `name`: the spec's `shape` line, then each artifact that takes it. */
function expectedOf(manifest: CompileManifest, name: string): Expected[] {
  const out: Expected[] = [];
  const declared = manifest.training.shapes[name];
  if (declared) out.push({ dims: declared.slice(1), source: `the spec's \`shape ${name} [${declared.join(', ')}]\` line` });
  for (const artifact of ARTIFACT_NAMES) {
    const a = manifest.artifacts[artifact];
    const input = a?.inputs.find((i) => i.name === name);
    if (input) out.push({ dims: input.shape.slice(1), source: `${a!.file} takes ${name} [${input.shape.join(', ')}]` });
  }
  return out;
}

/** Whether `shape` fits `dims`: the same rank and every numeric size equal (a named size takes any). */
const fits = (shape: readonly number[], dims: readonly Dim[]) =>
  shape.length === dims.length && dims.every((d, i) => typeof d !== 'number' || d === shape[i]);

function checkShape(manifest: CompileManifest, name: string, what: string, shape: readonly number[], file: string): void {
  const wrong = expectedOf(manifest, name).find((e) => !fits(shape, e.dims));
  if (wrong)
    throw new HollowcError(`${what} is [${shape.join(', ')}], this folder expects [${wrong.dims.join(', ')}] (${wrong.source})`, file);
}

/** Throws naming the file of the first array whose shape the compiled folder cannot take. */
export function checkDataFitsFolder(manifest: CompileManifest, data: TrainingData): void {
  const takes = (name: string) => Object.values(manifest.artifacts).some((a) => a?.inputs.some((i) => i.name === name));
  // one shape for all samples is checked on loading: the first of each list stands for the rest
  for (const latent of [data.instanceLatents[0], data.classLatents[0]])
    if (latent)
      checkShape(
        manifest,
        SAMPLE,
        path.basename(latent.file) === latent.name ? 'the latent' : `latent ${latent.name}`,
        latent.shape,
        latent.file,
      );
  for (const [role, c] of [
    ['instance', data.instance],
    ['class', data.class],
  ] as const) {
    const file = data.sources[role];
    checkShape(manifest, ENCODER_HIDDEN_STATES, `the ${role} prompt's ${ENCODER_HIDDEN_STATES}`, c.encoderHiddenStates.shape, file);
    if (takes(TEXT_EMBEDS) && !c.textEmbeds)
      throw new HollowcError(
        `this ${manifest.family} UNet also takes ${TEXT_EMBEDS} (the pooled prompt embedding): put <name>.${TEXT_EMBEDS}.npy next to the prompt's .npy, or give a .safetensors prompt`,
        file,
      );
    if (takes(TEXT_EMBEDS)) checkShape(manifest, TEXT_EMBEDS, `the ${role} prompt's ${TEXT_EMBEDS}`, c.textEmbeds!.shape, file);
  }
  if (data.timeIds && data.sources.timeIds) checkShape(manifest, TIME_IDS, TIME_IDS, [data.timeIds.length], data.sources.timeIds);
}
