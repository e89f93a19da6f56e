// Names the language knows without a model: families, paper presets, artifacts, defaults.
// Which blocks a preset hollows depends on the graph and is answered by ModelFacts.resolveHollow
// (check.ts); the DSL only needs the names to reject typos early. models/presets.ts is their
// one source.
import type {
  ArtifactName,
  BasePrecision,
  ChunkKind,
  ChunkSizes,
  GradientPrecision,
  InferLoraPrecision,
  Prediction,
  RecomputeMode,
} from '../compiler/manifest';
import type { FamilyName } from '../models/families';
import { PRESETS } from '../models/presets';

export type { BasePrecision, ChunkKind, ChunkSizes, FamilyName, GradientPrecision, InferLoraPrecision, Prediction, RecomputeMode };
export type ModelChoice = FamilyName | 'auto';
/** The `optimizer` line's kind: AdamW with float32 moments, or with blockwise 8-bit moments (kohya's "AdamW8bit"). */
export type OptimizerKind = 'adamw' | 'adamw8bit';
/** What an `emit` line may name: every artifact but the internal `forward`. */
export type EmitArtifact = Exclude<ArtifactName, 'forward'>;

export const EMIT_ARTIFACTS: readonly EmitArtifact[] = ['precompute', 'train', 'grads', 'infer'];

/** The paper's SD 1.x / 2.x presets (paper Table 1 and Appendix B; exact counts in tests/analyze-full.test.ts), by share of parameters hollowed. */
export const SD_PRESETS: readonly string[] = PRESETS.filter((p) => p.families.includes('sd15')).map((p) => p.name);
/** SDXL: the paper hollows the whole mid block. */
export const SDXL_PRESETS: readonly string[] = PRESETS.filter((p) => p.families.includes('sdxl')).map((p) => p.name);
export const ALL_PRESETS: readonly string[] = [...SD_PRESETS, ...SDXL_PRESETS];

export function presetsFor(family: FamilyName): readonly string[] {
  return family === 'sdxl' ? SDXL_PRESETS : SD_PRESETS;
}

/** Human description of `presetsFor(family)`, for messages. */
export function presetListText(presets: readonly string[]): string {
  return presets.map((p) => `"${p}"`).join(', ');
}
