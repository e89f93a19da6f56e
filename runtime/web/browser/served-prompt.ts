/**
 * The prompt `hollowc web --model <pipeline> --prompt <text>` encoded at start: the page has no
 * tokenizer or text encoder, so a prompt other than the store's instance prompt (one that puts the
 * subject in a new context) comes from the server, in the store's conditioning layout.
 */
import type { Conditioning } from '../../sampling/conditioning';
import { parseSafetensors } from '../../formats/safetensors-format';
import { conditioningOf } from '../../store/store-format';
import { SERVED_NEGATIVE_ID, SERVED_PROMPT_FILE, SERVED_PROMPT_ID } from '../served-model';
import { fetchBytes } from './folder';

interface ModelJson {
  prompt?: { text: string; negative: boolean };
}

/**
 * The served prompt and the negative to guide it with (the encoded "", as textToImage does; absent
 * where the pipeline's negative is zeros), or undefined when the server has none. `site` is the
 * page's own URL.
 */
export async function loadServedPrompt(
  site: string,
): Promise<{ text: string; conditioning: Conditioning; negative?: Conditioning } | undefined> {
  const r = await fetch(new URL('model.json', site));
  if (!r.ok) return undefined;
  const p = ((await r.json()) as ModelJson).prompt;
  if (!p) return undefined;
  const file = new URL(`model/${SERVED_PROMPT_FILE}`, site).href;
  const { tensors } = parseSafetensors(await fetchBytes(file), SERVED_PROMPT_FILE);
  const conditioning = conditioningOf(tensors, SERVED_PROMPT_ID);
  const negative = p.negative ? conditioningOf(tensors, SERVED_NEGATIVE_ID) : undefined;
  if (!conditioning || (p.negative && !negative)) throw new Error(`${file}: the served prompt's conditioning is missing`);
  return { text: p.text, conditioning, ...(negative && { negative }) };
}
