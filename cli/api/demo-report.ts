/**
 * The demo's report.html: the subject's photos, then for each prompt and seed the base model's
 * image beside the personalized model's, each with its scores, so a reader sees the subject appear
 * where the photos never put it. Images are embedded (the page is one file that can be mailed).
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../../compiler/atomic-files';
import { esc } from '../../runtime/personalize/report';
import type { ScoredImage } from './world-quality';

export interface DemoReportData {
  /** the demo folder: image paths in ScoredImage are relative to `<out>/images/{base,personalized}` */
  out: string;
  subject: string;
  prompt: string;
  photos: readonly string[];
  base: readonly ScoredImage[];
  personalized: readonly ScoredImage[];
  subjectFidelity: { base: number; personalized: number };
  promptFidelity: { base: number; personalized: number };
  /** the personalize run folder (its own report.html: stages, loss curve, memory) */
  run: string;
}

const dataUri = (file: string) => `data:image/png;base64,${fs.readFileSync(file).toString('base64')}`;

function figure(file: string, caption: string): string {
  return `<figure><img src="${dataUri(file)}" alt="${esc(caption)}"><figcaption>${esc(caption)}</figcaption></figure>`;
}

export function demoReportHtml(d: DemoReportData): string {
  const img = (which: 'base' | 'personalized', i: ScoredImage) => path.join(d.out, 'images', which, i.file);
  const score = (i: ScoredImage) => `subject ${i.subjectFidelity.toFixed(2)}, prompt ${i.promptFidelity.toFixed(2)}`;
  const rows = d.base.map((b, k) => {
    const p = d.personalized[k];
    return `<tr><td>${esc(b.prompt)}</td><td class="n">${b.seed}</td><td>${figure(img('base', b), score(b))}</td><td>${figure(img('personalized', p), score(p))}</td></tr>`;
  });
  const title = `hollowc demo: personalizing the world pipeline on "${d.subject}"`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f4f4f4}td.n{text-align:right}
.row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;text-align:center;font-size:12px}
figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ccc}
</style></head><body>
<h1>${esc(title)}</h1>
<p>The pipeline is a tiny Stable Diffusion that hollowc trained from scratch on a world of shapes
(<code>hollowc world build</code>). It never saw this subject. Personalized on the photos below with
the prompt <b>${esc(d.prompt)}</b>, it is asked for the subject on backgrounds and at sizes the photos
never had; the base model gets the same prompts and seeds. Every image is scored from its pixels:
<i>subject</i> is the share of the object and the subject's silhouette that match in shape and color
(the DINO analog), <i>prompt</i> the share of the prompt's background and size that hold.</p>
<table><tr><th></th><th>subject fidelity</th><th>prompt fidelity</th></tr>
<tr><th>base model</th><td class="n">${d.subjectFidelity.base.toFixed(3)}</td><td class="n">${d.promptFidelity.base.toFixed(3)}</td></tr>
<tr><th>personalized</th><td class="n"><b>${d.subjectFidelity.personalized.toFixed(3)}</b></td><td class="n">${d.promptFidelity.personalized.toFixed(3)}</td></tr></table>
<h2>The photos</h2>
<div class="row">${d.photos.map((f) => figure(f, path.basename(f))).join('')}</div>
<h2>Base and personalized, same prompt and seed</h2>
<table><tr><th>prompt</th><th>seed</th><th>base model</th><th>personalized</th></tr>
${rows.join('\n')}
</table>
<p>Training stages, loss curve and memory: <a href="${esc(path.relative(d.out, path.join(d.run, 'report.html')))}">the personalize run's report</a>.</p>
</body></html>
`;
}

export function writeDemoReport(file: string, d: DemoReportData): void {
  writeFileAtomic(file, demoReportHtml(d));
}
