/**
 * CLIP's byte-level BPE vocabulary, derived from OpenAI's merge list (models/data/clip) the way
 * transformers' CLIPTokenizer derives it, and the tokenizer.json object the fast CLIPTokenizer
 * serialises. Pure data: the writer (tokenizer-folder.ts) and the runtime tokenizer
 * (runtime/text-to-image/tokenizer.ts) both build on this, so the two can never disagree.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { HollowcError } from '../compiler/errors';
import { modelsDataPath } from './data-files';

export const CLIP_BPE_FILE = 'bpe_simple_vocab_16e6.txt.gz';
export const BOS_TOKEN = '<|startoftext|>';
export const EOS_TOKEN = '<|endoftext|>';
/** CLIP's context length: BOS + 75 text tokens + EOS. */
export const CLIP_MAX_LENGTH = 77;
/** 49152 - 256 - 2: CLIP keeps the merges that bring the vocabulary to 49408 with the two specials. */
export const CLIP_MERGES = 49152 - 256 - 2;
export const CLIP_VOCAB_SIZE = 256 * 2 + CLIP_MERGES + 2;

/**
 * CLIP's word regex (simple_tokenizer.py; Python's `re.IGNORECASE` is moot after lowercasing).
 * The fast tokenizer applies it as a Split with `invert: true`: the matches are the pieces.
 */
export const CLIP_SPLIT_REGEX = "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";

/**
 * GPT-2's bytes_to_unicode, in its dict order: printable Latin-1 bytes map to themselves, the
 * rest to U+0100 onwards. The order matters: it is the order of the first 256 vocabulary ids.
 */
export function byteUnicodeTable(): string[] {
  const bytes: number[] = [];
  const push = (lo: number, hi: number) => {
    for (let b = lo; b <= hi; b++) bytes.push(b);
  };
  push(0x21, 0x7e);
  push(0xa1, 0xac);
  push(0xae, 0xff);
  const chars = bytes.map((b) => String.fromCodePoint(b));
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(String.fromCodePoint(256 + extra++));
    }
  }
  return chars;
}

/** The merge list under models/data/clip/. */
export function clipDataFile(name = CLIP_BPE_FILE): string {
  return modelsDataPath(path.join('clip', name));
}

/** Parsed merge lists by file: a pipeline writes two tokenizer folders from one file. */
const mergeCache = new Map<string, readonly string[]>();

/** The first CLIP_MERGES merges ("a b") of OpenAI's file (line 0 is its `#version` header). */
export function clipMerges(file = clipDataFile()): readonly string[] {
  const cached = mergeCache.get(file);
  if (cached) return cached;
  let lines: string[];
  try {
    lines = zlib.gunzipSync(fs.readFileSync(file)).toString('utf8').split('\n');
  } catch (e) {
    throw new HollowcError(`cannot read the CLIP merge list: ${(e as Error).message}`, file);
  }
  const merges = lines.slice(1, 1 + CLIP_MERGES);
  if (merges.length !== CLIP_MERGES || merges.some((m) => m.split(' ').length !== 2)) {
    throw new HollowcError(`expected ${CLIP_MERGES} "a b" merges after the header`, file);
  }
  mergeCache.set(file, merges);
  return merges;
}

/**
 * CLIPTokenizer's vocabulary order: the 256 byte symbols, their `</w>` forms, one token per
 * merge (its two halves joined), then BOS = 49406 and EOS = 49407.
 */
export function clipVocabList(merges: readonly string[] = clipMerges()): string[] {
  const bytes = byteUnicodeTable();
  return [...bytes, ...bytes.map((b) => `${b}</w>`), ...merges.map((m) => m.replace(' ', '')), BOS_TOKEN, EOS_TOKEN];
}

export function vocabObject(list: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  list.forEach((token, id) => {
    out[token] = id;
  });
  return out;
}

/** An `added_tokens` entry of tokenizer.json. */
export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/**
 * The tokenizer.json the fast CLIPTokenizer writes (transformers' CLIPConverter): NFC, `\s+` ->
 * " ", lowercase; Split on CLIP's regex then ByteLevel without prefix space; BPE with `</w>`
 * end-of-word suffix; BOS/EOS around the text.
 */
export function clipTokenizerJson(
  vocab: Record<string, number>,
  merges: readonly string[],
  bos = BOS_TOKEN,
  eos = EOS_TOKEN,
): Record<string, unknown> {
  const special = (content: string): AddedTokenJson => {
    const id = vocab[content];
    if (id === undefined) throw new HollowcError(`special token ${JSON.stringify(content)} is not in the vocabulary`);
    return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true };
  };
  const added = [special(bos), ...(eos === bos ? [] : [special(eos)])];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'Lowercase' }],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CLIP_SPLIT_REGEX }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: [eos, vocab[eos]],
      cls: [bos, vocab[bos]],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: eos,
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: [...merges],
    },
  };
}
