/**
 * What diffusers' LoRA loaders do with a safetensors file, written from their sources (read for
 * this, not copied), down to the one number that matters here: the effective scale each layer's
 * B·A gets. Two generations:
 *
 * - diffusers 0.21 (`LoraLoaderMixin.lora_state_dict` + `UNet2DConditionLoadersMixin.load_attn_procs`):
 *   files whose keys all start with `lora_unet_`/`lora_te_` are kohya: converted, and their
 *   `.alpha` tensors become `network_alphas`. Anything else must use `<module>.lora.down.weight` /
 *   `.lora.up.weight` (the `unet.` prefix is stripped); `value_dict["lora.down.weight"]` raises a
 *   KeyError for peft's lora_A/lora_B keys. `LoRALinearLayer` scales by network_alpha / rank when
 *   there is an alpha and by 1 otherwise: safetensors metadata is never read.
 * - current diffusers (`lora_state_dict` -> `_fetch_state_dict` + `_load_sft_state_dict_metadata`,
 *   `load_lora_adapter`, `_create_lora_config`): kohya files converted with their alphas as
 *   `network_alphas`; the `lora_adapter_metadata` JSON, with its `unet.` prefix removed, is the
 *   LoraConfig when present; `lora.down/up` keys are converted to lora_A/lora_B; without metadata
 *   or alphas, lora_alpha = r. peft scales by lora_alpha / r.
 */
import { readSafetensors, toFloat32 } from '../../runtime/formats/safetensors';

export interface LoadedLayer {
  module: string;
  a: Float32Array;
  b: Float32Array;
  aShape: number[];
  bShape: number[];
  scale: number;
}

const KOHYA = /^lora_(unet|te\d?)_/;

function kohyaLayers(file: string, moduleOf: (kohyaBase: string) => string): LoadedLayer[] {
  const { tensors } = readSafetensors(file);
  const out: LoadedLayer[] = [];
  for (const k of tensors.keys()) {
    if (!k.endsWith('.lora_down.weight') || !k.startsWith('lora_unet_')) continue;
    const base = k.slice(0, -'.lora_down.weight'.length);
    const a = tensors.get(k)!;
    const b = tensors.get(`${base}.lora_up.weight`)!;
    const alphaT = tensors.get(`${base}.alpha`);
    const rank = a.shape[0];
    const alpha = alphaT ? toFloat32(alphaT)[0] : undefined;
    out.push({
      module: moduleOf(base),
      a: toFloat32(a),
      b: toFloat32(b),
      aShape: a.shape,
      bShape: b.shape,
      scale: alpha === undefined ? 1 : alpha / rank,
    });
  }
  return out;
}

/** diffusers 0.21: throws as it would (KeyError) on keys it cannot read. */
export function loadLikeDiffusers021(file: string, moduleOf: (kohyaBase: string) => string): LoadedLayer[] {
  const { tensors } = readSafetensors(file);
  const keys = [...tensors.keys()];
  if (keys.every((k) => KOHYA.test(k))) return kohyaLayers(file, moduleOf);
  const unet = keys.every((k) => k.startsWith('unet.') || k.startsWith('text_encoder.'))
    ? keys.filter((k) => k.startsWith('unet.')).map((k) => k.slice('unet.'.length))
    : keys;
  // group by the module: everything before the last three dot components
  const groups = new Map<string, Map<string, string>>();
  for (const k of unet) {
    const parts = k.split('.');
    const mod = parts.slice(0, -3).join('.');
    const sub = parts.slice(-3).join('.');
    if (!groups.has(mod)) groups.set(mod, new Map());
    groups.get(mod)!.set(sub, keys.includes(`unet.${k}`) ? `unet.${k}` : k);
  }
  const out: LoadedLayer[] = [];
  for (const [mod, subs] of groups) {
    const down = subs.get('lora.down.weight');
    if (!down) throw new Error(`KeyError: 'lora.down.weight' (module ${mod} has ${[...subs.keys()].join(', ')})`);
    const up = subs.get('lora.up.weight')!;
    const a = tensors.get(down)!;
    const b = tensors.get(up)!;
    out.push({ module: mod, a: toFloat32(a), b: toFloat32(b), aShape: a.shape, bShape: b.shape, scale: 1 });
  }
  return out;
}

/** Current diffusers with peft. */
export function loadLikeDiffusersCurrent(file: string, moduleOf: (kohyaBase: string) => string): LoadedLayer[] {
  const { tensors, metadata } = readSafetensors(file);
  const keys = [...tensors.keys()];
  if (keys.every((k) => KOHYA.test(k))) return kohyaLayers(file, moduleOf);
  let config: Record<string, unknown> | undefined;
  const raw = metadata.lora_adapter_metadata;
  if (raw) {
    const all = JSON.parse(raw) as Record<string, unknown>;
    config = Object.fromEntries(
      Object.entries(all)
        .filter(([k]) => k.startsWith('unet.'))
        .map(([k, v]) => [k.slice('unet.'.length), v]),
    );
  }
  const unetKeys = keys.filter((k) => k.startsWith('unet.'));
  const out: LoadedLayer[] = [];
  for (const k of unetKeys) {
    const m = /^unet\.(.+)\.(lora_A\.weight|lora\.down\.weight)$/.exec(k);
    if (!m) continue;
    const mod = m[1];
    const upKey = m[2] === 'lora_A.weight' ? `unet.${mod}.lora_B.weight` : `unet.${mod}.lora.up.weight`;
    const a = tensors.get(k)!;
    const b = tensors.get(upKey)!;
    const r = config ? Number(config.r) : b.shape[1];
    const alpha = config ? Number(config.lora_alpha) : r;
    if (
      config &&
      Array.isArray(config.target_modules) &&
      !(config.target_modules as string[]).some((t) => t === mod || mod.endsWith(`.${t}`))
    )
      throw new Error(`${mod} is not among target_modules`);
    out.push({ module: mod, a: toFloat32(a), b: toFloat32(b), aShape: a.shape, bShape: b.shape, scale: alpha / r });
  }
  if (!out.length) throw new Error('no unet LoRA keys');
  return out;
}

/** The update a layer adds to its weight: scale · B·A, [out, in]. */
export function effectiveDelta(l: { a: Float32Array; b: Float32Array; aShape: number[]; bShape: number[]; scale: number }): Float32Array {
  const [r, inF] = l.aShape;
  const [outF] = l.bShape;
  const d = new Float32Array(outF * inF);
  for (let o = 0; o < outF; o++)
    for (let k = 0; k < r; k++) {
      const bv = l.b[o * r + k] * l.scale;
      for (let i = 0; i < inF; i++) d[o * inF + i] += bv * l.a[k * inF + i];
    }
  return d;
}
