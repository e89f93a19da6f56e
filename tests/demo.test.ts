/**
 * `hollowc demo` on the committed world pipeline (models/data/world-pipeline), and the learning test
 * of issue 32: a short personalization on fixed seeds must put the subject where its photos never
 * did (subject fidelity, scored from the pixels, well above the base model's) while the 39.2% cut
 * keeps the prompt (background and size right). Gradients can be exact while learning is broken;
 * breaking one thing on purpose in a copy of the tree, on the committed pipeline (run 6,
 * 2026-12-07): timesteps drawn from [0, 100) only gave subject fidelity 0.254, prompt fidelity
 * 0.958, and validation latents further from the photos' than the base's (1.034 vs 0.844); a
 * v-prediction target for this epsilon model 0.173, 0.500 and 5.19. Both fail here (bounds: 0.2,
 * 0.75, closer than 0.9x the base's). On run 5, weighting instance samples 0.1 and class samples 1
 * was not caught (with batch 1 and the two kinds of sample alternating, AdamW's normalization
 * absorbs a constant per-sample weight).
 */
import * as fs from 'fs';
import * as path from 'path';
import { DEMO_LR, DEMO_STEPS, DemoSummary, runDemo } from '../cli/demo';
import { WORLD_RECORD_FILE, committedWorldPipeline, materializeWorldPipeline, readWorldRecord } from '../cli/api/world-record';
import { tempDir } from './support/fixture';
import type { ChildProcess } from 'child_process';
import { SUBJECT_NOUNS, parseCaption, scoreImage, subjectById, subjectFidelity } from '../models/world';
import { CHROMIUM, launchChromium, startWebServer, watchedPage } from './support/browser';
import { openPipelineFolder } from '../runtime/text-to-image/pipeline-folder';
import { encodePrompts } from '../runtime/text-to-image/text-to-image';
import { parseSafetensors } from '../runtime/formats/safetensors-format';
import { conditioningOf } from '../runtime/store/store-format';
import { SERVED_NEGATIVE_ID, SERVED_PROMPT_FILE, SERVED_PROMPT_ID } from '../runtime/web/served-model';
import { startWebServer as startLibraryServer } from '../runtime/web/server';

let demo: DemoSummary;
const lines: string[] = [];

const servers: ChildProcess[] = [];

beforeAll(async () => {
  demo = await runDemo({ out: path.join(tempDir('hollowc-demo-'), 'demo'), log: (l) => lines.push(l) });
}, 300_000);

afterAll(() => {
  for (const s of servers) s.kill('SIGTERM');
});

// Measured on the committed pipeline at the demo's defaults (2026-12-07): subject fidelity 0.112 base -> 0.302
// personalized, prompt fidelity 0.875 -> 1.000 (4 prompts x 2 seeds); the validation image's latents 0.674
// from the photos' mean latent, the base's 0.844. The bounds leave room for another CPU's rounding, not for a
// LoRA that learned nothing (lift 0), learned the wrong thing or washed the prompt out.
const MIN_SUBJECT_FIDELITY = 0.2;
const MIN_LIFT = 0.1;
const MIN_PROMPT_FIDELITY = 0.75;
const MAX_LATENT_DISTANCE_RATIO = 0.9;

test('the demo personalizes the committed world pipeline: the subject appears in contexts its photos never had', () => {
  const text = lines.join('\n');
  expect(text).toContain('the world pipeline hollowc trained itself');
  expect(text).toContain('personalized on 5 photos of the subject');
  expect(text).toMatch(/\[1\/9\] compile: hollowed .*; trains LoRA rank 8/);
  const n = demo.base.length;
  expect(n).toBe(demo.personalized.length);
  expect(n).toBeGreaterThanOrEqual(8);
  // same prompts and seeds on both sides
  expect(demo.personalized.map((i) => [i.prompt, i.seed])).toEqual(demo.base.map((i) => [i.prompt, i.seed]));
  expect(demo.subjectFidelity.personalized).toBeGreaterThan(MIN_SUBJECT_FIDELITY);
  expect(demo.subjectFidelity.personalized - demo.subjectFidelity.base).toBeGreaterThan(MIN_LIFT);
  // the cut and the LoRA keep what the prompt asks for: its background and size
  expect(demo.promptFidelity.personalized).toBeGreaterThanOrEqual(MIN_PROMPT_FIDELITY);
  expect(demo.result.loss!.after).toBeLessThan(demo.result.loss!.before);
  // the validation image (a context the photos never had) moved toward the photos' latents
  const { base, personalized } = demo.result.subject!;
  expect(personalized / base).toBeLessThan(MAX_LATENT_DISTANCE_RATIO);
});

test("the demo's report shows the photos, then base and personalized images side by side with their scores", () => {
  const html = fs.readFileSync(demo.report, 'utf8');
  // 5 photos + a base and a personalized image per prompt and seed, all embedded
  expect(html.match(/data:image\/png;base64,/g)?.length).toBe(5 + 2 * demo.base.length);
  expect(html.match(/<tr><td>a (small|large) sks house on a \w+ background<\/td>/g)?.length).toBe(demo.base.length);
  expect(html).toContain(`<b>${demo.subjectFidelity.personalized.toFixed(3)}</b>`);
  expect(html).toContain('href="run/report.html"');
  expect(fs.existsSync(path.join(demo.run, 'report.html'))).toBe(true);
  expect(fs.existsSync(path.join(demo.run, 'lora.safetensors'))).toBe(true);
});

test('the committed pipeline is rebuilt whole, and a text encoder that is not the one it trained with is refused', async () => {
  const model = path.join(demo.out, 'model');
  for (const part of ['unet', 'vae_encoder', 'vae_decoder', 'text_encoder', 'tokenizer', 'scheduler'])
    expect(fs.existsSync(path.join(model, part))).toBe(true);
  const record = readWorldRecord(committedWorldPipeline());
  expect(record.command).toMatch(/^hollowc world build /);
  expect(record.loss.unet.length).toBe(20);
  // a packed copy whose record names another seed: the rebuilt text encoder differs and is refused
  const dir = tempDir('hollowc-world-packed-');
  const packed = path.join(dir, 'packed');
  fs.cpSync(committedWorldPipeline(), packed, { recursive: true });
  fs.writeFileSync(
    path.join(packed, WORLD_RECORD_FILE),
    JSON.stringify({ ...record, builder: { ...record.builder, seed: record.builder.seed + 1 } }),
  );
  const dest = path.join(dir, 'model');
  await expect(materializeWorldPipeline(dest, packed)).rejects.toThrow(/is not the one the pipeline trained with/);
  expect(fs.readdirSync(dir).sort()).toEqual(['packed']);
});

test('hollowc web --model without --prompt serves "" as the pipeline\'s text encoder encodes it, the page\'s negative', async () => {
  const warnings: string[] = [];
  const model = path.join(demo.out, 'model');
  const server = await startLibraryServer({ out: path.join(demo.run, 'compiled'), port: 0, model, warn: (w) => warnings.push(w) });
  try {
    expect(warnings).toEqual([]);
    expect(await (await fetch(new URL('/model.json', server.url))).json()).toEqual({
      vae_decoder: { weights: ['model.onnx_data'] },
      negative: true,
    });
    const bytes = new Uint8Array(await (await fetch(new URL(`/model/${SERVED_PROMPT_FILE}`, server.url))).arrayBuffer());
    const { tensors } = parseSafetensors(bytes, SERVED_PROMPT_FILE);
    const [empty] = await encodePrompts(openPipelineFolder(model), ['']);
    expect(conditioningOf(tensors, SERVED_NEGATIVE_ID)).toEqual(empty);
    expect(conditioningOf(tensors, SERVED_PROMPT_ID)).toBeUndefined();
  } finally {
    await server.close();
  }
});

// The page trains the demo's compiled run (its store, its lora-init) in the tab at the demo's steps and lr.
// measured 0.457 (one image, seed 0, 2026-12-07, run 6); the base model on this prompt scores about 0.1. Guided
// with zeros as the negative (the page's default without --model, not what the pipeline trained its dropped
// captions on) it drew the house on blue (0.333): the background check catches that.
const PAGE_MIN_SUBJECT_FIDELITY = 0.25;

test("the browser page trains the demo's run in the tab and its VAE-decoded image shows the subject", async () => {
  const dir = tempDir('hollowc-demo-page-');
  const launched = await launchChromium('wasm', dir);
  if (!launched) return console.warn(`skipped: no ${CHROMIUM}`);
  // the demo's first new context: the store's own prompt ("a large sks house") names no background, which no base caption lacks
  const prompt = demo.base[0].prompt;
  const url = await startWebServer(path.join(demo.run, 'compiled'), ['--model', path.join(demo.out, 'model'), '--prompt', prompt], servers);
  const { context } = launched;
  try {
    const { page, problems } = await watchedPage(context);
    await page.goto(`${url}?ep=wasm&steps=${DEMO_STEPS}&lr=${DEMO_LR}&autorun=1&sample_steps=20&guidance=6&seed=0&eval_batches=1`);
    await page.waitForFunction(
      () =>
        (globalThis as unknown as { hollowc?: { done: boolean; error?: string } }).hollowc?.done ||
        !!(globalThis as unknown as { hollowc?: { error?: string } }).hollowc?.error,
      null,
      {
        timeout: 240000,
        polling: 1000,
      },
    );
    const r = (await page.evaluate(() => (globalThis as unknown as { hollowc: unknown }).hollowc)) as {
      error?: string;
      prompt?: string;
      losses: { loss: number }[];
      image?: { width: number; height: number; rgb: number[] };
    };
    const shot = path.join(dir, 'page-world.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot after training the demo's run in the tab: ${shot}`);
    expect(r.error).toBeUndefined();
    expect(r.prompt).toBe(prompt);
    // what the page sampled with: the prompt, and "" as guidance's negative, as the pipeline's text encoder encodes them
    expect(await (await fetch(new URL('/model.json', url))).json()).toMatchObject({ prompt: { text: prompt }, negative: true });
    const bytes = new Uint8Array(await (await fetch(new URL(`/model/${SERVED_PROMPT_FILE}`, url))).arrayBuffer());
    const { tensors } = parseSafetensors(bytes, SERVED_PROMPT_FILE);
    const [c, empty] = await encodePrompts(openPipelineFolder(path.join(demo.out, 'model')), [prompt, '']);
    expect(conditioningOf(tensors, SERVED_PROMPT_ID)).toEqual(c);
    expect(conditioningOf(tensors, SERVED_NEGATIVE_ID)).toEqual(empty);
    expect(r.losses).toHaveLength(DEMO_STEPS);
    const { width, height, rgb } = r.image!;
    expect([width, height]).toEqual([32, 32]);
    // the page's planes (RGB, [0, 1]) as the scorers' HWC bytes
    const plane = width * height;
    const pixels = new Uint8Array(plane * 3);
    for (let i = 0; i < plane; i++)
      for (let c = 0; c < 3; c++) pixels[i * 3 + c] = Math.round(255 * Math.min(1, Math.max(0, rgb[c * plane + i])));
    const fidelity = subjectFidelity(pixels, width, subjectById('house'));
    console.log(`the tab's image: subject fidelity ${fidelity.toFixed(3)}`);
    expect(fidelity).toBeGreaterThan(PAGE_MIN_SUBJECT_FIDELITY);
    expect(scoreImage(pixels, width, parseCaption(prompt, SUBJECT_NOUNS)).background).toBe(true);
    expect(problems).toEqual([]);
  } finally {
    await context.close();
  }
}, 300_000);
