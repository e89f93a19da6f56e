/**
 * personalize on a tiny random pipeline, then the runtime commands through the CLI on its folder:
 * what they print, the files they write, and one-line errors for bad input.
 */
import * as fs from 'fs';
import * as path from 'path';
import { drawDemoPhotos } from '../cli/demo';
import { PersonalizeResult, personalize } from '../cli/api/personalize';
import { buildPipeline } from '../models/builder';
import { readNpy } from '../runtime/formats/npy';
import { readSafetensors } from '../runtime/formats/safetensors';
import { ProgressLine, formatDuration } from '../runtime/progress';
import { runCli } from './support/cli';
import { tempDir } from './support/fixture';
import { tinyCompiled, writeData } from './runtime-fake-train';

const cli = (...args: string[]) => runCli(args);

/** A personalize run on a tiny random-weight pipeline and drawn photos (what the demo was before it had trained weights). */
interface TinyRun {
  out: string;
  run: string;
  result: PersonalizeResult;
}
let demo: TinyRun;
const lines: string[] = [];

beforeAll(async () => {
  const out = path.join(tempDir('hollowc-tiny-run-'), 'demo');
  const model = path.join(out, 'model');
  await buildPipeline('sd15', 'tiny', model, { seed: 0 });
  await drawDemoPhotos(path.join(out, 'photos'));
  const run = path.join(out, 'run');
  const result = await personalize({
    model,
    photos: path.join(out, 'photos'),
    prompt: 'a photo of sks face',
    classPrompt: 'a photo of a face',
    out: run,
    rank: 4,
    steps: 12,
    lr: 1e-3,
    samples: 8,
    classImages: 4,
    classSteps: 10,
    validationSteps: 15,
    guidance: 5,
    resolution: 128,
    seed: 0,
    log: (l) => lines.push(l),
    progress: { write: () => true },
  });
  demo = { out, run, result };
});

test('personalize on a tiny random pipeline from drawn photos: the stages, the files, the report', () => {
  const text = lines.join('\n');
  expect(text).toContain('[1/9] compile: hollowed 3-3 4-1 4-2 5-1 5-2 6-1 6-2 6-3 6-4');
  expect(text).toContain('[4/9] class images: generated 4 class image(s) with the base pipeline on "a photo of a face"');
  // [4,16,16] z_t and target + [48,4,4] activation + 28 bytes of ids, flags and checksum = 11.0 KiB
  expect(text).toContain(
    '[5/9] store: precomputed 8 sample(s) (0 already there; 4 instance and 4 class latents, alternating): 11.0 KiB each',
  );
  expect(text).toMatch(/\[6\/9\] train: trained to step 12 at lr 0\.001/);
  expect(demo.result.loss!.after).toBeLessThan(demo.result.loss!.before);
  expect(demo.result.subject!.base).toBeGreaterThan(0);
  expect(demo.result.subject!.personalized).not.toBe(demo.result.subject!.base);
  expect(text).toContain(`open ${path.join(demo.run, 'report.html')}`);
  expect(demo.result.peakRssBytes).toBeGreaterThan(50 * 2 ** 20);
  for (const f of [
    'report.html',
    'loss.svg',
    'lora.safetensors',
    'lora-kohya.safetensors',
    'images/0-a-photo-of-sks-face.png',
    'images/0-a-photo-of-sks-face-base.png',
  ])
    expect(fs.existsSync(path.join(demo.run, f))).toBe(true);
  const html = fs.readFileSync(path.join(demo.run, 'report.html'), 'utf8');
  expect(html).toContain('src="images/0-a-photo-of-sks-face.png"');
  expect(html.match(/data:image\/png;base64,/g)?.length).toBe(4); // the 4 photos
  expect(
    readSafetensors(path.join(demo.run, 'lora.safetensors')).tensors.has(
      'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight',
    ),
  ).toBe(true);
  expect(demo.result.manifest.parameters).toEqual({ full: 1390804, heldDuringTraining: 908452, lora: 30720 });
});

describe('CLI', () => {
  const compiled = () => path.join(demo.run, 'compiled');
  const samples = () => path.join(demo.run, 'data');

  test('precompute continues the store to --count and prints its size', async () => {
    const r = await cli('precompute', compiled(), '--data', samples(), '--count', '10');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('precomputed 2 samples in');
    expect(r.stdout).toContain('(continuing from 8 on disk)');
    expect(r.stdout).toContain('data: 4 instance + 4 class latents [4, 16, 16]');
    expect(r.stdout).toContain('10 records x 11.0 KiB per sample = 110.3 KiB');
    const again = await cli('precompute', compiled(), '--data', samples(), '--count', '10');
    expect(again.stdout).toContain('the store already holds 10 samples (>= --count 10); nothing to do');
  });

  test("generate writes latents; the class prompt defaults to the store's", async () => {
    const file = path.join(demo.out, 'gen', 'a.npy');
    const r = await cli(
      'generate',
      compiled(),
      '--prompt-embeds',
      path.join(samples(), 'instance_prompt.safetensors'),
      '--steps',
      '3',
      '--scheduler',
      'dpmpp_2m',
      '--seed',
      '4',
      '--latents-out',
      file,
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('generated [1, 4, 16, 16] latents with dpmpp_2m, 3 steps, guidance 7.5, seed 4');
    expect(readNpy(file).shape).toEqual([1, 4, 16, 16]);
    const explicit = path.join(demo.out, 'gen', 'b.npy');
    await cli(
      'generate',
      compiled(),
      '--prompt-embeds',
      path.join(samples(), 'instance_prompt.safetensors'),
      '--class-embeds',
      path.join(samples(), 'class_prompt.safetensors'),
      '--steps',
      '3',
      '--scheduler',
      'dpmpp_2m',
      '--seed',
      '4',
      '--latents-out',
      explicit,
    );
    expect(fs.readFileSync(explicit).equals(fs.readFileSync(file))).toBe(true);
    const otherSeed = path.join(demo.out, 'gen', 'c.npy');
    await cli(
      'generate',
      compiled(),
      '--prompt-embeds',
      path.join(samples(), 'instance_prompt.safetensors'),
      '--steps',
      '3',
      '--scheduler',
      'dpmpp_2m',
      '--seed',
      '5',
      '--latents-out',
      otherSeed,
    );
    expect(fs.readFileSync(otherSeed).equals(fs.readFileSync(file))).toBe(false);
  });

  test('export-lora writes kohya keys', async () => {
    const file = path.join(demo.out, 'kohya.safetensors');
    const r = await cli('export-lora', compiled(), '--format', 'kohya', '-o', file);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^wrote .*kohya\.safetensors \(kohya\): 120 modules, 30,720 parameters/);
    expect(readSafetensors(file).tensors.has('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight')).toBe(
      true,
    );
  });

  test('bad input: one line, exit 1', async () => {
    const r = await cli(
      'generate',
      compiled(),
      '--prompt-embeds',
      path.join(samples(), 'instance_prompt.safetensors'),
      '--latents-out',
      'x.npy',
      '--lora',
      'a',
      '--baked',
      'b',
    );
    expect([r.code, r.stderr]).toEqual([1, 'hollowc: error: give --lora or --baked, not both (a baked model has its LoRA folded in)\n']);
    const t = await cli('train', path.join(demo.out, 'nowhere'));
    expect([t.code, t.stderr]).toEqual([
      1,
      `hollowc: error: ${path.join(demo.out, 'nowhere', 'manifest.json')}: not a compiled hollowc folder (ENOENT); run hollowc compile first\n`,
    ]);
    const c = await cli('precompute', compiled(), '--data', samples(), '--count', '0');
    expect(c.code).toBe(1);
    expect(c.stderr).toContain("error: option '--count <n>' argument '0' is invalid. expected a positive integer, got \"0\"");
    const untrainable = await tinyCompiled(tempDir('hollowc-cli-notrain-'), 'sd15', { batch: 1, preset: '39.2%', train: false });
    const n = await cli('train', untrainable.out);
    expect([n.code, n.stderr]).toEqual([
      1,
      `hollowc: error: ${untrainable.out}: this folder has no train.onnx, which training needs (add \`train\` to the spec's emit line and compile again)\n`,
    ]);
  });
});

test('train through the CLI (stand-in train.onnx): progress, checkpoints, resume, export', async () => {
  const dir = tempDir('hollowc-cli-train-');
  const f = await tinyCompiled(dir, 'sd15', { batch: 2, preset: '39.2%', extraSpec: 'lora targets "attn1.to_q"\nseed 3' });
  const data = writeData(path.join(dir, 'samples'), 'sd15', { instances: 2, classes: 2 });
  expect((await cli('precompute', f.out, '--data', data, '--count', '6', '--threads', '1', '--graph-opt', 'basic')).code).toBe(0);
  const a = await cli('train', f.out, '--steps', '6', '--checkpoint-every', '4', '--lr', '0.01');
  expect(a.stderr).toMatch(/step 6\/6  \[=+\]  loss \d\.\d{5}  [\d.]+ it\/s  ETA 0:00\n$/);
  expect(a.stdout).toMatch(/^trained steps 1\.\.6 \(batch 2\) in 0:\d\d \([\d.]+ it\/s\): loss \d\.\d{5} -> \d\.\d{5}\n/);
  expect(a.stdout).toContain(`LoRA (peft): ${path.join(f.out, 'lora.safetensors')}`);
  // the stand-in folder has no grads.onnx: the in-graph optimizer, reported; host mode asks for grads.onnx
  expect(a.stdout).toContain('  optimizer: graph (train.onnx, AdamW in the graph)\n');
  const host = await cli('train', f.out, '--steps', '7', '--resume', '--optimizer', 'host');
  expect([host.code, host.stderr]).toEqual([
    1,
    `hollowc: error: ${f.out}: this folder has no grads.onnx, which the host-side optimizer (--optimizer host) needs (add \`grads\` to the spec's emit line and compile again)\n`,
  ]);
  const again = await cli('train', f.out, '--steps', '6');
  expect([again.code, again.stderr]).toEqual([
    1,
    `hollowc: error: ${path.join(f.out, 'train')}: a training run is checkpointed here at step 6: pass --resume to continue it or --restart to discard it\n`,
  ]);
  const b = await cli('train', f.out, '--steps', '9', '--resume');
  expect(b.stdout).toMatch(/^trained steps 7\.\.9 \(batch 2\)/);
  const lines = fs
    .readFileSync(path.join(f.out, 'train', 'loss.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(lines.map((l) => [l.step, l.lr])).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9].map((s) => [s, 0.01]));
  const e = await cli('export-lora', f.out, '--format', 'peft', '-o', path.join(dir, 'x.safetensors'), '--from', 'checkpoint');
  expect(e.stdout).toMatch(
    /^wrote .*x\.safetensors \(peft\): 15 modules, 3,840 parameters, from .*checkpoint\.safetensors \(step 9, seed \d+, written [\dT:-]+Z\)\n$/,
  );
});

test('progress line: in place on a terminal; in a log a line per tenth of the run or per 10 s', () => {
  const tty = {
    text: '',
    isTTY: true,
    write(s: string) {
      this.text += s;
    },
  };
  const p = new ProgressLine('step', 4, tty);
  p.update(1, { loss: '0.5' });
  p.update(4, { loss: '0.25' });
  p.finish();
  expect(tty.text.startsWith('\rstep 1/4  [=====>                  ]  loss 0.5  ')).toBe(true);
  expect(tty.text).toContain('\rstep 4/4  [========================]  loss 0.25  ');
  expect(tty.text.endsWith('\n')).toBe(true);
  const log = {
    text: '',
    write(s: string) {
      this.text += s;
    },
  };
  const q = new ProgressLine('precompute', 100, log);
  for (let i = 1; i <= 100; i++) q.update(i);
  const lines = log.text.trim().split('\n');
  expect(lines).toHaveLength(10);
  expect(lines.map((l) => Number(/precompute (\d+)\//.exec(l)![1]))).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
  // a 20-step run in a log: 10 lines, not 20
  log.text = '';
  const r = new ProgressLine('step', 20, log);
  for (let i = 1; i <= 20; i++) r.update(i);
  expect(log.text.trim().split('\n')).toHaveLength(10);
  // a slow run: a line once 10 s pass without one, even inside a tenth; a resumed run counts from where it started
  let clock = 0;
  log.text = '';
  const slow = new ProgressLine('step', 1000, log, 500, () => clock);
  clock = 9_000;
  slow.update(501);
  expect(log.text).toBe('');
  clock = 10_500;
  slow.update(502);
  expect(log.text).toMatch(/^step 502\/1000 /);
  clock = 11_000;
  slow.update(600);
  expect(log.text.trim().split('\n')).toHaveLength(2);
  expect(formatDuration(3725)).toBe('1:02:05');
  expect(formatDuration(65)).toBe('1:05');
});
