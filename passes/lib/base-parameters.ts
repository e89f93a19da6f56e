/**
 * The UNet's own weights as torch names and shapes them: what `train base` makes trainable and
 * what a fine-tune exports. An export stores some parameters under anonymous names and in another
 * layout than torch's: TorchScript writes a Linear weight read by MatMul pre-transposed
 * (`onnx::MatMul_<N>`, [in, out]) and a GroupNorm's affine parameters unsqueezed for the Mul/Add
 * after its InstanceNormalization (`onnx::Mul_<N>` / `onnx::Add_<N>`, [C, 1, 1]). Each is named
 * here by its module (module-scope.ts) and role, `<module>.weight` or `<module>.bias`, with the
 * layout that maps torch's tensor onto the stored one. No weight bytes are read.
 */
import { HollowcError } from '../../compiler/errors';
import { Graph, Node, TensorData, Value } from '../../compiler/ir';
import { findParameters, isWithin } from '../../compiler/module-scope';
import { transposedData } from './transposed-data';

/**
 * How a parameter is stored against torch's layout: as torch has it; `transposed`, a 2-D weight
 * stored [in, out] for a MatMul (or a Gemm without transB); `unsqueezed`, a 1-D parameter stored
 * with trailing unit axes ([C, 1, 1]).
 */
export type StoredLayout = 'torch' | 'transposed' | 'unsqueezed';

export interface BaseParameter {
  /** The diffusers parameter name: `down_blocks.0.resnets.0.conv1.weight`. */
  name: string;
  module: string;
  /** The initializer that holds it. */
  value: Value;
  /** torch's shape. */
  shape: number[];
  layout: StoredLayout;
}

const NAMED = /^[A-Za-z_]\w*(\.\w+)*\.(weight|bias)$/;

/** The node reading `v` as a weight (not through a layout op), and at which input. */
function reader(v: Value): { node: Node; index: number } | undefined {
  return v.uses.find((u) => u.node.opType !== 'Unsqueeze' && u.node.opType !== 'Reshape' && u.node.opType !== 'Transpose') ?? v.uses[0];
}

/** weight or bias, for a parameter the export left anonymous: from the slot that reads it. */
function roleOf(v: Value): 'weight' | 'bias' {
  const r = reader(v);
  if (!r) return 'weight';
  switch (r.node.opType) {
    case 'Conv':
    case 'Gemm':
    case 'LayerNormalization':
    case 'GroupNormalization':
      return r.index === 2 ? 'bias' : 'weight';
    case 'Add':
      return 'bias';
    default:
      return 'weight';
  }
}

function layoutOf(v: Value): StoredLayout {
  const dims = v.initializer!.dims;
  if (dims.length === 2) {
    const transposed = v.uses.some(
      (u) =>
        (u.node.opType === 'MatMul' && u.index === 1) || (u.node.opType === 'Gemm' && u.index === 1 && u.node.attrInt('transB', 0) === 0),
    );
    return transposed ? 'transposed' : 'torch';
  }
  // A norm's scale or bias read by an elementwise op after InstanceNormalization: [C, 1, 1].
  if (dims.length > 1 && dims.slice(1).every((d) => d === 1) && v.uses.every((u) => u.node.opType === 'Mul' || u.node.opType === 'Add'))
    return 'unsqueezed';
  return 'torch';
}

function torchShape(dims: readonly number[], layout: StoredLayout): number[] {
  if (layout === 'transposed') return [dims[1], dims[0]];
  if (layout === 'unsqueezed') return [dims[0]];
  return [...dims];
}

/** Every parameter of the UNet, in graph order, by diffusers name; a name found twice is an internal error. */
export function findBaseParameters(g: Graph): BaseParameter[] {
  const out: BaseParameter[] = [];
  const seen = new Set<string>();
  for (const p of findParameters(g)) {
    const t = p.value.initializer!;
    const name = NAMED.test(t.name) ? t.name : `${p.module}.${roleOf(p.value)}`;
    if (seen.has(name)) throw new Error(`internal: two initializers are the parameter ${name} (${t.name})`);
    seen.add(name);
    const layout = layoutOf(p.value);
    out.push({ name, module: p.module, value: p.value, shape: torchShape(t.dims, layout), layout });
  }
  return out;
}

/**
 * The parameters named, in graph order, for `compile`'s `trainBase`: a name the model has no
 * parameter for, or one inside the hollow (it never enters the training graphs), is an error.
 */
export function selectBaseParameters(
  g: Graph,
  names: readonly string[],
  hollowedModules: readonly string[],
  label: string,
): BaseParameter[] {
  const all = findBaseParameters(g);
  const known = new Set(all.map((p) => p.name));
  const missing = names.filter((n) => !known.has(n));
  if (missing.length)
    throw new HollowcError(
      `train base: no parameter named ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ` (and ${missing.length - 3} more)` : ''}; parameters are named as diffusers names them, e.g. ${all[0]?.name ?? '(none)'}`,
      label,
    );
  const wanted = new Set(names);
  const picked = all.filter((p) => wanted.has(p.name));
  const hollowed = picked.find((p) => hollowedModules.some((m) => isWithin(p.module, m)));
  if (hollowed)
    throw new HollowcError(
      `train base: ${hollowed.name} is inside the hollow (${hollowedModules.join(', ')}): hollowed weights never train`,
      label,
    );
  return picked;
}

/** A parameter's float32 bytes in torch's layout: its stored bytes, transposed where stored [in, out]. */
export function torchLayoutData(p: BaseParameter): TensorData {
  const t = p.value.initializer!;
  if (p.layout !== 'transposed') return t.data;
  const key =
    t.data.kind === 'external'
      ? `torch:${t.data.file}:${t.data.offset}`
      : t.data.kind === 'computed'
        ? `torch:${t.data.key}`
        : `torch:${p.name}`;
  return transposedData(t, key);
}
