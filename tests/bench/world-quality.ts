/**
 * Issue 32, item 4: the paper's Table 1 and Fig. 5 on the world pipeline. For each subject and
 * method (the base model; LoRA with nothing hollowed; hollowed at each SD preset; conv LoRA; full
 * fine-tuning), personalize on the subject's photos, then sample every context its photos never had
 * (backgrounds, small) at several seeds and score each image from its pixels (models/world).
 *
 *   node -r ./tests/support/register-ts.js tests/bench/world-quality.ts --pipeline <world pipeline>
 *        [--out /tmp/world-quality] [--subjects house,kite] [--seeds 3] [--steps 400] [--lr 2e-3]
 *        [--full-lr 2e-4] [--rank 8] [--class-images 10] [--threads 2]
 *
 * Each personalization runs in its own child process, so its train stage's peak RSS is its own.
 * Writes `<out>/<subject>/<method>/` (photos, run folder, images, manifest.json), `<out>/results.json`,
 * `<out>/table.md` and `<out>/memory-vs-fidelity.svg`. Rows already written are reused on a rerun.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { PRESETS } from '../../models/presets';
import { DEFAULT_TARGETS } from '../../models/training-defaults';
import { SUBJECTS, subjectById } from '../../models/world';
import { openPipelineFolder } from '../../runtime/text-to-image/pipeline-folder';
import { defaultImageSize } from '../../runtime/text-to-image/text-to-image';
import {
  type QualityMethod,
  type SampleSettings,
  type ScoredImage,
  personalizeWorldSubject,
  samplerOfRun,
  scoreSubjectImages,
  subjectContexts,
  writeImageManifest,
} from '../../cli/api/world-quality';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const pipeline = path.resolve(arg('pipeline', ''));
const out = path.resolve(arg('out', '/tmp/world-quality'));
const seeds = Array.from({ length: Number(arg('seeds', '3')) }, (_, i) => i);
const steps = Number(arg('steps', '400'));
const lr = Number(arg('lr', '2e-3'));
const fullLr = Number(arg('full-lr', '2e-4'));
const rank = Number(arg('rank', '8'));
const classImages = Number(arg('class-images', '10'));
const threads = Number(arg('threads', '0')) || undefined;
const PHOTO_SEED = 0;

// conv LoRA: the paper's attention targets and every ResNet conv beside them
const CONV_TARGETS = [...DEFAULT_TARGETS, 'conv1', 'conv2'];

function methods(): QualityMethod[] {
  const presets = PRESETS.filter((p) => p.families.includes('sd15')).map((p) => p.name);
  return [
    { name: 'base', preset: 'base' },
    { name: 'lora', preset: 'none', rank },
    ...presets.map((p) => ({ name: `hollowed ${p}`, preset: p, rank })),
    { name: 'conv lora', preset: 'none', rank, loraTargets: CONV_TARGETS },
    { name: 'full', preset: 'none', trainBase: ['*'], lr: fullLr },
  ];
}

const slug = (s: string) => s.replace(/[^a-z0-9.]+/gi, '-');

interface Row {
  subject: string;
  method: string;
  settings: Record<string, unknown>;
  trainPeakMiB?: number;
  modelStateMiB?: number;
  trainSeconds?: number;
  loss?: { before: number; after: number };
  images: ScoredImage[];
  diversity: number;
}

/** One (subject, method): personalize (unless base), sample, score; the child process's work. */
async function runRow(subjectId: string, methodName: string): Promise<void> {
  const subject = subjectById(subjectId);
  const method = methods().find((m) => m.name === methodName)!;
  const dir = path.join(out, subject.id, slug(method.name));
  const folder = openPipelineFolder(pipeline);
  const size = defaultImageSize(folder);
  const sampling: SampleSettings = { seeds, size, steps: 25, guidance: 6, threads };
  const settings = {
    steps,
    lr: method.lr ?? lr,
    rank: method.rank,
    preset: method.preset,
    loraTargets: method.loraTargets,
    trainBase: method.trainBase,
    classImages,
    photoSeed: PHOTO_SEED,
    sampling,
  };
  let trained: Awaited<ReturnType<typeof personalizeWorldSubject>> | undefined;
  if (method.preset !== 'base')
    trained = await personalizeWorldSubject({
      pipeline,
      subject,
      method,
      out: dir,
      photoSeed: PHOTO_SEED,
      steps,
      lr,
      classImages,
      threads,
    });
  const sampler = trained ? samplerOfRun(pipeline, trained.run, trained.classPrompt) : { folder };
  const scored = await scoreSubjectImages(sampler, subject, subjectContexts(subject, PHOTO_SEED), sampling, path.join(dir, 'images'));
  const row: Row = {
    subject: subject.id,
    method: method.name,
    settings,
    ...(trained && {
      trainPeakMiB: trained.trainPeakRssBytes / 2 ** 20,
      modelStateMiB: trained.modelStateBytes / 2 ** 20,
      trainSeconds: trained.trainSeconds,
      loss: trained.loss,
    }),
    images: scored.images,
    diversity: scored.diversity,
  };
  writeImageManifest(path.join(dir, 'images', 'manifest.json'), {
    subject: subject.id,
    method: method.name,
    settings,
    images: scored.images,
  });
  writeImageManifest(path.join(dir, 'row.json'), row);
}

const mean = (a: readonly number[]) => a.reduce((s, v) => s + v, 0) / a.length;
const sd = (a: readonly number[]) => Math.sqrt(mean(a.map((v) => (v - mean(a)) ** 2)));

interface Summary {
  method: string;
  subjectFidelity: { mean: number; sd: number };
  promptFidelity: { mean: number; sd: number };
  diversity: number;
  trainPeakMiB?: number;
  modelStateMiB?: number;
  trainSeconds?: number;
}

/** Per method: the mean over subjects and contexts, its spread over seeds (each seed's mean, then their sd). */
function summarize(rows: readonly Row[]): Summary[] {
  return methods().map((m) => {
    const mine = rows.filter((r) => r.method === m.name);
    const perSeed = (k: 'subjectFidelity' | 'promptFidelity') =>
      seeds.map((seed) => mean(mine.flatMap((r) => r.images.filter((i) => i.seed === seed).map((i) => i[k]))));
    const sf = perSeed('subjectFidelity');
    const pf = perSeed('promptFidelity');
    const peaks = mine.map((r) => r.trainPeakMiB).filter((v): v is number => v !== undefined);
    const times = mine.map((r) => r.trainSeconds).filter((v): v is number => v !== undefined);
    const states = mine.map((r) => r.modelStateMiB).filter((v): v is number => v !== undefined);
    return {
      method: m.name,
      subjectFidelity: { mean: mean(sf), sd: sd(sf) },
      promptFidelity: { mean: mean(pf), sd: sd(pf) },
      diversity: mean(mine.map((r) => r.diversity)),
      ...(peaks.length && { trainPeakMiB: Math.max(...peaks), modelStateMiB: Math.max(...states), trainSeconds: mean(times) }),
    };
  });
}

function table(summary: readonly Summary[], subjects: readonly string[]): string {
  const pm = (x: { mean: number; sd: number }) => `${x.mean.toFixed(3)} ± ${x.sd.toFixed(3)}`;
  return [
    `| method | subject fidelity (DINO analog) | prompt fidelity (CLIP-T analog) | diversity | model state in training | training peak RSS | train time |`,
    '|---|---|---|---|---|---|---|',
    ...summary.map(
      (s) =>
        `| ${s.method} | ${pm(s.subjectFidelity)} | ${pm(s.promptFidelity)} | ${s.diversity.toFixed(3)} | ${s.modelStateMiB ? `${s.modelStateMiB.toFixed(2)} MiB` : '-'} | ${s.trainPeakMiB ? `${s.trainPeakMiB.toFixed(0)} MiB` : '-'} | ${s.trainSeconds ? `${s.trainSeconds.toFixed(1)} s` : '-'} |`,
    ),
    '',
    `Subjects: ${subjects.join(', ')}; seeds ${seeds.join(', ')}; ± is the spread (sd) over seeds of each seed's mean over subjects and contexts.`,
    '',
  ].join('\n');
}

/** Fig. 5's analog: the model state training holds against subject fidelity, one point per trained method (RSS is mostly onnxruntime's own at this size). */
function plotSvg(summary: readonly Summary[]): string {
  const pts = summary.filter((s) => s.modelStateMiB !== undefined);
  const base = summary.find((s) => s.method === 'base');
  const W = 640;
  const H = 400;
  const m = { l: 70, r: 20, t: 30, b: 50 };
  const xs = pts.map((p) => p.modelStateMiB!);
  const ys = [...pts.map((p) => p.subjectFidelity.mean), ...(base ? [base.subjectFidelity.mean] : [])];
  const [x0, x1] = [0, Math.max(...xs) * 1.1];
  const [y0, y1] = [Math.max(0, Math.min(...ys) - 0.05), Math.min(1, Math.max(...ys) + 0.05)];
  const X = (v: number) => m.l + ((v - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const Y = (v: number) => H - m.b - ((v - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
  const ticks = (lo: number, hi: number, n: number) => Array.from({ length: n + 1 }, (_, i) => lo + ((hi - lo) * i) / n);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="13">Training memory against subject fidelity (world pipeline)</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="#333"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="#333"/>`,
    ...ticks(x0, x1, 5).map((v) => `<text x="${X(v).toFixed(1)}" y="${H - m.b + 15}" text-anchor="middle">${v.toFixed(1)}</text>`),
    ...ticks(y0, y1, 5).map((v) => `<text x="${m.l - 6}" y="${(Y(v) + 4).toFixed(1)}" text-anchor="end">${v.toFixed(2)}</text>`),
    `<text x="${W / 2}" y="${H - 12}" text-anchor="middle">model state held in training (MiB, float32)</text>`,
    `<text transform="translate(16 ${H / 2}) rotate(-90)" text-anchor="middle">subject fidelity</text>`,
    ...(base
      ? [
          `<line x1="${m.l}" y1="${Y(base.subjectFidelity.mean).toFixed(1)}" x2="${W - m.r}" y2="${Y(base.subjectFidelity.mean).toFixed(1)}" stroke="#999" stroke-dasharray="4 3"/>`,
          `<text x="${W - m.r - 4}" y="${(Y(base.subjectFidelity.mean) - 4).toFixed(1)}" text-anchor="end" fill="#666">base model</text>`,
        ]
      : []),
    ...pts.flatMap((p, k) => {
      const [cx, cy] = [X(p.modelStateMiB!), Y(p.subjectFidelity.mean)];
      const hollowed = p.method.startsWith('hollowed');
      const color = hollowed ? '#c0392b' : '#2c6fbb';
      // the presets sit close together: their labels are the bare fraction, alternately above and below
      const label = hollowed ? p.method.replace('hollowed ', '') : p.method;
      const dy = hollowed && k % 2 === 0 ? 16 : -6;
      return [
        `<line x1="${cx.toFixed(1)}" y1="${Y(p.subjectFidelity.mean - p.subjectFidelity.sd).toFixed(1)}" x2="${cx.toFixed(1)}" y2="${Y(p.subjectFidelity.mean + p.subjectFidelity.sd).toFixed(1)}" stroke="${color}"/>`,
        `<circle cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="4" fill="${color}"/>`,
        `<text x="${(cx + 5).toFixed(1)}" y="${(cy + dy).toFixed(1)}" fill="${color}">${label}</text>`,
      ];
    }),
    `<text x="${m.l + 8}" y="${m.t + 12}" fill="#c0392b">red: hollowed LoRA at each preset (% of the UNet hollowed)</text>`,
    `<text x="${m.l + 8}" y="${m.t + 26}" fill="#2c6fbb">blue: LoRA, conv LoRA, full fine-tuning (nothing hollowed)</text>`,
    `<text x="${m.l + 8}" y="${m.t + 40}" fill="#666">bars: spread over ${seeds.length} sampling seeds</text>`,
    '</svg>',
  ];
  return parts.join('\n') + '\n';
}

async function main(): Promise<void> {
  const rowArg = process.argv.indexOf('--row');
  if (rowArg >= 0) return runRow(process.argv[rowArg + 1], process.argv[rowArg + 2]);
  if (!fs.existsSync(path.join(pipeline, 'model_index.json'))) throw new Error('--pipeline <world pipeline folder> is required');
  const subjects = arg('subjects', SUBJECTS.map((s) => s.id).join(',')).split(',');
  const rows: Row[] = [];
  const started = Date.now();
  for (const subject of subjects)
    for (const m of methods()) {
      const file = path.join(out, subject, slug(m.name), 'row.json');
      if (!fs.existsSync(file)) {
        const t = Date.now();
        // its own process: the train stage's peak RSS is then this method's alone
        execFileSync(process.execPath, [...process.execArgv, __filename, ...process.argv.slice(2), '--row', subject, m.name], {
          stdio: 'inherit',
        });
        process.stdout.write(`${subject} / ${m.name}: ${((Date.now() - t) / 1000).toFixed(0)} s\n`);
      }
      rows.push(JSON.parse(fs.readFileSync(file, 'utf8')) as Row);
    }
  const summary = summarize(rows);
  fs.writeFileSync(
    path.join(out, 'results.json'),
    JSON.stringify({ pipeline, seeds, steps, lr, fullLr, rank, classImages, summary, rows }, null, 2) + '\n',
  );
  fs.writeFileSync(path.join(out, 'table.md'), table(summary, subjects));
  fs.writeFileSync(path.join(out, 'memory-vs-fidelity.svg'), plotSvg(summary));
  process.stdout.write(`${table(summary, subjects)}\nwhole bench ${((Date.now() - started) / 1000).toFixed(0)} s; ${out}\n`);
}

main().catch((e) => {
  process.stderr.write(`${e instanceof Error ? e.stack : e}\n`);
  process.exit(1);
});
