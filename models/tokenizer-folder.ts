/**
 * Writes a CLIP tokenizer folder the way transformers' `CLIPTokenizer.save_pretrained` lays it
 * out on the Hub (`tokenizer/` of every SD repo): vocab.json (sorted keys, indent 2), merges.txt
 * (`#version: 0.2` header), tokenizer_config.json and special_tokens_map.json, and optionally the
 * fast tokenizer's tokenizer.json. Built from the real merge list, so ids are the real ones.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../compiler/errors';
import { writeFileAtomic } from '../compiler/atomic-files';
import { BOS_TOKEN, CLIP_MAX_LENGTH, clipMerges, clipTokenizerJson, clipVocabList, EOS_TOKEN, vocabObject } from './clip-bpe';

/** SD 1.x and SDXL's first tokenizer pad with EOS; OpenCLIP ones (SD 2.x, SDXL's tokenizer_2) with `!` (id 0). */
export type ClipPadToken = typeof EOS_TOKEN | '!';

export interface TokenizerFolderOptions {
  padToken: ClipPadToken;
  /** also write tokenizer.json (what `CLIPTokenizerFast.save_pretrained` adds) */
  tokenizerJson?: boolean;
  /** `name_or_path` recorded in tokenizer_config.json */
  nameOrPath?: string;
  /** Padded prompt length (default CLIP's 77); the text encoder must be built for it. */
  maxLength?: number;
}

/** The AddedToken form transformers serialises for bos/eos/unk. */
function addedToken(content: string): Record<string, unknown> {
  return { __type: 'AddedToken', content, lstrip: false, normalized: true, rstrip: false, single_word: false };
}

/** JSON as Python's json.dumps(indent=2, sort_keys=True, ensure_ascii=False) writes it (BMP keys). */
function sortedJson(obj: Record<string, number>): string {
  const keys = Object.keys(obj).sort();
  const sorted: Record<string, number> = {};
  for (const k of keys) sorted[k] = obj[k];
  return JSON.stringify(sorted, null, 2) + '\n';
}

export function writeTokenizerFolder(dir: string, options: TokenizerFolderOptions): void {
  const merges = clipMerges();
  const vocab = vocabObject(clipVocabList(merges));
  if (vocab[options.padToken] === undefined)
    throw new HollowcError(`pad token ${JSON.stringify(options.padToken)} is not in the CLIP vocabulary`);
  fs.mkdirSync(dir, { recursive: true });
  const json = (obj: unknown) => JSON.stringify(obj, null, 2) + '\n';
  writeFileAtomic(path.join(dir, 'vocab.json'), sortedJson(vocab));
  writeFileAtomic(path.join(dir, 'merges.txt'), `#version: 0.2\n${merges.join('\n')}\n`);
  const { __type: _t, ...plainEos } = addedToken(EOS_TOKEN);
  const { __type: _b, ...plainBos } = addedToken(BOS_TOKEN);
  writeFileAtomic(
    path.join(dir, 'special_tokens_map.json'),
    json({ bos_token: plainBos, eos_token: plainEos, pad_token: options.padToken, unk_token: plainEos }),
  );
  writeFileAtomic(
    path.join(dir, 'tokenizer_config.json'),
    json({
      add_prefix_space: false,
      bos_token: addedToken(BOS_TOKEN),
      do_lower_case: true,
      eos_token: addedToken(EOS_TOKEN),
      errors: 'replace',
      model_max_length: options.maxLength ?? CLIP_MAX_LENGTH,
      name_or_path: options.nameOrPath ?? 'openai/clip-vit-large-patch14',
      pad_token: options.padToken,
      special_tokens_map_file: './special_tokens_map.json',
      tokenizer_class: 'CLIPTokenizer',
      unk_token: addedToken(EOS_TOKEN),
    }),
  );
  if (options.tokenizerJson) writeFileAtomic(path.join(dir, 'tokenizer.json'), json(clipTokenizerJson(vocab, merges)));
}
