/** prompts: the text encoders on the prompt and the class prompt -> run/data/*_prompt.safetensors. */
import * as fs from 'fs';
import * as path from 'path';
import { writeConditioning } from '../../store/training-data';
import { encodePrompts } from '../../text-to-image/text-to-image';
import { Stage, killPoint } from '../stage-runner';
import { StageContext } from './context';

const PROMPT_FILES = ['instance_prompt', 'class_prompt'].map((n) => `${n}.safetensors`);

export function promptsStage(ctx: StageContext): Stage {
  const { s, dirs } = ctx;
  const files = PROMPT_FILES.map((f) => path.join(dirs.data, f));
  return {
    name: 'prompts',
    key: ctx.keys.prompts,
    valid: () => files.every((f) => fs.existsSync(f)),
    clean: () => files.forEach((f) => fs.rmSync(f, { force: true })),
    run: async () => {
      const [inst, cls] = await encodePrompts(s.folder, [s.options.prompt, s.options.classPrompt], s.session);
      fs.mkdirSync(dirs.data, { recursive: true });
      writeConditioning(files[0], inst);
      killPoint('prompts');
      writeConditioning(files[1], cls);
      return {
        summary: `encoded the prompt and the class prompt with ${s.folder.textEncoders.length} text encoder(s): [${inst.encoderHiddenStates.shape.join(', ')}]${inst.textEmbeds ? ` + pooled [${inst.textEmbeds.shape}]` : ''}`,
      };
    },
  };
}
