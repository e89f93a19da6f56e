/**
 * Rewrites a built graph (TorchScript form: scopes in node names) into what torch's dynamo
 * exporter (`torch.onnx.export(..., dynamo=True)`, the default since torch 2.9) writes: nodes
 * named `node_<fx name>`, intermediate values `val_<n>`, and the module scopes only in each
 * node's metadata_props, as torch/onnx/_internal/exporter/_core.py records them:
 * - `pkg.torch.onnx.name_scopes`: repr of a list, '' (the root), each enclosing module's
 *   qualified path, then the fx node's own name: `['', 'down_blocks.0', ..., 'linear_3']`;
 * - `pkg.torch.onnx.class_hierarchy`: the parallel class names, the aten op last;
 * - `namespace`: `: <root class>/<path>: <class>/.../<fx name>: <aten op>`.
 * Works on the encoded graph (names only: weights stay where the build wrote them).
 */
import * as fs from 'fs';
import { decodeModelProto, encodeModelProto, PModel } from '../../compiler/proto';

const ROOT_CLASS = 'diffusers.models.unets.unet_2d_condition.UNet2DConditionModel';

/** The aten function torch would record for an ONNX op (close enough for names and metadata). */
const ATEN: Record<string, string> = {
  Conv: 'convolution',
  Gemm: 'linear',
  MatMul: 'matmul',
  Transpose: 't',
  InstanceNormalization: 'group_norm',
  LayerNormalization: 'layer_norm',
  Softmax: 'softmax',
  Sigmoid: 'silu',
  Resize: 'upsample_nearest2d',
  Concat: 'cat',
};

/** A class for a module path segment, by diffusers' naming. */
function classOf(segment: string): string {
  const name = segment.replace(/\.\d+$/, '');
  if (/^(down|up)_blocks$/.test(name)) return 'diffusers.models.unets.unet_2d_blocks.CrossAttnBlock2D';
  if (name === 'mid_block') return 'diffusers.models.unets.unet_2d_blocks.UNetMidBlock2DCrossAttn';
  if (name === 'resnets') return 'diffusers.models.resnet.ResnetBlock2D';
  if (name === 'attentions') return 'diffusers.models.transformers.transformer_2d.Transformer2DModel';
  if (name === 'transformer_blocks') return 'diffusers.models.attention.BasicTransformerBlock';
  if (/^attn\d$/.test(name)) return 'diffusers.models.attention_processor.Attention';
  if (/conv/.test(name)) return 'torch.nn.modules.conv.Conv2d';
  if (/norm/.test(name)) return 'torch.nn.modules.normalization.GroupNorm';
  return 'torch.nn.modules.module.Module';
}

const pyList = (items: readonly string[]) => `[${items.map((s) => `'${s}'`).join(', ')}]`;

export function toDynamoForm(m: PModel): void {
  const g = m.graph!;
  const keep = new Set([...(g.input ?? []), ...(g.output ?? [])].map((v) => v.name ?? ''));
  for (const t of g.initializer ?? []) keep.add(t.name ?? '');
  const renamed = new Map<string, string>();
  const fxCount = new Map<string, number>();
  let values = 0;
  for (const n of g.node ?? []) {
    const segments = (n.name ?? '')
      .split('/')
      .filter((p) => p.length > 0)
      .slice(0, -1);
    const aten = ATEN[n.op_type ?? ''] ?? (n.op_type ?? 'op').toLowerCase();
    const k = fxCount.get(aten) ?? 0;
    fxCount.set(aten, k + 1);
    const fx = k === 0 ? aten : `${aten}_${k}`;
    const paths = segments.map((_, i) => segments.slice(0, i + 1).join('.'));
    const classes = [ROOT_CLASS, ...segments.map(classOf), `aten.${aten}.default`];
    n.name = `node_${fx}`;
    n.metadata_props = [
      {
        key: 'namespace',
        value: [`: ${ROOT_CLASS}`, ...paths.map((p, i) => `${p}: ${classes[i + 1]}`), `${fx}: aten.${aten}.default`].join('/'),
      },
      { key: 'pkg.torch.onnx.class_hierarchy', value: pyList(classes) },
      { key: 'pkg.torch.onnx.name_scopes', value: pyList(['', ...paths, fx]) },
    ];
    n.output = (n.output ?? []).map((o) => {
      if (o === '' || keep.has(o)) return o;
      const name = `val_${values++}`;
      renamed.set(o, name);
      return name;
    });
  }
  for (const n of g.node ?? []) n.input = (n.input ?? []).map((i) => renamed.get(i) ?? i);
  for (const vi of g.value_info ?? []) vi.name = renamed.get(vi.name ?? '') ?? vi.name;
  m.producer_name = 'pytorch';
  m.producer_version = '2.9.0';
}

/** Rewrites a saved model file in place. */
export function rewriteAsDynamo(file: string): void {
  const m = decodeModelProto(fs.readFileSync(file));
  toDynamoForm(m);
  fs.writeFileSync(file, encodeModelProto(m));
}
