/**
 * `hollowc personalize`: the command's options, over the library's personalize (cli/api/personalize.ts).
 */
import { Command, Option } from 'commander';
import { ExecutionProvider } from '../runtime/ort/session';
import { PersonalizeOptions, personalize } from './api/personalize';
import { epOption, fallbackOption, parseCount, parseNumber, parseSeed, reportProvider, threadsOption } from './options';

const collect = (value: string, previous: string[] = []) => [...previous, value];

export function registerPersonalize(program: Command): void {
  program
    .command('personalize')
    .description(
      'photos and a prompt in, a personalized LoRA (diffusers + kohya) or a fine-tuned UNet (--train-base: ONNX pipeline folder + diffusers UNet folder), validation images and report.html out',
    )
    .requiredOption('--model <folder>', 'pipeline folder (optimum ONNX layout, or hollowc model build --pipeline)')
    .requiredOption('--photos <dir>', 'folder of photos of the subject (JPEG, PNG, WebP)')
    .requiredOption('--prompt <text>', 'the personalized prompt, with an identifier (e.g. "a photo of sks dog")')
    .requiredOption('--class-prompt <text>', 'the class prompt (e.g. "a photo of a dog"): the base path runs on it')
    .requiredOption('-o, --out <dir>', 'run folder (reruns reuse what is done there)')
    .option('--preset <name>', 'hollow preset (default "39.2%"; SDXL: "sdxl-mid"; "none": nothing hollowed, plain LoRA on the whole UNet)')
    .option('--spec <file>', '.hollow spec instead of a preset')
    .option('--rank <n>', 'LoRA rank (default 4; with --train-base: LoRA beside the base weights only when given)', parseCount)
    .option('--alpha <n>', 'LoRA alpha (default: the rank)', parseNumber)
    .option('--lora-targets <globs...>', 'LoRA target modules (default: the attention projections; e.g. "conv1" "conv2" for conv LoRA)')
    .option(
      '--train-base <globs...>',
      'train the base weights of these modules (the spec\'s train base; "*": full fine-tuning, "up_blocks.*": a part; repeatable). The run then exports the fine-tuned UNet to run/pipeline/ (generate --model) and run/unet-diffusers/, and makes its validation images with it; hollowc web cannot open such a run',
    )
    .addOption(
      new Option(
        '--optimizer-state <precision>',
        "the AdamW moments (default fp32; 8bit: the spec's optimizer adamw8bit, a quarter of the moments' memory, host optimizer only: no train.onnx, so hollowc web cannot open the run)",
      ).choices(['fp32', '8bit']),
    )
    .addOption(
      new Option(
        '--gradients <precision>',
        "how grads.onnx hands the gradients to the optimizer (default fp32; fp16: the spec's gradients fp16, each scaled into float16 by its largest value, half the gradients' memory at each step's end)",
      ).choices(['fp32', 'fp16']),
    )
    .option('--steps <n>', 'training steps', parseCount, 400)
    .option('--lr <x>', 'learning rate', parseNumber, 1e-4)
    .option('--samples <n>', 'precomputed samples (paper: 200)', parseCount, 200)
    .option('--class-images <n>', 'prior-preservation images to generate with the base pipeline (cached in the run folder)', parseCount)
    .option('--class-dir <dir>', 'prior-preservation images to use instead')
    .option('--prior-weight <x>', "weight of the class samples' loss (default: the spec's loss prior_weight, 1)", parseNumber)
    .option('--resolution <px>', 'training and image size (default: the UNet sample_size times the VAE factor)', parseCount)
    .option('--flip', 'also train on the mirror image of each photo')
    .option('--validation-prompt <text>', 'a prompt for the validation images (repeatable; default: --prompt)', collect)
    .option('--validation-steps <n>', 'denoising steps of the validation images', parseCount, 25)
    .option('--class-steps <n>', 'denoising steps of generated class images', parseCount, 25)
    .option('--guidance <x>', 'classifier-free guidance of generated images', parseNumber, 7.5)
    .option('--seed <n>', 'seed of everything random', parseSeed, 0)
    .addOption(epOption())
    .addOption(fallbackOption())
    .addOption(threadsOption())
    .addOption(new Option('--quiet', 'no progress bars'))
    .action(async (o: Record<string, unknown>) => {
      await personalize({
        model: o.model as string,
        photos: o.photos as string,
        prompt: o.prompt as string,
        classPrompt: o.classPrompt as string,
        out: o.out as string,
        preset: o.preset as string | undefined,
        spec: o.spec as string | undefined,
        rank: o.rank as number | undefined,
        alpha: o.alpha as number | undefined,
        loraTargets: o.loraTargets as string[] | undefined,
        trainBase: o.trainBase as string[] | undefined,
        optimizerState: o.optimizerState as PersonalizeOptions['optimizerState'],
        gradients: o.gradients as PersonalizeOptions['gradients'],
        steps: o.steps as number,
        lr: o.lr as number,
        samples: o.samples as number,
        classImages: o.classImages as number | undefined,
        classDir: o.classDir as string | undefined,
        priorWeight: o.priorWeight as number | undefined,
        resolution: o.resolution as number | undefined,
        flip: !!o.flip,
        validationPrompts: o.validationPrompt as string[] | undefined,
        validationSteps: o.validationSteps as number,
        classSteps: o.classSteps as number,
        guidance: o.guidance as number,
        seed: o.seed as number,
        ep: o.ep as ExecutionProvider,
        fallbackToCpu: !!o.cpuFallback,
        threads: o.threads as number | undefined,
        reportProvider,
        progress: o.quiet ? { write: () => true } : undefined,
      });
    });
}
