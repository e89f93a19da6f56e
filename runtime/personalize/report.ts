/**
 * What `hollowc personalize` leaves for a person to look at: the loss curve as an SVG and one
 * self-contained report.html (settings, stages with their times and peak memory, the loss curve,
 * the input photos next to the validation images). No scripts, no network: it opens from disk.
 * `esc` is the one HTML escape (the demo report uses it too).
 */
import { writeFileAtomic } from '../../compiler/atomic-files';
import { formatBytes } from '../progress';

export interface LossPoint {
  step: number;
  loss: number;
}

export const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function niceNumber(x: number): string {
  if (x === 0) return '0';
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(0) : a >= 1 ? x.toFixed(2) : x.toPrecision(3);
}

/** The loss per step and its running mean (window ~5% of the steps), with labelled axes. */
export function lossSvg(points: readonly LossPoint[], options: { width?: number; height?: number; title?: string } = {}): string {
  const W = options.width ?? 640;
  const H = options.height ?? 300;
  const m = { l: 64, r: 16, t: 28, b: 40 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
  ];
  parts.push(`<text x="${W / 2}" y="16" text-anchor="middle" font-size="13">${esc(options.title ?? 'training loss')}</text>`);
  if (points.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no steps logged</text></svg>`);
    return parts.join('\n');
  }
  const steps = points.map((p) => p.step);
  const losses = points.map((p) => p.loss);
  const x0 = Math.min(...steps);
  const x1 = Math.max(...steps, x0 + 1);
  let y0 = Math.min(...losses);
  let y1 = Math.max(...losses);
  if (y1 - y0 < 1e-12) ((y0 -= 0.5 * Math.abs(y0) + 1e-6), (y1 += 0.5 * Math.abs(y1) + 1e-6));
  const X = (s: number) => m.l + ((s - x0) / (x1 - x0)) * pw;
  const Y = (v: number) => m.t + (1 - (v - y0) / (y1 - y0)) * ph;
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    const s = x0 + ((x1 - x0) * i) / 4;
    parts.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${Y(v).toFixed(1)}" y2="${Y(v).toFixed(1)}" stroke="#eee"/>`);
    parts.push(`<text x="${m.l - 6}" y="${(Y(v) + 4).toFixed(1)}" text-anchor="end">${niceNumber(v)}</text>`);
    parts.push(`<text x="${X(s).toFixed(1)}" y="${m.t + ph + 16}" text-anchor="middle">${Math.round(s)}</text>`);
  }
  parts.push(`<text x="${m.l + pw / 2}" y="${H - 6}" text-anchor="middle">step</text>`);
  parts.push(`<text x="14" y="${m.t + ph / 2}" text-anchor="middle" transform="rotate(-90 14 ${m.t + ph / 2})">loss</text>`);
  const line = (vals: number[], color: string, width: number) =>
    `<polyline fill="none" stroke="${color}" stroke-width="${width}" points="${vals.map((v, i) => `${X(steps[i]).toFixed(1)},${Y(v).toFixed(1)}`).join(' ')}"/>`;
  parts.push(line(losses, '#9ab', 1));
  const window = Math.max(1, Math.round(points.length / 20));
  const mean = losses.map((_, i) => {
    const from = Math.max(0, i - window + 1);
    const slice = losses.slice(from, i + 1);
    return slice.reduce((a, b) => a + b, 0) / slice.length;
  });
  parts.push(line(mean, '#c33', 2));
  parts.push(`<text x="${m.l + pw - 4}" y="${m.t + 14}" text-anchor="end" fill="#c33">running mean (${window} steps)</text>`);
  parts.push('</svg>');
  return parts.join('\n');
}

export interface ReportStage {
  name: string;
  status: 'ran' | 'resumed' | 'reused';
  summary: string;
  seconds?: number;
  peakRssBytes?: number;
}

export interface ReportImage {
  /** relative to the report, or a data: URI */
  src: string;
  caption: string;
}

export interface ReportData {
  title: string;
  settings: [string, string][];
  stages: ReportStage[];
  lossSvgFile: string;
  notes: string[];
  photos: ReportImage[];
  validation: { prompt: string; images: ReportImage[] }[];
  /** how the validation images were made */
  validationHow: string;
  classImages: ReportImage[];
  files: [string, string][];
  peakRssBytes: number;
}

function gallery(images: readonly ReportImage[]): string {
  return `<div class="row">${images.map((i) => `<figure><img src="${esc(i.src)}" alt="${esc(i.caption)}"><figcaption>${esc(i.caption)}</figcaption></figure>`).join('')}</div>`;
}

export function reportHtml(r: ReportData): string {
  const fmtS = (s?: number) => (s === undefined ? '' : `${s.toFixed(1)} s`);
  const fmtB = (b?: number) => (b === undefined ? '' : formatBytes(b));
  const peakStage = r.stages
    .filter((s) => s.status !== 'reused' && s.peakRssBytes !== undefined)
    .reduce<ReportStage | undefined>((a, s) => (!a || s.peakRssBytes! > a.peakRssBytes! ? s : a), undefined);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(r.title)}</title>
<style>
body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;white-space:nowrap}
.row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;text-align:center;font-size:12px}
figure img{width:160px;height:160px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc;background:#fafafa}
.peak{font-weight:bold}.cols{display:flex;gap:32px;flex-wrap:wrap}
</style></head><body>
<h1>${esc(r.title)}</h1>
<div class="cols"><div>
<h2>Settings</h2>
<table>${r.settings.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('\n')}</table>
</div><div>
<h2>Stages</h2>
<table><tr><th>#</th><th>stage</th><th>status</th><th>what it did</th><th>time</th><th>peak RSS</th></tr>
${r.stages.map((s, i) => `<tr${s === peakStage ? ' class="peak"' : ''}><td>${i + 1}</td><td>${esc(s.name)}</td><td>${s.status}</td><td>${esc(s.summary)}</td><td class="n">${fmtS(s.seconds)}</td><td class="n">${fmtB(s.peakRssBytes)}</td></tr>`).join('\n')}
</table>
<p>Peak RSS of this run: ${formatBytes(r.peakRssBytes)}${peakStage ? `, in the stage <b>${esc(peakStage.name)}</b>` : ''}.</p>
</div></div>
<h2>Training loss</h2>
<img src="${esc(r.lossSvgFile)}" alt="loss curve">
${r.notes.map((n) => `<p>${esc(n)}</p>`).join('\n')}
<h2>Input photos</h2>
${gallery(r.photos)}
<h2>Validation images (${esc(r.validationHow)})</h2>
${r.validation.map((v) => `<h3>${esc(v.prompt)}</h3>${gallery(v.images)}`).join('\n')}
${r.classImages.length ? `<h2>Class images (prior preservation)</h2>\n${gallery(r.classImages)}` : ''}
<h2>Files</h2>
<table>${r.files.map(([f, what]) => `<tr><td><a href="${esc(f)}">${esc(f)}</a></td><td>${esc(what)}</td></tr>`).join('\n')}</table>
</body></html>
`;
}

export function writeReport(file: string, data: ReportData): void {
  writeFileAtomic(file, reportHtml(data));
}

export function writeLossSvg(file: string, points: readonly LossPoint[], title?: string): void {
  writeFileAtomic(file, lossSvg(points, { title }));
}
