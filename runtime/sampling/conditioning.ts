/**
 * The conditioning rows a guided UNet call takes, for both runtimes (onnxruntime-node and the
 * browser page): the unconditional row's zero conditioning, rows stacked into one batch, and the
 * two-path graph's conditioning inputs (path 2 on the prompt, path 1 on the class prompt, each
 * after the negative row when guided). Pure: no files, no sessions.
 */
import { HollowcError } from '../../compiler/errors';
import { ENCODER_HIDDEN_STATES, TEXT_EMBEDS, TIME_IDS, baseInputName } from '../../compiler/manifest';

/** A prompt's conditioning: the text encoders' hidden states [T, D] and, for SDXL, the pooled embedding [P]. */
export interface Conditioning {
  encoderHiddenStates: { shape: number[]; data: Float32Array };
  textEmbeds?: { shape: number[]; data: Float32Array };
}

/** The conditioning of an empty prompt as SDXL's force_zeros_for_empty_prompt and the two-path sampler's default negative: zeros of `c`'s shapes. */
export function zeroConditioning(c: Conditioning): Conditioning {
  return {
    encoderHiddenStates: { shape: [...c.encoderHiddenStates.shape], data: new Float32Array(c.encoderHiddenStates.data.length) },
    ...(c.textEmbeds ? { textEmbeds: { shape: [...c.textEmbeds.shape], data: new Float32Array(c.textEmbeds.data.length) } } : {}),
  };
}

/** Rows of one size stacked into one [rows.length, ...] array; `what` names the input in the error when a row lacks it. */
export function stackRows(parts: readonly (Float32Array | undefined)[], what: string): Float32Array {
  const present = parts.map((p) => {
    if (!p)
      throw new HollowcError(`the model needs ${what} for every prompt (SDXL: give <prompt>.text_embeds.npy or a .safetensors prompt)`);
    return p;
  });
  const n = present[0].length;
  const bad = present.find((p) => p.length !== n);
  if (bad) throw new HollowcError(`prompt embeddings differ in size (${n} vs ${bad.length} values of ${what})`);
  const out = new Float32Array(present.length * n);
  present.forEach((p, i) => out.set(p, i * n));
  return out;
}

/** SDXL's time_ids for a latent [C, h, w]: original size, crop (0, 0), target size, in pixels. */
export function defaultTimeIds(latentShape: readonly number[]): Float32Array {
  const h = 8 * latentShape[1];
  const w = 8 * latentShape[2];
  return Float32Array.of(h, w, 0, 0, h, w);
}

export interface TwoPathConditioning {
  prompt: Conditioning;
  classPrompt: Conditioning;
  /** the unconditional row when guided (default: zeros) */
  negative?: Conditioning;
  guided: boolean;
  timeIds: Float32Array;
}

/**
 * The conditioning inputs of a two-path graph that `inputNames` holds, as data and dims: path 2's
 * rows [negative, prompt], path 1's [negative, class prompt] (one row each without guidance).
 */
export function twoPathConditioningFeeds(
  inputNames: ReadonlySet<string>,
  o: TwoPathConditioning,
): Map<string, { data: Float32Array; dims: number[] }> {
  const negative = o.negative ?? zeroConditioning(o.prompt);
  const pathTwo = o.guided ? [negative, o.prompt] : [o.prompt];
  const pathOne = o.guided ? [negative, o.classPrompt] : [o.classPrompt];
  const B = pathTwo.length;
  const [T, D] = o.prompt.encoderHiddenStates.shape;
  const P = o.prompt.textEmbeds?.data.length ?? 0;
  const feeds = new Map<string, { data: Float32Array; dims: number[] }>();
  const put = (name: string, data: () => Float32Array, dims: number[]) => {
    if (inputNames.has(name)) feeds.set(name, { data: data(), dims });
  };
  const ehs = (list: Conditioning[]) =>
    stackRows(
      list.map((c) => c.encoderHiddenStates.data),
      ENCODER_HIDDEN_STATES,
    );
  const te = (list: Conditioning[]) =>
    stackRows(
      list.map((c) => c.textEmbeds?.data),
      TEXT_EMBEDS,
    );
  put(ENCODER_HIDDEN_STATES, () => ehs(pathTwo), [B, T, D]);
  put(baseInputName(ENCODER_HIDDEN_STATES), () => ehs(pathOne), [B, T, D]);
  put(TEXT_EMBEDS, () => te(pathTwo), [B, P]);
  put(baseInputName(TEXT_EMBEDS), () => te(pathOne), [B, P]);
  put(
    TIME_IDS,
    () =>
      stackRows(
        pathTwo.map(() => o.timeIds),
        TIME_IDS,
      ),
    [B, o.timeIds.length],
  );
  return feeds;
}
