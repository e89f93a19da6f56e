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
import { HollowcError } from '../compiler/errors';
import { CompileManifest, loraParamNames } from '../compiler/manifest';
import { SafeTensor, float32Tensor, readSafetensors, toFloat32, writeSafetensors } from './safetensors';

export type LoraFormat = 'diffusers' | 'peft' | 'kohya';
export const LORA_FORMATS: readonly LoraFormat[] = ['diffusers', 'peft', 'kohya'];

/** diffusers' safetensors metadata key for the JSON of peft's LoraConfig (diffusers LORA_ADAPTER_METADATA_KEY). */
export const LORA_ADAPTER_METADATA = 'lora_adapter_metadata';
const DIFFUSERS_DOWN_SUFFIX = '.lora.down.weight';
const DIFFUSERS_UP_SUFFIX = '.lora.up.weight';

/** The `lora_adapter_metadata` JSON diffusers reads: LoraConfig fields, each prefixed with the component (`unet.`). */
export function adapterMetadata(rank: number, alpha: number, modules: readonly string[]): string {
  return JSON.stringify({ 'unet.r': rank, 'unet.lora_alpha': alpha, 'unet.target_modules': [...new Set(modules)], 'unet.init_lora_weights': true, 'unet.use_dora': false, 'unet.lora_bias': false });
}

export interface LoraModuleValues {
  module: string;
  a: { shape: number[]; data: Float32Array };
  b: { shape: number[]; data: Float32Array };
}

export interface LoraSet {
  rank: number;
  alpha: number;
  modules: LoraModuleValues[];
}

export function kohyaName(module: string): string {
  return `lora_unet_${module.replace(/\./g, '_')}`;
}

export function writeLoraFile(file: string, format: LoraFormat, set: LoraSet, extraMetadata: Record<string, string> = {}): void {
  const tensors = new Map<string, SafeTensor>();
  const metadata: Record<string, string> = { ...extraMetadata };
  const scale = set.alpha / set.rank;
  for (const m of set.modules) {
    if (format === 'peft') {
      const names = loraParamNames(`unet.${m.module}`);
      tensors.set(names.a, float32Tensor(m.a.shape, m.a.data));
      tensors.set(names.b, float32Tensor(m.b.shape, m.b.data));
    } else if (format === 'diffusers') {
      tensors.set(`unet.${m.module}${DIFFUSERS_DOWN_SUFFIX}`, float32Tensor(m.a.shape, m.a.data));
      tensors.set(`unet.${m.module}${DIFFUSERS_UP_SUFFIX}`, float32Tensor(m.b.shape, scale === 1 ? m.b.data : m.b.data.map((x) => x * scale)));
    } else {
      const base = kohyaName(m.module);
      tensors.set(`${base}.lora_down.weight`, float32Tensor(m.a.shape, m.a.data));
      tensors.set(`${base}.lora_up.weight`, float32Tensor(m.b.shape, m.b.data));
      tensors.set(`${base}.alpha`, float32Tensor([], Float32Array.of(set.alpha)));
    }
  }
  const modules = set.modules.map((m) => m.module);
  if (format === 'peft') {
    metadata.format = 'pt';
    metadata.lora_rank = String(set.rank);
    metadata.lora_alpha = String(set.alpha);
    metadata.target_modules = JSON.stringify([...new Set(modules)]);
    metadata[LORA_ADAPTER_METADATA] = adapterMetadata(set.rank, set.alpha, modules);
  } else if (format === 'diffusers') {
    metadata.format = 'pt';
    metadata[LORA_ADAPTER_METADATA] = adapterMetadata(set.rank, set.rank, modules);
    metadata.hollowc_alpha = String(set.alpha);
    metadata.hollowc_scale_folded = String(scale);
  } else {
    metadata.ss_network_module = 'networks.lora';
    metadata.ss_network_dim = String(set.rank);
    metadata.ss_network_alpha = String(set.alpha);
  }
  writeSafetensors(file, tensors, metadata);
}

/**
 * Reads a LoRA for `modules` in either layout, detected from its keys, and rescales it to
 * `alpha` (the compiled graph's alpha/r is fixed): kohya files may carry another alpha.
 */
export function readLoraFile(file: string, modules: readonly string[], rank: number, alpha: number): Map<string, LoraModuleValues> {
  const { tensors, metadata } = readSafetensors(file);
  const keys = [...tensors.keys()];
  const kohya = keys.some((k) => k.startsWith('lora_unet_'));
  const out = new Map<string, LoraModuleValues>();
  const missing: string[] = [];
  for (const module of modules) {
    let aKey: string | undefined;
    let bKey: string | undefined;
    let fileAlpha = Number(metadata.lora_alpha ?? alpha);
    if (kohya) {
      const base = kohyaName(module);
      aKey = `${base}.lora_down.weight`;
      bKey = `${base}.lora_up.weight`;
      const alphaTensor = tensors.get(`${base}.alpha`);
      fileAlpha = alphaTensor ? toFloat32(alphaTensor, `${base}.alpha`)[0] : Number(metadata.ss_network_alpha ?? alpha);
    } else if (tensors.has(`unet.${module}${DIFFUSERS_DOWN_SUFFIX}`) || tensors.has(`${module}${DIFFUSERS_DOWN_SUFFIX}`)) {
      const base = tensors.has(`unet.${module}${DIFFUSERS_DOWN_SUFFIX}`) ? `unet.${module}` : module;
      aKey = `${base}${DIFFUSERS_DOWN_SUFFIX}`;
      bKey = `${base}${DIFFUSERS_UP_SUFFIX}`;
      // the scale is folded into up: the file's own alpha is its rank
      fileAlpha = adapterAlphaOf(metadata) ?? rank;
    } else {
      const names = [`unet.${module}`, module, `base_model.model.${module}`].map(loraParamNames).find((n) => tensors.has(n.a));
      aKey = names?.a;
      bKey = names?.b;
      fileAlpha = Number(metadata.lora_alpha ?? adapterAlphaOf(metadata) ?? alpha);
    }
    const a = aKey ? tensors.get(aKey) : undefined;
    const b = bKey ? tensors.get(bKey) : undefined;
    if (!a || !b) {
      missing.push(module);
      continue;
    }
    if (a.shape[0] !== rank || b.shape[1] !== rank) throw new HollowcError(`${module}: LoRA rank ${a.shape[0]} in the file, the compiled graph has rank ${rank}`, file);
    const aValues = finiteValues(toFloat32(a, aKey), aKey!, file);
    const bValues = finiteValues(toFloat32(b, bKey), bKey!, file);
    if (!Number.isFinite(fileAlpha) || fileAlpha <= 0) throw new HollowcError(`${module}: LoRA alpha ${fileAlpha} is not a positive number`, file);
    const ratio = fileAlpha / alpha;
    out.set(module, {
      module,
      a: { shape: a.shape, data: aValues },
      b: { shape: b.shape, data: ratio === 1 ? bValues : bValues.map((x) => x * ratio) },
    });
  }
  if (missing.length) {
    throw new HollowcError(`no LoRA tensors for ${missing.length} module(s), e.g. ${missing.slice(0, 3).join(', ')} (file has keys like ${keys.slice(0, 2).join(', ')})`, file);
  }
  return out;
}

/** `lora_alpha` of the `lora_adapter_metadata` JSON (`unet.lora_alpha`, or unprefixed), when there. */
export function adapterAlphaOf(metadata: Record<string, string>): number | undefined {
  try {
    const m = metadata[LORA_ADAPTER_METADATA] ? (JSON.parse(metadata[LORA_ADAPTER_METADATA]) as Record<string, unknown>) : undefined;
    const v = m?.['unet.lora_alpha'] ?? m?.lora_alpha;
    return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined; // not JSON: no alpha from it
  }
}

/** A LoRA with a NaN or an infinity would poison every image it touches: refuse it by name. */
function finiteValues(values: Float32Array, key: string, file: string): Float32Array {
  const bad = values.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) throw new HollowcError(`${key} holds ${values[bad]} at element ${bad}: the LoRA is broken (a diverged training run?)`, file);
  return values;
}

/**
 * A LoRA file's values for a compiled folder's trained targets, keyed by graph input name
 * (`<module>.lora_A.weight`), with the shapes checked against what was compiled.
 */
export function readLoraForManifest(file: string, manifest: CompileManifest): Map<string, Float32Array> {
  const trained = manifest.lora.targets.filter((t) => t.trained);
  const modules = readLoraFile(file, trained.map((t) => t.module), manifest.lora.rank, manifest.lora.alpha);
  const values = new Map<string, Float32Array>();
  for (const t of trained) {
    const m = modules.get(t.module)!;
    if (m.a.shape.join() !== t.lora_A.shape.join() || m.b.shape.join() !== t.lora_B.shape.join()) {
      throw new HollowcError(`${t.module}: LoRA shapes [${m.a.shape}] / [${m.b.shape}] do not match the compiled [${t.lora_A.shape}] / [${t.lora_B.shape}]`, file);
    }
    values.set(t.lora_A.name, m.a.data);
    values.set(t.lora_B.name, m.b.data);
  }
  return values;
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
    if (k.endsWith(KOHYA_DOWN)) (base = k.slice(0, -KOHYA_DOWN.length)), (up = `${base}${KOHYA_UP}`);
    else if (k.endsWith(DIFFUSERS_DOWN)) (base = k.slice(0, -DIFFUSERS_DOWN.length)), (up = `${base}${DIFFUSERS_UP}`);
    else if (k.endsWith(peftSuffix.a)) (base = k.slice(0, -peftSuffix.a.length)), (up = `${base}${peftSuffix.b}`);
    else if (/_lora\.down\.weight$/.test(k)) (base = k.replace(/\.down\.weight$/, '')), (up = k.replace(/\.down\.weight$/, '.up.weight'));
    if (base === undefined) continue;
    if (/^(lora_te\d*_|text_encoder|lora_te_)/.test(base)) {
      ignored++;
      continue;
    }
    if (!tensors.has(up!)) throw new HollowcError(`LoRA entry ${base} has a down/A tensor but no up/B tensor`, file);
    const alpha = [`${base}.alpha`].find((a) => tensors.has(a));
    layers.set(base, { down: k, up: up!, alpha });
  }
  if (layers.size === 0) throw new HollowcError(`no UNet LoRA tensors found (keys look like ${keys.slice(0, 2).join(', ') || 'nothing'})`, file);
  // module path -> entry
  const byModule = new Map<string, string>();
  for (const base of layers.keys()) {
    if (kohya) byModule.set(base, base); // resolved at lookup through kohyaName
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
