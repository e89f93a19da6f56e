/**
 * A UNet in miniature for golden pass tests: one down layer with two LoRA-able projections,
 * a mid layer (the hollow), the skip Concat of the first kept up layer, one up projection. Its
 * names follow the module scopes of a torch.onnx.export of diffusers, so the passes treat it as
 * they treat a real UNet, and its printed graphs fit on a screen.
 *
 *   h = sample·Wq + mean_t(encoder_hidden_states·Wk)      down_blocks.0 (attn1.to_q, attn2.to_k)
 *   m = relu(h·Wmid)                                     mid_block (hollowed)
 *   out_sample = concat(m, h)·Wup + sample               up_blocks.0 (attn1.to_v)
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model } from '../../compiler/ir';
import { defaultTrainingSettings } from '../../models/training-defaults';
import type { CutInfo, UNetAnalysis } from '../../passes/lib/analyze-unet';
import type { ArtifactState } from '../../passes/lib/artifact-state';

const F = DataType.FLOAT;
const WIDTH = 4;
const TOKENS = 3;

function weight(b: GraphBuilder, name: string, rows: number, cols: number, seed: number) {
  const data = Float32Array.from({ length: rows * cols }, (_, i) => Math.round(100 * Math.sin(seed + i)) / 100);
  return b.initializer(name, F, [rows, cols], { kind: 'inline', bytes: new Uint8Array(data.buffer) });
}

export function toyUNet(): Model {
  const g = new Graph();
  g.name = 'toy_unet';
  const sample = g.addInput('sample', { elemType: F, shape: ['batch', TOKENS, WIDTH] });
  const ehs = g.addInput('encoder_hidden_states', { elemType: F, shape: ['batch', 2, WIDTH] });
  const b = new GraphBuilder(g);
  const block = 'down_blocks.0/attentions.0/transformer_blocks.0';
  const q = b.within(`${block}/attn1/to_q`).op('MatMul', [sample, weight(b, 'down_blocks.0.attn1.to_q.weight', WIDTH, WIDTH, 1)]);
  const k = b.within(`${block}/attn2/to_k`).op('MatMul', [ehs, weight(b, 'down_blocks.0.attn2.to_k.weight', WIDTH, WIDTH, 2)]);
  const pooled = b.within(`${block}/attn2`).op('ReduceMean', [k], { axes: [1], keepdims: 1 });
  const h = b.within(`${block}`).op('Add', [q, pooled]);
  const mid = b
    .within('mid_block/attentions.0/transformer_blocks.0/attn1/to_out.0')
    .op('MatMul', [h, weight(b, 'mid_block.to_out.weight', WIDTH, WIDTH, 3)]);
  const m = b.within('mid_block/attentions.0').op('Relu', [mid]);
  const cat = b.within('up_blocks.0/resnets.0').op('Concat', [m, h], { axis: 2 });
  const up = b
    .within('up_blocks.0/attentions.0/transformer_blocks.0/attn1/to_v')
    .op('MatMul', [cat, weight(b, 'up_blocks.0.attn1.to_v.weight', 2 * WIDTH, WIDTH, 4)]);
  const out = g.addNode({ opType: 'Add', name: '/Add', inputs: [up, sample], outputs: ['out_sample'] }).outputs[0];
  out.type = { elemType: F, shape: ['batch', TOKENS, WIDTH] };
  g.outputs = [out];
  const model = new Model(g);
  model.irVersion = 8;
  model.opsetImports = [{ domain: '', version: 17 }];
  return model;
}

export const TOY_TARGETS = [
  'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q',
  'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k',
  'mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0',
  'up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v',
];

/**
 * The pipeline state for the toy: its cut hollows mid_block. The passes read only the
 * activation and the hollowed modules of a cut, and the family of the analysis.
 */
export function toyState(hollow: boolean, base: 'fp32' | 'int8' | 'fp16' = 'fp32'): ArtifactState {
  const cut = {
    activation: {
      tensor: '/mid_block/attentions.0/Relu_output_0',
      concat: '/up_blocks.0/resnets.0/Concat',
      shape: ['batch', TOKENS, WIDTH],
    },
    hollowedModules: ['mid_block'],
  } as unknown as CutInfo;
  return {
    analysis: { family: 'sd15' } as UNetAnalysis,
    cut: hollow ? cut : null,
    targets: TOY_TARGETS,
    lora: { rank: 2, alpha: 4 },
    training: { ...defaultTrainingSettings('sd15'), base, shapes: { sample: [1, TOKENS, WIDTH], encoder_hidden_states: [1, 2, WIDTH] } },
    label: 'toy',
    // the toy's weights are 4x4 and 4x8: quantize them all under base int8
    quantizeMinElements: 1,
  };
}
