/** `hollowc embed`: a prompt's conditioning from a pipeline folder's text encoders, as .npy files. */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { HollowcError } from '../compiler/errors';
import { writeNpy } from '../runtime/formats/npy';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { encodePrompts } from '../runtime/text-to-image/text-to-image';
import { TuningCli, out, sessionOptions, tuning } from './options';
import { ExecutionProvider } from '../runtime/ort/session';

interface EmbedCli extends TuningCli {
  model: string;
  prompt: string;
  output: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

/** Where the pooled embedding goes: `<name>.text_embeds.npy` next to `<name>.npy` (what readConditioning looks for). */
export function textEmbedsFile(file: string): string {
  return file.replace(/\.npy$/, '.text_embeds.npy');
}

export function registerEmbed(program: Command): void {
  const command = program
    .command('embed')
    .description(
      "encode a prompt with a pipeline folder's text encoders: encoder_hidden_states .npy [1, 77, D] (SDXL: also <name>.text_embeds.npy [1, P])",
    )
    .requiredOption('--model <folder>', 'a pipeline folder (optimum ONNX layout)')
    .requiredOption('--prompt <text>', 'the prompt')
    .requiredOption('-o, --output <file.npy>', 'where to write the embedding');
  sessionOptions(command).action(async (o: EmbedCli) => {
    if (!o.output.endsWith('.npy'))
      throw new HollowcError(
        "the output must be a .npy file (SDXL's pooled embedding goes next to it as <name>.text_embeds.npy)",
        o.output,
      );
    const folder = openPipelineFolder(o.model);
    const [c] = await encodePrompts(folder, [o.prompt], { ep: o.ep, fallbackToCpu: o.cpuFallback, ...tuning(o) });
    fs.mkdirSync(path.dirname(path.resolve(o.output)), { recursive: true });
    writeNpy(o.output, { dtype: 'float32', shape: [1, ...c.encoderHiddenStates.shape], data: c.encoderHiddenStates.data });
    const files = [o.output];
    if (c.textEmbeds) {
      writeNpy(textEmbedsFile(o.output), { dtype: 'float32', shape: [1, ...c.textEmbeds.shape], data: c.textEmbeds.data });
      files.push(textEmbedsFile(o.output));
    }
    out(
      `embedded ${JSON.stringify(o.prompt)} with ${folder.textEncoders.map((t) => t.name).join(' + ')}: encoder_hidden_states [1, ${c.encoderHiddenStates.shape.join(', ')}]${c.textEmbeds ? `, text_embeds [1, ${c.textEmbeds.shape[0]}]` : ''}`,
    );
    out(`  wrote ${files.join(', ')}`);
  });
}
