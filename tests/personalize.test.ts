/**
 * `hollowc personalize` end to end on tiny builder pipelines (sd15 and sdxl, prior preservation
 * with generated class images, alpha ≠ rank): the files it leaves, what each stage reports, stage
 * reuse (same inputs: nothing redone; only --steps changed: the store is reused; other photos or
 * another preset: the dependent stages redone), a SIGKILL in the middle of every stage followed
 * by a rerun (the same LoRA bytes as an uninterrupted run), and bad input (one line, nothing in
 * run/ lost).
 */
import { spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { main } from '../cli/main';
import { PersonalizeOptions, PersonalizeResult, identifierWords, personalize } from '../cli/api/personalize';
import { drawDemoPhotos } from '../cli/demo';
import { buildPipeline } from '../models/builder/pipeline';
import { kohyaName } from '../runtime/formats/lora-file';
import { readSafetensors } from '../runtime/formats/safetensors';
import { effectiveDelta, loadLikeDiffusers021, loadLikeDiffusersCurrent } from './support/diffusers-loaders';
import { tempDir } from './support/fixture';

jest.setTimeout(240_000);
const CHILD = path.join(__dirname, 'support', 'cli-child.js');
const root = tempDir('hollowc-personalize-');
const models: Record<string, string> = {};
let photos: string;

const base = (family: string, out: string, extra: Partial<PersonalizeOptions> = {}): PersonalizeOptions => ({
  model: models[family],
  photos,
  prompt: 'a photo of sks face',
  classPrompt: 'a photo of a face',
  out,
  rank: 2,
  alpha: 6,
  steps: 6,
  lr: 1e-3,
  samples: 6,
  classImages: 2,
  classSteps: 2,
  validationSteps: 2,
  guidance: 2,
  resolution: 64,
  seed: 1,
  ...extra,
});
const args = (o: PersonalizeOptions) => [
  'personalize',
  '--model',
  o.model,
  '--photos',
  o.photos,
  '--prompt',
  o.prompt,
  '--class-prompt',
  o.classPrompt,
  '-o',
  o.out,
  '--rank',
  String(o.rank),
  '--alpha',
  String(o.alpha),
  '--steps',
  String(o.steps),
  '--lr',
  String(o.lr),
  '--samples',
  String(o.samples),
  '--class-images',
  String(o.classImages),
  '--class-steps',
  String(o.classSteps),
  '--validation-steps',
  String(o.validationSteps),
  '--guidance',
  String(o.guidance),
  '--resolution',
  String(o.resolution),
  '--seed',
  String(o.seed),
  '--quiet',
];
const lines: string[] = [];
const quiet = { log: (l: string) => lines.push(l), warn: (l: string) => lines.push(l), progress: { write: () => true } };
const bytes = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
const statuses = (r: PersonalizeResult) => Object.fromEntries(r.stages.map((s) => [s.name, s.status]));

let reference: PersonalizeResult;
const refOut = path.join(root, 'ref');

beforeAll(async () => {
  models.sd15 = path.join(root, 'sd15');
  models.sdxl = path.join(root, 'sdxl');
  await buildPipeline('sd15', 'tiny', models.sd15, { seed: 0 });
  await buildPipeline('sdxl', 'tiny', models.sdxl, { seed: 0 });
  photos = path.join(root, 'photos');
  await drawDemoPhotos(photos, 3, 64);
  reference = await personalize({ ...base('sd15', refOut), ...quiet });
});

function checkLoraFiles(r: PersonalizeResult) {
  const m = r.manifest;
  expect(m.lora.rank).toBe(2);
  expect(m.lora.alpha).toBe(6);
  const trained = readSafetensors(path.join(r.out, 'compiled', 'lora.safetensors')).tensors;
  const modules = m.lora.targets.filter((t) => t.trained).map((t) => t.module);
  const kohyaModule = (b: string) => modules.find((x) => kohyaName(x) === b)!;
  for (const [file, loaders] of [
    [r.lora!.diffusers, [loadLikeDiffusers021, loadLikeDiffusersCurrent]],
    [r.lora!.kohya, [loadLikeDiffusers021, loadLikeDiffusersCurrent]],
  ] as const) {
    for (const load of loaders) {
      const layers = load(file, kohyaModule);
      expect(layers.length).toBe(modules.length);
      for (const l of layers.slice(0, 6)) {
        const t = m.lora.targets.find((x) => x.module === l.module)!;
        const a = trained.get(`unet.${t.lora_A.name}`)!;
        const b = trained.get(`unet.${t.lora_B.name}`)!;
        const want = effectiveDelta({
          a: new Float32Array(a.data.buffer.slice(a.data.byteOffset, a.data.byteOffset + a.data.byteLength)),
          b: new Float32Array(b.data.buffer.slice(b.data.byteOffset, b.data.byteOffset + b.data.byteLength)),
          aShape: a.shape,
          bShape: b.shape,
          scale: 3,
        });
        const got = effectiveDelta(l);
        const worst = want.reduce((w, v, i) => Math.max(w, Math.abs(v - got[i])), 0);
        expect(worst).toBeLessThan(1e-6 * (1 + Math.max(...want.map(Math.abs))));
        expect(want.some((v) => v !== 0)).toBe(true);
      }
    }
  }
}

test('sd15 end to end with prior preservation: files, stages, the LoRA at scale alpha/rank in diffusers 0.21, current diffusers and kohya', () => {
  const r = reference;
  expect(statuses(r)).toEqual({
    compile: 'ran',
    prompts: 'ran',
    photos: 'ran',
    'class images': 'ran',
    store: 'ran',
    train: 'ran',
    export: 'ran',
    validation: 'ran',
    report: 'ran',
  });
  for (const f of [
    'lora.safetensors',
    'lora-kohya.safetensors',
    'loss.svg',
    'report.html',
    'images/0-a-photo-of-sks-face.png',
    'images/0-a-photo-of-sks-face-base.png',
    'class-images/0000.png',
    'class-images/0001.png',
  ])
    expect(fs.existsSync(path.join(refOut, f))).toBe(true);
  const text = lines.join('\n');
  expect(text).toMatch(
    /\[4\/9\] class images: generated 2 class image\(s\) with the base pipeline on "a photo of a face" \(0 already there, 2 steps\); VAE-encoded them into 2 class latents {2}\(\d+\.\d s, peak RSS \d+\.\d\d [MG]iB\)/,
  );
  expect(text).toContain('[5/9] store: precomputed 6 sample(s) (0 already there; 3 instance and 2 class latents, alternating)');
  expect(text).toMatch(/\[6\/9\] train: trained to step 6 at lr 0\.001/);
  expect(r.loss!.after).not.toBe(r.loss!.before);
  // every stage has a time and a sampled peak; the run's peak is one of them
  for (const s of r.stages) expect(s.peakRssBytes).toBeGreaterThan(20 * 2 ** 20);
  expect(r.peakRssBytes).toBe(Math.max(...r.stages.map((s) => s.peakRssBytes)));
  const html = fs.readFileSync(r.report, 'utf8');
  for (const s of ['compile', 'class images', 'store', 'train', 'validation']) expect(html).toContain(`<td>${s}</td>`);
  expect(html).toContain('src="loss.svg"');
  expect(html).toContain('src="images/0-a-photo-of-sks-face-base.png"');
  expect(html).toContain('src="class-images/0000.png"');
  expect(fs.readFileSync(path.join(refOut, 'loss.svg'), 'utf8')).toMatch(/^<svg[^]*<polyline[^]*<\/svg>$/);
  expect(readSafetensors(r.lora!.diffusers).metadata.hollowc_alpha).toBe('6');
  checkLoraFiles(r);
});

test('same inputs: everything reused; more --steps: store reused, training continued from its checkpoint (the LoRA of a straight run); --prior-weight: no recompile; other photos or preset: dependents redone', async () => {
  const out = path.join(root, 'reuse');
  fs.cpSync(refOut, out, { recursive: true });
  // the state refers to nothing absolute but the run folder's content: a copy is reusable
  const again = await personalize({ ...base('sd15', out), ...quiet });
  expect(new Set(again.stages.slice(0, -1).map((s) => s.status))).toEqual(new Set(['reused']));
  const storeBytes = bytes(path.join(out, 'compiled', 'store', 'records.bin'));
  const steps = await personalize({ ...base('sd15', out, { steps: 8 }), ...quiet });
  expect(statuses(steps)).toMatchObject({
    compile: 'reused',
    prompts: 'reused',
    photos: 'reused',
    'class images': 'reused',
    store: 'reused',
    train: 'resumed',
    export: 'ran',
    validation: 'ran',
  });
  const trainRow = steps.stages.find((s) => s.name === 'train')!;
  expect(trainRow.summary).toMatch(/^resumed at step 6, trained to step 8 /);
  expect(bytes(path.join(out, 'compiled', 'store', 'records.bin'))).toBe(storeBytes);
  expect(bytes(steps.lora!.diffusers)).not.toBe(bytes(reference.lora!.diffusers));
  // the same 8 steps from step 0 (no checkpoint to carry on from): the same LoRA, bit for bit
  const straight = path.join(root, 'straight8');
  fs.cpSync(refOut, straight, { recursive: true });
  fs.rmSync(path.join(straight, 'compiled', 'train'), { recursive: true });
  const s8 = await personalize({ ...base('sd15', straight, { steps: 8 }), ...quiet });
  expect(statuses(s8)).toMatchObject({ store: 'reused', train: 'ran' });
  expect(s8.stages.find((s) => s.name === 'train')!.summary).toMatch(/^trained to step 8 /);
  expect(bytes(path.join(straight, 'compiled', 'lora.safetensors'))).toBe(bytes(path.join(out, 'compiled', 'lora.safetensors')));
  expect(s8.loss!.before).toBe(steps.loss!.before);
  expect(s8.loss!.after).toBe(steps.loss!.after);
  const straightLora = bytes(s8.lora!.diffusers);
  // the class samples' weight is a training input: compile and store stay, training starts over
  const weighted = await personalize({ ...base('sd15', straight, { steps: 8, priorWeight: 0.25 }), ...quiet });
  expect(statuses(weighted)).toMatchObject({ compile: 'reused', store: 'reused', train: 'ran', export: 'ran' });
  expect(bytes(weighted.lora!.diffusers)).not.toBe(straightLora);
  const morePhotos = path.join(root, 'photos4');
  await drawDemoPhotos(morePhotos, 4, 64);
  const p = await personalize({ ...base('sd15', out, { steps: 8, photos: morePhotos }), ...quiet });
  expect(statuses(p)).toMatchObject({
    compile: 'reused',
    prompts: 'reused',
    photos: 'ran',
    'class images': 'reused',
    store: 'ran',
    train: 'ran',
    export: 'ran',
  });
  const pr = await personalize({ ...base('sd15', out, { steps: 8, photos: morePhotos, preset: '56.6%' }), ...quiet });
  expect(statuses(pr)).toMatchObject({
    compile: 'ran',
    prompts: 'reused',
    photos: 'reused',
    'class images': 'reused',
    store: 'ran',
    train: 'ran',
    export: 'ran',
  });
  expect(pr.manifest.cut!.hollowed[0]).toBe('3-2');
});

function child(
  argv: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CHILD, ...argv], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('exit', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

test('SIGKILL in the middle of each stage, then a rerun: finishes with the LoRA of an uninterrupted run', async () => {
  const out = path.join(root, 'killed');
  const o = base('sd15', out);
  const killed: string[] = [];
  for (const stage of ['compile', 'prompts', 'photos', 'class images', 'store', 'train', 'export', 'validation']) {
    const r = await child(args(o), { HOLLOWC_KILL_IN: stage });
    expect([stage, r.signal]).toEqual([stage, 'SIGKILL']);
    killed.push(stage);
    // the rerun of the next iteration resumes the killed stage: its record says "not done"
    const state = JSON.parse(fs.readFileSync(path.join(out, 'personalize.json'), 'utf8'));
    expect(state.stages[stage].done).toBe(false);
  }
  const done = await child(args(o));
  expect(done.code).toBe(0);
  expect(done.stdout).toContain(`open ${path.join(out, 'report.html')}`);
  for (const f of ['lora.safetensors', 'lora-kohya.safetensors', 'compiled/lora.safetensors', 'images/0-a-photo-of-sks-face.png'])
    expect([f, bytes(path.join(out, f))]).toEqual([f, bytes(path.join(refOut, f))]);
  expect(killed.length).toBe(8);
});

async function cli(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const o = jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((stdout += String(s)), true));
  const e = jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((stderr += String(s)), true));
  try {
    return { code: await main(['node', 'hollowc', ...argv]), stdout, stderr };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

test('bad input: one-line errors, nothing in run/ lost', async () => {
  const out = path.join(root, 'bad');
  fs.cpSync(refOut, out, { recursive: true });
  const before = Object.fromEntries(
    ['personalize.json', 'lora.safetensors', 'report.html', 'compiled/store/records.bin'].map((f) => [f, bytes(path.join(out, f))]),
  );
  const o = base('sd15', out);
  const empty = path.join(root, 'empty');
  fs.mkdirSync(empty);
  const corrupt = path.join(root, 'corrupt');
  fs.cpSync(photos, corrupt, { recursive: true });
  fs.writeFileSync(path.join(corrupt, 'subject-1.png'), Buffer.from('\x89PNG\r\n\x1a\nnot really'));
  const cases: [string[], RegExp][] = [
    [
      args({ ...o, photos: empty }),
      new RegExp(`^hollowc: error: ${empty}: no images in the folder \\(looked for .jpg, .jpeg, .png, .webp\\)\\n$`),
    ],
    [
      args({ ...o, photos: corrupt }),
      new RegExp(`^hollowc: error: ${path.join(corrupt, 'subject-1.png')}: not a decodable image \\([^\\n]*\\)\\n$`),
    ],
    [args({ ...o, model: photos }), new RegExp(`^hollowc: error: ${photos}: pipeline folder has no model_index.json\\n$`)],
  ];
  for (const [argv, want] of cases) {
    const r = await cli(...argv);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(want);
  }
  for (const [f, h] of Object.entries(before)) expect([f, bytes(path.join(out, f))]).toEqual([f, h]);
  expect(identifierWords('a photo of sks dog', 'a photo of a dog')).toEqual(['sks']);
  expect(identifierWords('A photo of a Dog', 'a photo of a dog')).toEqual([]);
});

test('sdxl end to end with prior preservation; a prompt without an identifier warns', async () => {
  const out = path.join(root, 'xl');
  const warnings: string[] = [];
  const r = await personalize({
    ...base('sdxl', out, { prompt: 'a photo of a face' }),
    log: () => {},
    warn: (l) => warnings.push(l),
    progress: { write: () => true },
  });
  expect(warnings).toEqual([
    'hollowc: warning: the prompt "a photo of a face" has no word that the class prompt "a photo of a face" lacks: without an identifier (such as "sks") the LoRA is trained onto the class itself',
  ]);
  expect(r.manifest.family).toBe('sdxl');
  expect(r.manifest.cut!.hollowed).toEqual(['4-1', '4-2']); // sdxl-mid, the default for SDXL
  expect(statuses(r).train).toBe('ran');
  expect(fs.existsSync(path.join(out, 'images', '0-a-photo-of-a-face.png'))).toBe(true);
  const keys = [...readSafetensors(r.lora!.diffusers).tensors.keys()];
  expect(keys.every((k) => /^unet\..+\.lora\.(down|up)\.weight$/.test(k))).toBe(true);
  checkLoraFiles(r);
});
