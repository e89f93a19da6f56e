/** `hollowc plan`'s table as text, and its Fig. 5a as an SVG. */
import { MiB, Plan } from './plan';

const T = (x: number) => `${(x / 1e12).toFixed(3)}T`;
const G = (x: number) => `${(x / 1e9).toFixed(2)}G`;
const mib = (x: number) => `${Math.round(x / MiB)} MiB`;

export function planText(p: Plan): string {
  const flop = p.rows.some((r) => r.flops.plainForward >= 1e11) ? T : G;
  // `train base`: the trained base weights' column, only when some row has them
  const base = p.rows.some((r) => r.trainedBaseParameters > 0);
  const lines = [
    `${p.family} UNet ${p.model}: sample [${p.shapes.sample.join(', ')}], LoRA rank ${p.rank}, ${p.samples} samples, ${p.steps} steps`,
    ...(p.rows.length
      ? [
          `one inference step: ${flop(p.rows[0].flops.plainForward)} the UNet alone (LoRA merged), ${flop(p.rows[0].flops.loraFtForward)} with the LoRA branches unmerged (LoRA FT)`,
        ]
      : []),
    '',
    [
      'cut',
      'preset',
      'hollowed',
      'share',
      'base held',
      'LoRA',
      ...(base ? ['base trains'] : []),
      'peak (pred.)',
      'store/sample',
      'precompute',
      'train step',
      'train.onnx',
      'infer 2-path',
      'overhead',
      'total',
    ].join('  '),
  ];
  for (const r of p.rows) {
    lines.push(
      [
        `${r.cut === p.chosen ? '*' : ' '}${r.cut.padEnd(5)}`,
        (r.preset ?? '').padEnd(8),
        (r.hollowed.length ? `${r.hollowed[0]}..${r.hollowed[r.hollowed.length - 1]}` : '-').padEnd(9),
        `${(100 * r.fraction).toFixed(1)}%`.padStart(6),
        r.baseParameters.toLocaleString('en-US').padStart(12),
        r.loraParameters.toLocaleString('en-US').padStart(11),
        ...(base ? [r.trainedBaseParameters.toLocaleString('en-US').padStart(12)] : []),
        `${mib(r.memory.predictedPeakBytes)}${r.fitsBudget === false ? ' (over)' : ''}`.padStart(12),
        (r.storeBytesPerSample ? `${(r.storeBytesPerSample / 1024).toFixed(1)} KiB` : '-').padStart(12),
        flop(r.flops.precompute).padStart(10),
        flop(r.flops.trainStepPaper).padStart(10),
        flop(r.flops.trainStepCounted).padStart(10),
        flop(r.flops.inferTwoPath).padStart(12),
        `${(100 * r.inferenceOverhead).toFixed(1)}%`.padStart(8),
        flop(r.totals.all).padStart(10),
      ].join('  '),
    );
  }
  lines.push('', p.conventions.flops, p.conventions.memory);
  if (p.budgetBytes !== undefined)
    lines.push(
      p.chosen ? `* fits the ${mib(p.budgetBytes)} budget with the fewest hollowed layers` : `no configuration fits ${mib(p.budgetBytes)}`,
    );
  return lines.join('\n') + '\n';
}

/** Fig. 5a: predicted peak memory and training FLOPs against the hollowed fraction. */
export function planSvg(p: Plan): string {
  const W = 640;
  const H = 400;
  const m = { l: 70, r: 70, t: 40, b: 50 };
  const xs = p.rows.map((r) => 100 * r.fraction);
  const mem = p.rows.map((r) => r.memory.predictedPeakBytes / MiB);
  const giga = Math.max(...p.rows.map((r) => r.flops.trainStepPaper)) < 1e11;
  const unit = giga ? 'G' : 'T';
  const fl = p.rows.map((r) => r.flops.trainStepPaper / (giga ? 1e9 : 1e12));
  const xMax = Math.max(1, ...xs);
  const scale = (v: number, max: number) => m.t + (H - m.t - m.b) * (1 - v / (max * 1.1 || 1));
  const X = (x: number) => m.l + ((W - m.l - m.r) * x) / xMax;
  const path = (ys: number[], max: number) =>
    xs.map((x, i) => `${i ? 'L' : 'M'}${X(x).toFixed(1)},${scale(ys[i], max).toFixed(1)}`).join(' ');
  const [memMax, flMax] = [Math.max(...mem), Math.max(...fl)];
  const dots = (ys: number[], max: number, color: string) =>
    xs.map((x, i) => `<circle cx="${X(x).toFixed(1)}" cy="${scale(ys[i], max).toFixed(1)}" r="3" fill="${color}"/>`).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${p.family}: training memory and FLOPs vs hollowed fraction (rank ${p.rank}, sample ${p.shapes.sample.join('x')})</text>
<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>
<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="#1f77b4"/>
<line x1="${W - m.r}" y1="${m.t}" x2="${W - m.r}" y2="${H - m.b}" stroke="#d62728"/>
<text x="${W / 2}" y="${H - 12}" text-anchor="middle" class="x-label">hollowed fraction of parameters (%)</text>
<text transform="translate(18 ${H / 2}) rotate(-90)" text-anchor="middle" fill="#1f77b4" class="y-label">predicted peak memory (MiB)</text>
<text transform="translate(${W - 16} ${H / 2}) rotate(90)" text-anchor="middle" fill="#d62728" class="y-label">training FLOPs per step (${unit}, 3 x forward)</text>
${[0, 0.5, 1].map((f) => `<text x="${m.l - 6}" y="${scale(memMax * f * 1.1, memMax).toFixed(1)}" text-anchor="end">${Math.round(memMax * f * 1.1)}</text><text x="${W - m.r + 6}" y="${scale(flMax * f * 1.1, flMax).toFixed(1)}">${(flMax * f * 1.1).toFixed(2)}</text>`).join('')}
${[0, xMax / 2, xMax].map((x) => `<text x="${X(x).toFixed(1)}" y="${H - m.b + 16}" text-anchor="middle">${x.toFixed(0)}</text>`).join('')}
<path d="${path(mem, memMax)}" fill="none" stroke="#1f77b4" stroke-width="2" class="series-memory"/>${dots(mem, memMax, '#1f77b4')}
<path d="${path(fl, flMax)}" fill="none" stroke="#d62728" stroke-width="2" stroke-dasharray="5 3" class="series-flops"/>${dots(fl, flMax, '#d62728')}
</svg>
`;
}
