/** Drawing: the live loss curve (SVG, no library). */
export const LORA_FILE_NAME = 'lora.safetensors';
const SVG = 'http://www.w3.org/2000/svg';

export function drawLossCurve(svg: SVGSVGElement, losses: readonly { step: number; loss: number }[]): void {
  const W = 480;
  const H = 240;
  const pad = { l: 56, r: 12, t: 12, b: 32 };
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const el = (name: string, attrs: Record<string, string | number>, text?: string) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  el('rect', { x: pad.l, y: pad.t, width: W - pad.l - pad.r, height: H - pad.t - pad.b, fill: '#fff', stroke: '#ccc' });
  if (!losses.length) return;
  const ys = losses.map((l) => l.loss);
  let lo = Math.min(...ys);
  let hi = Math.max(...ys);
  if (hi - lo < 1e-9) ((lo -= 0.5), (hi += 0.5));
  const maxStep = Math.max(losses[losses.length - 1].step, 2);
  const x = (s: number) => pad.l + ((s - 1) / (maxStep - 1)) * (W - pad.l - pad.r);
  const y = (v: number) => pad.t + (1 - (v - lo) / (hi - lo)) * (H - pad.t - pad.b);
  for (const v of [lo, (lo + hi) / 2, hi]) {
    el('line', { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), stroke: '#eee' });
    el('text', { x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#555' }, v.toFixed(4));
  }
  el('text', { x: pad.l, y: H - 10, 'font-size': 11, fill: '#555' }, 'step 1');
  el('text', { x: W - pad.r, y: H - 10, 'text-anchor': 'end', 'font-size': 11, fill: '#555' }, `step ${maxStep}`);
  el('polyline', {
    points: losses.map((l) => `${x(l.step).toFixed(1)},${y(l.loss).toFixed(1)}`).join(' '),
    fill: 'none',
    stroke: '#c2410c',
    'stroke-width': 2,
  });
  const last = losses[losses.length - 1];
  el('circle', { cx: x(last.step), cy: y(last.loss), r: 3, fill: '#c2410c' });
}
