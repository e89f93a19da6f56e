/** personalize as a library function: runtime/personalize/ with the compiler handed in (the runtime never imports it). */
import { PersonalizeOptions, PersonalizeResult, personalize as runPersonalize } from '../../runtime/personalize';
import { compileFromSpec } from './compile-spec';

export type { PersonalizeOptions, PersonalizeResult };
export { identifierWords } from '../../runtime/personalize';

/** Photos and a prompt in, a personalized LoRA, validation images and report.html out (see runtime/personalize/). */
export function personalize(options: PersonalizeOptions): Promise<PersonalizeResult> {
  return runPersonalize({ ...options, compile: (unetModel, specFile, out) => compileFromSpec(unetModel, specFile, { out }) });
}
