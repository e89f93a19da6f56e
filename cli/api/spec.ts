/** A `.hollow` spec file parsed and checked against the UNet it is for. */
import * as fs from 'fs';
import { HollowcError } from '../../compiler/errors';
import { SAMPLE } from '../../compiler/manifest';
import { checkSpec, parseSpec, ResolvedSpec, Spec, specErrorAt } from '../../dsl';
import { latentMultipleOfLayout, sideProblem } from '../../models/latent-sizes';
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

/** The `shape sample` line's latent height and width against what the UNet takes, at the line:col of the side it cannot. */
function checkLatentSides(spec: Spec, unet: LoadedUNet): void {
  const sample = spec.shapes.find((s) => s.input.value === SAMPLE);
  if (!sample || sample.dims.length !== 4) return;
  const multiple = latentMultipleOfLayout(unet.analysis.layout);
  for (const [axis, name] of [
    [2, 'latent height'],
    [3, 'latent width'],
  ] as const) {
    const problem = sideProblem(name, sample.dims[axis].value, multiple);
    if (problem) throw specErrorAt(spec, sample.dims[axis], problem);
  }
}

/** Parses a spec file and checks it against the model. */
export function checkSpecFile(unet: LoadedUNet, specFile: string): CheckedSpec {
  const text = readSpecFile(specFile);
  const spec = parseSpec(text, specFile);
  const resolved = checkSpec(spec, modelFacts(unet.model.graph, unet.analysis));
  checkLatentSides(spec, unet);
  return { resolved, file: specFile, text };
}
