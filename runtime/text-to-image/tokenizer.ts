/**
 * CLIP tokenization of prompts for the SD text encoders: a tokenizer folder (the Hub layout:
 * vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, or a tokenizer.json)
 * run through @huggingface/tokenizers, then what CLIPTokenizer(padding="max_length",
 * truncation=True) adds and that library does not: truncation to BOS + 75 + EOS and padding to
 * model_max_length with the folder's own pad token (SD 1.x: `<|endoftext|>`, SD 2.x: `!`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer } from '@huggingface/tokenizers';
import { HollowcError } from '../../compiler/errors';
import { BOS_TOKEN, CLIP_MAX_LENGTH, clipTokenizerJson, EOS_TOKEN } from '../../models/clip-bpe';
import { readJsonObject } from './pipeline-folder';

export interface TokenizedPrompt {
  /** model_max_length ids: BOS, text, EOS, pad */
  readonly inputIds: number[];
  /** 1 for BOS, text and EOS, 0 for padding */
  readonly attentionMask: number[];
  /** whether text tokens were cut to fit */
  readonly truncated: boolean;
}

type Json = Record<string, unknown>;

function readJson(file: string, dir: string): Json {
  const what = `tokenizer folder: ${path.basename(file)}`;
  return readJsonObject(file, dir, what, `${what} is missing`);
}

function readOptionalJson(file: string, dir: string): Json {
  return fs.existsSync(file) ? readJson(file, dir) : {};
}

/** A special token as transformers stores it: a string or an AddedToken `{content, ...}`. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return undefined;
}

/** merges.txt: an optional `#version` header, then one "a b" merge per line. */
function parseMerges(text: string, dir: string): string[] {
  const lines = text.split(/\r?\n/).filter((l, i) => l.length > 0 && !(i === 0 && l.startsWith('#version')));
  const bad = lines.findIndex((l) => l.split(' ').length !== 2);
  if (bad >= 0) throw new HollowcError(`tokenizer folder: merges.txt entry ${bad + 1} is not "a b": ${JSON.stringify(lines[bad])}`, dir);
  return lines;
}

function tokenizerObject(dir: string): Json {
  const tokenizerJson = path.join(dir, 'tokenizer.json');
  if (fs.existsSync(tokenizerJson)) {
    const obj = readJson(tokenizerJson, dir);
    const model = obj.model as Json | undefined;
    if (model?.type !== 'BPE')
      throw new HollowcError(`tokenizer folder: tokenizer.json model is ${JSON.stringify(model?.type)}, expected CLIP's BPE`, dir);
    return obj;
  }
  const vocabFile = path.join(dir, 'vocab.json');
  const mergesFile = path.join(dir, 'merges.txt');
  if (!fs.existsSync(vocabFile)) throw new HollowcError('tokenizer folder has no vocab.json (nor tokenizer.json)', dir);
  if (!fs.existsSync(mergesFile)) throw new HollowcError('tokenizer folder has vocab.json but no merges.txt', dir);
  const vocab = readJson(vocabFile, dir);
  for (const [token, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id))
      throw new HollowcError(`tokenizer folder: vocab.json id of ${JSON.stringify(token)} is ${JSON.stringify(id)}, not an integer`, dir);
  }
  return clipTokenizerJson(vocab as Record<string, number>, parseMerges(fs.readFileSync(mergesFile, 'utf8'), dir));
}

export class ClipTokenizer {
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;

  private constructor(
    readonly dir: string,
    private readonly tokenizer: Tokenizer,
    readonly maxLength: number,
    readonly padToken: string,
    bos: string,
    eos: string,
  ) {
    const id = (token: string, role: string): number => {
      const v = tokenizer.token_to_id(token);
      if (v === undefined) throw new HollowcError(`tokenizer folder: ${role} token ${JSON.stringify(token)} is not in the vocabulary`, dir);
      return v;
    };
    this.bosTokenId = id(bos, 'bos');
    this.eosTokenId = id(eos, 'eos');
    this.padTokenId = id(padToken, 'pad');
  }

  static load(dir: string): ClipTokenizer {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new HollowcError('tokenizer folder not found (or not a folder)', dir);
    // tokenizer_config.json wins over special_tokens_map.json, as in transformers.
    const special = readOptionalJson(path.join(dir, 'special_tokens_map.json'), dir);
    const config = { ...special, ...readOptionalJson(path.join(dir, 'tokenizer_config.json'), dir) };
    const maxLength = config.model_max_length ?? CLIP_MAX_LENGTH;
    if (typeof maxLength !== 'number' || !Number.isInteger(maxLength) || maxLength < 2 || maxLength > 1 << 20) {
      throw new HollowcError(`tokenizer folder: model_max_length ${JSON.stringify(maxLength)} is not an integer in 2..${1 << 20}`, dir);
    }
    const obj = tokenizerObject(dir);
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(obj, config);
    } catch (e) {
      throw new HollowcError(`tokenizer folder: cannot build the tokenizer (${(e as Error).message})`, dir);
    }
    // CLIPTokenizer's defaults: EOS doubles as pad and unk.
    const bos = tokenContent(config.bos_token) ?? BOS_TOKEN;
    const eos = tokenContent(config.eos_token) ?? EOS_TOKEN;
    const pad = tokenContent(config.pad_token) ?? eos;
    return new ClipTokenizer(dir, tokenizer, maxLength, pad, bos, eos);
  }

  /** The text's tokens, without BOS/EOS (for inspecting how a prompt splits). */
  tokenize(text: string): string[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).tokens;
  }

  encode(text: string): TokenizedPrompt {
    const ids = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const room = this.maxLength - 2;
    const kept = ids.slice(0, room);
    const inputIds = [this.bosTokenId, ...kept, this.eosTokenId];
    const attentionMask = inputIds.map(() => 1);
    while (inputIds.length < this.maxLength) {
      inputIds.push(this.padTokenId);
      attentionMask.push(0);
    }
    return { inputIds, attentionMask, truncated: ids.length > room };
  }

  /** `input_ids` for a batch of prompts, int64 [texts.length, maxLength] row-major (the text encoders' input). */
  encodeBatch(texts: readonly string[]): BigInt64Array {
    const out = new BigInt64Array(texts.length * this.maxLength);
    texts.forEach((t, i) => out.set(this.encode(t).inputIds.map(BigInt), i * this.maxLength));
    return out;
  }
}

export function loadTokenizer(dir: string): ClipTokenizer {
  return ClipTokenizer.load(dir);
}
