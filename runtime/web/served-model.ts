/**
 * What `hollowc web --model <pipeline> --prompt <text>` serves besides the VAE decoder, named
 * once for the server and the page: the prompt and "" (guidance's negative) encoded at start, in
 * the store's conditioning layout (store-format.ts conditioningTensors), under /model/.
 */
export const SERVED_PROMPT_FILE = 'prompt.safetensors';
export const SERVED_PROMPT_ID = 0;
export const SERVED_NEGATIVE_ID = 1;
