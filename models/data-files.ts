/** Files under models/data/, found upwards from here: the same code runs from models/ and dist/models/ (tsc copies no data). */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../compiler/errors';

/** The path of `relative` (e.g. "clip/bpe_simple_vocab_16e6.txt.gz") under the first models/data/ above this file. */
export function modelsDataPath(relative: string): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    for (const candidate of [path.join(dir, 'data', relative), path.join(dir, 'models', 'data', relative)]) {
      if (fs.existsSync(candidate)) return candidate;
    }
  }
  throw new HollowcError(`data file ${relative} not found above ${__dirname} (expected models/data/${relative})`);
}
