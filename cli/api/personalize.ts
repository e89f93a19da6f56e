/** personalize as a library function: runtime/personalize/ with the compiler and export-unet handed in (the runtime never imports them). */
import { PersonalizeOptions, PersonalizeResult, personalize as runPersonalize } from '../../runtime/personalize';
import { compileFromSpec } from './compile-spec';
import { exportUnet } from './export-unet';

export type { PersonalizeOptions, PersonalizeResult };
export { identifierWords } from '../../runtime/personalize';

/** Photos and a prompt in, a personalized LoRA or fine-tuned UNet, validation images and report.html out (see runtime/personalize/). */
export function personalize(options: PersonalizeOptions): Promise<PersonalizeResult> {
  return runPersonalize({
    ...options,
    compile: (unetModel, specFile, out) => compileFromSpec(unetModel, specFile, { out }),
    exportUnet: (compiled, pipeline, outputs) => {
      const r = exportUnet({ out: compiled, format: 'onnx', output: outputs.onnx, pipeline });
      exportUnet({ out: compiled, format: 'diffusers', output: outputs.diffusers });
      return { changed: r.changed, parameters: r.parameters };
    },
  });
}
