/**
 * LoRA safetensors contents without the file system (lora-file.ts reads and writes the files):
 * the diffusers / peft / kohya key layouts (see lora-file.ts for which loader reads which), the values for a set of modules rescaled to the compiled alpha,
 * and the values for a compiled folder's trained targets. Pure, shared with the browser page.
 */
import { HollowcError } from '../../compiler/errors';
import { CompileManifest, loraParamNames } from '../../compiler/manifest';
import { SafeTensor, SafetensorsFile, float32Tensor, toFloat32 } from './safetensors-format';

/** The LoRA training starts from, written by `hollowc compile` (A gaussian, B zero, peft keys). */
export const LORA_INIT_FILE = 'lora-init.safetensors';

/** The LoRA `hollowc train` writes into the compiled folder (peft keys; export-lora writes the other layouts). */
export const TRAINED_LORA_FILE = 'lora.safetensors';

export type LoraFormat = 'diffusers' | 'peft' | 'kohya';
export const LORA_FORMATS: readonly LoraFormat[] = ['diffusers', 'peft', 'kohya'];

/** diffusers' safetensors metadata key for the JSON of peft's LoraConfig (diffusers LORA_ADAPTER_METADATA_KEY). */
export const LORA_ADAPTER_METADATA = 'lora_adapter_metadata';
const DIFFUSERS_DOWN_SUFFIX = '.lora.down.weight';
const DIFFUSERS_UP_SUFFIX = '.lora.up.weight';

/** The `lora_adapter_metadata` JSON diffusers reads: LoraConfig fields, each prefixed with the component (`unet.`). */
export function adapterMetadata(rank: number, alpha: number, modules: readonly string[]): string {
  return JSON.stringify({
    'unet.r': rank,
    'unet.lora_alpha': alpha,
    'unet.target_modules': [...new Set(modules)],
    'unet.init_lora_weights': true,
    'unet.use_dora': false,
    'unet.lora_bias': false,
  });
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

/** The tensors and metadata of a LoRA file in `format` (writeLoraFile writes them; the page encodes them). */
export function loraFileTensors(format: LoraFormat, set: LoraSet, extraMetadata: Record<string, string> = {}): SafetensorsFile {
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
      tensors.set(
        `unet.${m.module}${DIFFUSERS_UP_SUFFIX}`,
        float32Tensor(m.b.shape, scale === 1 ? m.b.data : m.b.data.map((x) => x * scale)),
      );
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
  return { tensors, metadata };
}

/**
 * Reads a LoRA for `modules` in either layout, detected from its keys, and rescales it to
 * `alpha` (the compiled graph's alpha/r is fixed): kohya files may carry another alpha. `file`
 * labels errors.
 */
export function loraValues(
  parsed: SafetensorsFile,
  file: string,
  modules: readonly string[],
  rank: number,
  alpha: number,
): Map<string, LoraModuleValues> {
  const { tensors, metadata } = parsed;
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
    if (a.shape[0] !== rank || b.shape[1] !== rank)
      throw new HollowcError(`${module}: LoRA rank ${a.shape[0]} in the file, the compiled graph has rank ${rank}`, file);
    const aValues = finiteValues(toFloat32(a, aKey), aKey!, file);
    const bValues = finiteValues(toFloat32(b, bKey), bKey!, file);
    if (!Number.isFinite(fileAlpha) || fileAlpha <= 0)
      throw new HollowcError(`${module}: LoRA alpha ${fileAlpha} is not a positive number`, file);
    const ratio = fileAlpha / alpha;
    out.set(module, {
      module,
      a: { shape: a.shape, data: aValues },
      b: { shape: b.shape, data: ratio === 1 ? bValues : bValues.map((x) => x * ratio) },
    });
  }
  if (missing.length) {
    throw new HollowcError(
      `no LoRA tensors for ${missing.length} module(s), e.g. ${missing.slice(0, 3).join(', ')} (file has keys like ${keys.slice(0, 2).join(', ')})`,
      file,
    );
  }
  return out;
}

/** A LoRA with a NaN or an infinity would poison every image it touches: refuse it by name. */
function finiteValues(values: Float32Array, key: string, file: string): Float32Array {
  const bad = values.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0)
    throw new HollowcError(`${key} holds ${values[bad]} at element ${bad}: the LoRA is broken (a diverged training run?)`, file);
  return values;
}

/**
 * A LoRA file's values for a compiled folder's trained targets, keyed by graph input name
 * (`<module>.lora_A.weight`), with the shapes checked against what was compiled.
 */
export function loraValuesForManifest(parsed: SafetensorsFile, file: string, manifest: CompileManifest): Map<string, Float32Array> {
  const trained = manifest.lora.targets.filter((t) => t.trained);
  const modules = loraValues(
    parsed,
    file,
    trained.map((t) => t.module),
    manifest.lora.rank,
    manifest.lora.alpha,
  );
  const values = new Map<string, Float32Array>();
  for (const t of trained) {
    const m = modules.get(t.module)!;
    if (m.a.shape.join() !== t.lora_A.shape.join() || m.b.shape.join() !== t.lora_B.shape.join()) {
      throw new HollowcError(
        `${t.module}: LoRA shapes [${m.a.shape}] / [${m.b.shape}] do not match the compiled [${t.lora_A.shape}] / [${t.lora_B.shape}]`,
        file,
      );
    }
    values.set(t.lora_A.name, m.a.data);
    values.set(t.lora_B.name, m.b.data);
  }
  return values;
}
