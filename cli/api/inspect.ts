/** `hollowc inspect` as functions: the block table and valid cuts of a UNet graph, as text or as JSON. */
import { UNetAnalysis } from '../../passes/lib/analyze-unet';
import { describeIds } from '../../models/layout';
import { presetsFor } from '../../models/presets';

/** The `--json` document: one object, stable field names (scripts depend on them). */
export function inspectJson(a: UNetAnalysis) {
  return {
    family: a.family,
    totalParams: a.totalParams,
    skips: a.skips.length,
    blocks: a.blocks.map((b) => ({ id: b.id, modules: b.modules, params: b.params })),
    cuts: a.cuts.map((c) => ({
      after: c.lastKeptDown,
      hollowed: c.hollowed,
      removedParams: c.removedParams,
      fraction: Number(c.fraction.toFixed(6)),
      hollowActivation: c.activation.tensor,
      shape: c.activation.shape,
    })),
  };
}

const fmt = (n: number) => n.toLocaleString('en-US');
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

export function inspectText(a: UNetAnalysis, file: string): string {
  const lines: string[] = [];
  lines.push(`${file}: ${a.family} UNet, ${fmt(a.totalParams)} parameters, ${a.skips.length} skip connections`);
  lines.push('');
  const rows = [
    ...a.stem.filter((s) => s.id === 'conv_in' || s.id === 'time_embedding' || s.id === 'add_embedding'),
    ...a.blocks,
    ...a.stem.filter((s) => s.id === 'conv_norm_out' || s.id === 'conv_out'),
  ];
  const idWidth = Math.max(...rows.map((r) => r.id.length), 5);
  lines.push(`${'block'.padEnd(idWidth)}  ${'params'.padStart(13)}  ${'share'.padStart(6)}  skip    modules`);
  for (const r of rows) {
    const skip = r.emitsSkip !== undefined ? `->${r.emitsSkip}` : r.consumesSkip !== undefined ? `<-${r.consumesSkip}` : '';
    lines.push(
      `${r.id.padEnd(idWidth)}  ${fmt(r.params).padStart(13)}  ${pct(r.params / a.totalParams).padStart(6)}  ${skip.padEnd(6)}  ${r.modules.join(' + ')}`,
    );
  }
  lines.push('');
  const presetOf = new Map(presetsFor(a.family).map((p) => [p.lastKeptDown, p.name]));
  lines.push('valid cuts (keep the down path through "after", hollow the rest of the middle):');
  lines.push(
    `${'after'.padEnd(idWidth)}  ${'removed'.padStart(13)}  ${'share'.padStart(6)}  preset    hollowed            hollow activation`,
  );
  for (const c of a.cuts) {
    const preset = presetOf.get(c.lastKeptDown) ?? '';
    lines.push(
      `${c.lastKeptDown.padEnd(idWidth)}  ${fmt(c.removedParams).padStart(13)}  ${pct(c.fraction).padStart(6)}  ${preset.padEnd(8)}  ${describeIds(a.layout, c.hollowed).padEnd(18)}  ${c.activation.tensor} [${c.activation.shape.join(', ')}]`,
    );
  }
  return lines.join('\n') + '\n';
}

