/**
 * The prompt `hollowc web --model <pipeline> --prompt <text>` encoded at start (its /model.json):
 * the page has no tokenizer or text encoder, so a prompt other than the store's instance prompt
 * (one that puts the subject in a new context) comes from the server as conditioning.
 */
import type { Conditioning } from '../../sampling/conditioning';

interface Plain {
  shape: number[];
  data: number[];
}

interface PlainConditioning {
  encoder_hidden_states: Plain;
  text_embeds?: Plain;
}

interface ModelJson {
  prompt?: PlainConditioning & { text: string; negative?: PlainConditioning };
}

const floats = (t: Plain) => ({ shape: t.shape, data: Float32Array.from(t.data) });
const conditioning = (c: PlainConditioning): Conditioning => ({
  encoderHiddenStates: floats(c.encoder_hidden_states),
  ...(c.text_embeds && { textEmbeds: floats(c.text_embeds) }),
});

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
  return { text: p.text, conditioning: conditioning(p), ...(p.negative && { negative: conditioning(p.negative) }) };
}
