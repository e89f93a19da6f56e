/**
 * LoRA safetensors in the layouts other tools load for the original UNet:
 * - diffusers (what `pipe.load_lora_weights` reads in every diffusers version since 0.17):
 *   `unet.<module path>.lora.down.weight` [r, in], `.lora.up.weight` [out, r], with the scale
 *   alpha/r folded into `up`. diffusers 0.21's loader (`load_attn_procs`) takes alpha only from
 *   kohya files and otherwise uses scale 1; current diffusers converts these keys to peft's and
 *   takes the LoraConfig from the `lora_adapter_metadata` JSON (keys prefixed `unet.`), else
 *   assumes alpha = r. Folding the scale in makes the file mean the same in all of them, and the
 *   metadata says so: `unet.r` = `unet.lora_alpha` = r (the trained alpha is in `hollowc_alpha`).
 * - peft: `unet.<module path>.lora_A.weight` [r, in], `.lora_B.weight` [out, r], unscaled, with
 *   the trained alpha in `lora_adapter_metadata` (`unet.lora_alpha`: current diffusers loads it
 *   right; diffusers 0.21 cannot read these keys at all) and in `lora_alpha`;
 * - kohya (A1111, ComfyUI, and diffusers through its kohya conversion): `lora_unet_<module path
 *   with _>.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha` per module.
 * Hollowed-Net LoRA has the shapes of plain UNet LoRA, so no conversion of values is needed.
 */
import { HollowcError } from '../../compiler/errors';
import { CompileManifest, loraParamNames } from '../../compiler/manifest';
import {
  LoraFormat,
  LoraModuleValues,
  LoraSet,
  adapterAlphaOf,
  kohyaName,
  loraFileTensors,
  loraValues,
  loraValuesForManifest,
} from './lora-format';
import { readSafetensors, toFloat32, writeSafetensors } from './safetensors';

export type { LoraFormat, LoraModuleValues, LoraSet } from './lora-format';
export { LORA_ADAPTER_METADATA, LORA_FORMATS, adapterAlphaOf, adapterMetadata, kohyaName } from './lora-format';

export function writeLoraFile(file: string, format: LoraFormat, set: LoraSet, extraMetadata: Record<string, string> = {}): void {
  const { tensors, metadata } = loraFileTensors(format, set, extraMetadata);
  writeSafetensors(file, tensors, metadata);
}

/**
 * Reads a LoRA for `modules` in either layout, detected from its keys, and rescales it to
 * `alpha` (the compiled graph's alpha/r is fixed): kohya files may carry another alpha.
 */
export function readLoraFile(file: string, modules: readonly string[], rank: number, alpha: number): Map<string, LoraModuleValues> {
  return loraValues(readSafetensors(file), file, modules, rank, alpha);
}

/**
 * A LoRA file's values for a compiled folder's trained targets, keyed by graph input name
 * (`<module>.lora_A.weight`), with the shapes checked against what was compiled.
 */
export function readLoraForManifest(file: string, manifest: CompileManifest): Map<string, Float32Array> {
  return loraValuesForManifest(readSafetensors(file), file, manifest);
}

/** One layer's LoRA update: W' = W + scale · B·A. */
export interface LoraDelta {
  a: { shape: number[]; data: Float32Array };
  b: { shape: number[]; data: Float32Array };
  /** alpha / rank */
  scale: number;
}

/** A UNet LoRA file of any common layout, looked up by diffusers module path. */
export interface UnetLora {
  readonly file: string;
  readonly format: 'peft' | 'diffusers' | 'kohya';
  /** The layer entries the file holds (file-side names). */
  readonly entries: readonly string[];
  /** The LoRA for a module path (e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); marks the entry used. */
  lookup(module: string): LoraDelta | undefined;
  /** Entries no lookup matched. */
  unused(): string[];
  /** Entries for other models than the UNet (text encoders), which are ignored. */
  readonly ignored: number;
}

const KOHYA_DOWN = '.lora_down.weight';
const KOHYA_UP = '.lora_up.weight';
const DIFFUSERS_DOWN = '.lora.down.weight';
const DIFFUSERS_UP = '.lora.up.weight';
const PREFIXES = ['unet.', 'base_model.model.', ''];

/**
 * Reads a UNet LoRA: peft (`unet.<module>` + peft's A/B names), diffusers' older
 * `<module>.lora.down/up.weight` and attention-processor names (`attn1.processor.to_q_lora.down.weight`),
 * or kohya (`lora_unet_<module with _>.lora_down/up.weight` + `.alpha`). The scale is alpha/rank:
 * a per-layer `.alpha` tensor, else the metadata (`lora_alpha`, `ss_network_alpha`, or peft's
 * `lora_adapter_metadata`), else alpha = rank (scale 1, what diffusers assumes).
 */
export function readUnetLora(file: string): UnetLora {
  const { tensors, metadata } = readSafetensors(file);
  const keys = [...tensors.keys()];
  const kohya = keys.some((k) => k.startsWith('lora_unet_'));
  const adapterAlpha = adapterAlphaOf(metadata);
  const metaAlpha = Number(metadata.lora_alpha ?? metadata.ss_network_alpha ?? adapterAlpha ?? NaN);
  // layer entry (file-side base name) -> down/up keys
  const layers = new Map<string, { down: string; up: string; alpha?: string }>();
  let ignored = 0;
  const peftSuffix = loraParamNames('');
  for (const k of keys) {
    let base: string | undefined;
    let up: string | undefined;
    if (k.endsWith(KOHYA_DOWN)) ((base = k.slice(0, -KOHYA_DOWN.length)), (up = `${base}${KOHYA_UP}`));
    else if (k.endsWith(DIFFUSERS_DOWN)) ((base = k.slice(0, -DIFFUSERS_DOWN.length)), (up = `${base}${DIFFUSERS_UP}`));
    else if (k.endsWith(peftSuffix.a)) ((base = k.slice(0, -peftSuffix.a.length)), (up = `${base}${peftSuffix.b}`));
    else if (/_lora\.down\.weight$/.test(k)) ((base = k.replace(/\.down\.weight$/, '')), (up = k.replace(/\.down\.weight$/, '.up.weight')));
    if (base === undefined) continue;
    if (/^(lora_te\d*_|text_encoder|lora_te_)/.test(base)) {
      ignored++;
      continue;
    }
    if (!tensors.has(up!)) throw new HollowcError(`LoRA entry ${base} has a down/A tensor but no up/B tensor`, file);
    const alpha = [`${base}.alpha`].find((a) => tensors.has(a));
    layers.set(base, { down: k, up: up!, alpha });
  }
  if (layers.size === 0)
    throw new HollowcError(`no UNet LoRA tensors found (keys look like ${keys.slice(0, 2).join(', ') || 'nothing'})`, file);
  // module path -> entry
  const byModule = new Map<string, string>();
  for (const base of layers.keys()) {
    if (kohya)
      byModule.set(base, base); // resolved at lookup through kohyaName
    else {
      let m = base;
      const prefix = PREFIXES.find((p) => p && m.startsWith(p));
      if (prefix) m = m.slice(prefix.length);
      // attention processors: attn1.processor.to_q_lora -> attn1.to_q, to_out_lora -> to_out.0
      m = m.replace(/\.processor\.(to_[qkv])_lora$/, '.$1').replace(/\.processor\.to_out_lora$/, '.to_out.0');
      byModule.set(m, base);
    }
  }
  const used = new Set<string>();
  const format: UnetLora['format'] = kohya ? 'kohya' : keys.some((k) => k.endsWith(peftSuffix.a)) ? 'peft' : 'diffusers';
  return {
    file,
    format,
    entries: [...layers.keys()],
    ignored,
    lookup(module: string): LoraDelta | undefined {
      const base = kohya ? (layers.has(kohyaName(module)) ? kohyaName(module) : undefined) : byModule.get(module);
      if (base === undefined) return undefined;
      const l = layers.get(base)!;
      used.add(base);
      const a = tensors.get(l.down)!;
      const b = tensors.get(l.up)!;
      const rank = a.shape[0];
      if (b.shape[1] !== rank) throw new HollowcError(`${base}: down/A is [${a.shape}] and up/B [${b.shape}]: their ranks differ`, file);
      const alpha = l.alpha ? toFloat32(tensors.get(l.alpha)!, l.alpha)[0] : Number.isFinite(metaAlpha) ? metaAlpha : rank;
      return { a: { shape: a.shape, data: toFloat32(a, l.down) }, b: { shape: b.shape, data: toFloat32(b, l.up) }, scale: alpha / rank };
    },
    unused: () => [...layers.keys()].filter((k) => !used.has(k)),
  };
}
