// A hand-made ModelFacts with the SD 1.5 block layout (paper Fig. 7) and tiny widths, so the
// DSL's semantic checks can be tested without any graph code. Its resolveHollow knows the paper
// presets and accepts any contiguous block set; it is a stand-in, not the real cut logic.
import { BaseParameterFacts, HollowRequest, LayerFacts, LoraCandidate, ModelFacts } from '../dsl';

const WIDTH = [32, 64, 64, 64]; // channels of down_blocks.0..3 (up blocks mirror them)
const CONTEXT = 96; // cross-attention context width

function layersOf(): LayerFacts[] {
  const layers: LayerFacts[] = [];
  for (let b = 0; b < 4; b++) {
    const attn = b < 3;
    for (let j = 0; j < 2; j++) {
      const m = [`down_blocks.${b}.resnets.${j}`];
      if (attn) m.push(`down_blocks.${b}.attentions.${j}`);
      layers.push({ id: `${b + 1}-${j + 1}`, stage: 'down', modules: m });
    }
    if (b < 3) layers.push({ id: `${b + 1}-3`, stage: 'down', modules: [`down_blocks.${b}.downsamplers.0`] });
  }
  layers.push({ id: '5-1', stage: 'mid', modules: ['mid_block.resnets.0', 'mid_block.attentions.0'] });
  layers.push({ id: '5-2', stage: 'mid', modules: ['mid_block.resnets.1'] });
  for (let b = 0; b < 4; b++) {
    const attn = b > 0;
    for (let j = 0; j < 3; j++) {
      const m = [`up_blocks.${b}.resnets.${j}`];
      if (attn) m.push(`up_blocks.${b}.attentions.${j}`);
      layers.push({ id: `${b + 6}-${j + 1}`, stage: 'up', modules: m });
    }
    if (b < 3) layers.push({ id: `${b + 6}-4`, stage: 'up', modules: [`up_blocks.${b}.upsamplers.0`] });
  }
  return layers;
}

function widthOf(module: string): number {
  const [kind, idx] = module.split('.');
  if (kind === 'mid_block') return WIDTH[3]!;
  const b = Number(idx);
  return kind === 'down_blocks' ? WIDTH[b]! : WIDTH[3 - b]!;
}

function candidatesOf(layers: readonly LayerFacts[]): LoraCandidate[] {
  const out: LoraCandidate[] = [];
  for (const l of layers) {
    for (const m of l.modules) {
      const w = widthOf(m);
      if (m.includes('.resnets.')) {
        out.push({ module: `${m}.conv1`, in: w, out: w, kind: 'conv' });
        out.push({ module: `${m}.conv2`, in: w, out: w, kind: 'conv' });
      }
      if (!m.includes('.attentions.')) continue;
      const t = `${m}.transformer_blocks.0`;
      for (const p of ['to_q', 'to_k', 'to_v']) out.push({ module: `${t}.attn1.${p}`, in: w, out: w, kind: 'linear' });
      out.push({ module: `${t}.attn1.to_out.0`, in: w, out: w, kind: 'linear' });
      out.push({ module: `${t}.attn2.to_q`, in: w, out: w, kind: 'linear' });
      for (const p of ['to_k', 'to_v']) out.push({ module: `${t}.attn2.${p}`, in: CONTEXT, out: w, kind: 'linear' });
      out.push({ module: `${t}.attn2.to_out.0`, in: w, out: w, kind: 'linear' });
      out.push({ module: `${t}.ff.net.2`, in: 4 * w, out: w, kind: 'linear' });
    }
  }
  return out;
}

/** Weights and biases of the LoRA candidates, each resnet's two GroupNorms and the stem, in layer order: enough for `train base`. */
function baseParametersOf(layers: readonly LayerFacts[], candidates: readonly LoraCandidate[]): BaseParameterFacts[] {
  const out: BaseParameterFacts[] = [
    { name: 'conv_in.weight', module: 'conv_in', shape: [WIDTH[0]!, 4, 3, 3] },
    { name: 'conv_in.bias', module: 'conv_in', shape: [WIDTH[0]!] },
    { name: 'time_embedding.linear_1.weight', module: 'time_embedding.linear_1', shape: [4 * WIDTH[0]!, WIDTH[0]!] },
  ];
  for (const l of layers) {
    for (const m of l.modules) {
      if (m.includes('.resnets.')) {
        for (const norm of ['norm1', 'norm2']) out.push({ name: `${m}.${norm}.weight`, module: `${m}.${norm}`, shape: [widthOf(m)] });
      }
      for (const c of candidates.filter((c) => c.module.startsWith(m + '.'))) {
        const kernel = c.kind === 'conv' ? [3, 3] : [];
        out.push({ name: `${c.module}.weight`, module: c.module, shape: [c.out, c.in, ...kernel] });
        out.push({ name: `${c.module}.bias`, module: c.module, shape: [c.out] });
      }
    }
  }
  out.push({ name: 'conv_out.weight', module: 'conv_out', shape: [4, WIDTH[0]!, 3, 3] });
  return out;
}

const PRESETS: Record<string, [string, string]> = {
  '11.5%': ['5-1', '5-2'],
  '20.8%': ['4-2', '6-1'],
  '30.1%': ['4-1', '6-2'],
  '39.2%': ['3-3', '6-4'],
  '56.6%': ['3-2', '7-1'],
  '73.3%': ['3-1', '7-2'],
  '84.3%': ['2-3', '7-4'],
};

export function toySd15(): ModelFacts {
  const layers = layersOf();
  const loraCandidates = candidatesOf(layers);
  const ids = layers.map((l) => l.id);
  const span = (a: string, b: string) => ids.slice(ids.indexOf(a), ids.indexOf(b) + 1);
  return {
    family: 'sd15',
    layers,
    loraCandidates,
    baseParameters: baseParametersOf(layers, loraCandidates),
    inputs: [
      { name: 'sample', rank: 4, dims: [null, 4, null, null] },
      { name: 'timestep', rank: 1 },
      { name: 'encoder_hidden_states', rank: 3, dims: [null, 77, CONTEXT] },
    ],
    resolveHollow(req: HollowRequest) {
      if ('none' in req) return { hollowed: [] };
      if ('preset' in req) return { hollowed: span(...PRESETS[req.preset]!) };
      if ('after' in req) {
        const next = ids[ids.indexOf(req.after) + 1]!;
        const preset = Object.values(PRESETS).find(([from]) => from === next);
        if (preset === undefined) throw new Error(`no symmetric cut keeps the down path up to ${req.after}`);
        return { hollowed: span(...preset) };
      }
      const idx = req.blocks.map((b) => ids.indexOf(b));
      const gap = idx.findIndex((x, i) => i > 0 && x !== idx[i - 1]! + 1);
      if (gap >= 0) {
        const missing = ids.slice(idx[gap - 1]! + 1, idx[gap]!);
        throw new Error(`hollowed blocks must be contiguous: add ${missing.join(', ')}`);
      }
      return { hollowed: [...req.blocks] };
    },
  };
}
