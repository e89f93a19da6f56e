/** A `.hollow` spec file parsed and checked against the UNet it is for. */
import * as fs from 'fs';
import { HollowcError } from '../compiler/errors';
import { checkSpec, parseSpec, ResolvedSpec } from '../dsl';
import { modelFacts } from './spec-facts';
import { LoadedUNet } from './unet';

export interface CheckedSpec {
  resolved: ResolvedSpec;
  file: string;
  text: string;
}

function readSpecFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new HollowcError(`cannot read spec: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
}

/** Parses a spec file and checks it against the model. */
export function checkSpecFile(unet: LoadedUNet, specFile: string): CheckedSpec {
  const text = readSpecFile(specFile);
  return { resolved: checkSpec(parseSpec(text, specFile), modelFacts(unet.model.graph, unet.analysis)), file: specFile, text };
}
