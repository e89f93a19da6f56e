/** `hollowc generate --model <pipeline folder>`: its options checked, then generateFromPipeline (cli/api/generate-pipeline.ts). */
import { HollowcError } from '../compiler/errors';
import { ProgressLine } from '../runtime/progress';
import { SchedulerName, TimestepSpacing } from '../runtime/sampling/schedulers';
import { ExecutionProvider } from '../runtime/ort/session';
import { PipelineGenerateResult, generateFromPipeline } from './api/generate-pipeline';
import { TuningCli, flagName, out, tuning } from './options';

export interface GenerateCli extends TuningCli {
  promptEmbeds?: string;
  classEmbeds?: string;
  negativeEmbeds?: string;
  steps: number;
  guidance: number;
  scheduler: SchedulerName;
  spacing: TimestepSpacing;
  seed: number;
  latentsOut?: string;
  latentsIn?: string;
  model?: string;
  prompt?: string;
  negativePrompt?: string;
  width?: number;
  height?: number;
  numImages?: number;
  initLatents?: string;
  output?: string;
  run?: string;
  classPrompt?: string;
  latentSize?: number[];
  lora?: string;
  baked?: string;
  ep: ExecutionProvider;
  cpuFallback?: boolean;
}

export async function generateWithModel(dir: string | undefined, o: GenerateCli, explicit: (name: string) => boolean): Promise<void> {
  if (dir)
    throw new HollowcError(`with --model, give the compiled folder as --run ${dir} (or drop --model to sample latents from embeddings)`);
  const embeddingsOnly = ['promptEmbeds', 'classEmbeds', 'negativeEmbeds', 'latentsIn', 'latentSize', 'baked'].filter(explicit);
  if (embeddingsOnly.length) {
    const hint: Record<string, string> = {
      promptEmbeds: '--prompt',
      classEmbeds: '--class-prompt',
      negativeEmbeds: '--negative-prompt',
      latentsIn: '--init-latents',
      latentSize: '--width/--height',
    };
    throw new HollowcError(
      `${flagName(embeddingsOnly[0])} is for generate <out> (embeddings); with --model use ${hint[embeddingsOnly[0]] ?? '--lora'}`,
    );
  }
  if (o.prompt === undefined) throw new HollowcError('generate --model needs --prompt "..."');
  if (o.classPrompt !== undefined && !o.run)
    throw new HollowcError("--class-prompt is the base path's prompt of --run <out>: give --run too");
  if (!o.output && !o.latentsOut) throw new HollowcError('give -o image.png (and/or --latents-out latents.npy)');
  let progress: ProgressLine | undefined;
  let result: PipelineGenerateResult;
  try {
    result = await generateFromPipeline({
      model: o.model!,
      prompt: o.prompt,
      negativePrompt: o.negativePrompt,
      width: o.width,
      height: o.height,
      numImages: o.numImages,
      initLatents: o.initLatents,
      output: o.output,
      latentsOut: o.latentsOut,
      run: o.run,
      classPrompt: o.classPrompt,
      lora: o.lora,
      steps: o.steps,
      guidance: o.guidance,
      scheduler: explicit('scheduler') ? o.scheduler : undefined,
      spacing: explicit('spacing') ? o.spacing : undefined,
      seed: o.seed,
      session: { ep: o.ep, fallbackToCpu: o.cpuFallback, ...tuning(o) },
      onStep: (done, total) => {
        progress ??= new ProgressLine('step', total, process.stderr);
        progress.update(done);
      },
    });
  } finally {
    progress?.finish();
  }
  for (const line of result.summary) out(line);
}
