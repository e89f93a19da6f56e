/**
 * Whether a compiled folder's sessions fit in the browser: onnxruntime-web's WASM build is
 * wasm32, one linear memory of at most 4 GiB shared by every session of the page, and each
 * session copies its (external) weights into it. The page runs one session at a time (it
 * releases train.onnx before opening infer.onnx), so the largest session decides. Pure (the page
 * and the CLI's tests share it).
 *
 * The rule: a session fits when its weights plus a quarter for activations, the optimizer state
 * and onnxruntime's own buffers stay under 4 GiB. Weight bytes come from the manifest's parameter
 * counts (the UNet's full count for infer.onnx, the held count for train.onnx) times the bytes of
 * the base's float type; we consider float32 and float16, the types SD exports come in.
 */
import type { CompileManifest } from '../../compiler/manifest';
import { FAMILIES, FAMILY_NAMES, FamilyName } from '../../models/families';
import { buildLayout } from '../../models/layout';
import { paramCounts } from '../../models/param-count';

export const WASM32_BYTES = 4 * 2 ** 30;
/** Activations, AdamW state and onnxruntime's buffers, as a fraction of the weights. */
export const HEADROOM = 0.25;
export const PRECISIONS = [
  { name: 'float32', bytes: 4 },
  { name: 'float16', bytes: 2 },
] as const;

export interface SessionFit {
  precision: string;
  weightBytes: number;
  neededBytes: number;
  fits: boolean;
}

export function sessionFit(parameters: number, bytesPerParameter: number, precision: string): SessionFit {
  const weightBytes = parameters * bytesPerParameter;
  const neededBytes = weightBytes * (1 + HEADROOM);
  return { precision, weightBytes, neededBytes, fits: neededBytes <= WASM32_BYTES };
}

export interface ModelFit {
  label: string;
  parameters: number;
  /** float32, then float16. */
  fits: SessionFit[];
  verdict: string;
}

export function gb(bytes: number): string {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

function verdictFor(label: string, fits: SessionFit[]): string {
  const [f32, f16] = fits;
  if (f32.fits)
    return `${label} fits in wasm32 in float32 (${gb(f32.weightBytes)} of weights, ~${gb(f32.neededBytes)} with headroom, limit 4 GiB)`;
  if (f16.fits)
    return `${label} needs a reduced-precision (float16) base in wasm32: ${gb(f32.weightBytes)} of float32 weights (~${gb(f32.neededBytes)} with headroom) exceed 4 GiB, ${gb(f16.weightBytes)} in float16 fit`;
  return `${label} does not fit in wasm32 even in float16: ${gb(f16.weightBytes)} of float16 weights (~${gb(f16.neededBytes)} with headroom) exceed 4 GiB`;
}

export function modelFit(label: string, parameters: number): ModelFit {
  const fits = PRECISIONS.map((p) => sessionFit(parameters, p.bytes, p.name));
  return { label, parameters, fits, verdict: verdictFor(label, fits) };
}

/** This folder: infer.onnx holds the whole UNet, train.onnx the parameters kept for training. */
export function folderFit(manifest: CompileManifest): { infer: ModelFit; train: ModelFit } {
  return {
    infer: modelFit(
      `this ${manifest.family} UNet (infer.onnx, ${manifest.parameters.full.toLocaleString('en-US')} parameters)`,
      manifest.parameters.full,
    ),
    train: modelFit(
      `its training graph (train.onnx, ${manifest.parameters.heldDuringTraining.toLocaleString('en-US')} parameters held)`,
      manifest.parameters.heldDuringTraining,
    ),
  };
}

/** The full-size families for reference (parameter counts from their diffusers configs). */
export function familyFits(): ModelFit[] {
  return FAMILY_NAMES.map((f: FamilyName) => {
    const total = paramCounts(buildLayout(FAMILIES[f].full.config)).total;
    return modelFit(`full ${f} (${(total / 1e6).toFixed(0)}M parameters)`, total);
  });
}
