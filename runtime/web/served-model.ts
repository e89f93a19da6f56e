/**
 * What `hollowc web --model <pipeline>` serves besides the VAE decoder, named once for the server
 * and the page: "" (guidance's negative, as `generate` takes it) and, with --prompt, the prompt,
 * encoded at start by the pipeline's text encoder(s), in the store's conditioning layout
 * (store-format.ts conditioningTensors), under /model/. /model.json says which are there.
 */
export const SERVED_PROMPT_FILE = 'prompt.safetensors';
export const SERVED_PROMPT_ID = 0;
export const SERVED_NEGATIVE_ID = 1;

/** /model.json: {} without --model. */
export interface ServedModelJson {
  vae_decoder?: { weights: string[] };
  /** with --prompt: what the page samples instead of the store's instance prompt */
  prompt?: { text: string };
  /**
   * the encoded "" is served (the negative the pipeline trained its dropped captions on); false
   * where the pipeline's negative is zeros (SDXL's force_zeros) or its text encoder could not
   * give one the folder's shape, and the page guides with zeros
   */
  negative?: boolean;
}
