/**
 * What `hollowc web --model <pipeline>` encoded at start for the page, which has no tokenizer or
 * text encoder: guidance's negative (the encoded "") and, with --prompt, a prompt other than the
 * store's instance prompt (one that puts the subject in a new context), in the store's
 * conditioning layout.
 */
import type { Conditioning } from '../../sampling/conditioning';
import { parseSafetensors } from '../../formats/safetensors-format';
import { conditioningOf } from '../../store/store-format';
import { SERVED_NEGATIVE_ID, SERVED_PROMPT_FILE, SERVED_PROMPT_ID, type ServedModelJson } from '../served-model';
import { fetchBytes } from './folder';

export interface ServedConditionings {
  prompt?: { text: string; conditioning: Conditioning };
  /** absent: guide with zeros (no --model, SDXL's force_zeros, or a text encoder the store does not match) */
  negative?: Conditioning;
}

/** The server's /model.json; {} from a static host without hollowc's server. `site` is the page's own URL. */
export async function fetchServedModelJson(site: string): Promise<ServedModelJson> {
  const r = await fetch(new URL('model.json', site));
  return r.ok ? ((await r.json()) as ServedModelJson) : {};
}

/** What the server encoded (nothing without --model). `site` is the page's own URL. */
export async function loadServedConditionings(site: string): Promise<ServedConditionings> {
  const json = await fetchServedModelJson(site);
  if (!json.prompt && !json.negative) return {};
  const file = new URL(`model/${SERVED_PROMPT_FILE}`, site).href;
  const { tensors } = parseSafetensors(await fetchBytes(file), SERVED_PROMPT_FILE);
  const conditioning = json.prompt ? conditioningOf(tensors, SERVED_PROMPT_ID) : undefined;
  const negative = json.negative ? conditioningOf(tensors, SERVED_NEGATIVE_ID) : undefined;
  if ((json.prompt && !conditioning) || (json.negative && !negative)) throw new Error(`${file}: a served conditioning is missing`);
  return { ...(json.prompt && { prompt: { text: json.prompt.text, conditioning: conditioning! } }), ...(negative && { negative }) };
}
