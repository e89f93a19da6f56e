/**
 * Module scopes and PyTorch parameters in an exported UNet graph.
 *
 * torch.onnx.export (TorchScript) names nodes after the module that ran them (`/down_blocks.2/
 * attentions.1/transformer_blocks.0/attn1/to_q/MatMul`), but gives Linear weights anonymous names
 * (`onnx::MatMul_8619`); the dynamo exporter keeps the scopes in node metadata and names every
 * parameter. So a weight's owner is read off its name or the node that uses it, and whether an
 * initializer is a parameter at all is read off how it is used: exporters also store constants
 * (InstanceNormalization's ones and zeros, folded shapes and scalars) as initializers.
 */
import { Graph, Node, Value, tensorElementCount } from './ir';
import { DataType } from './dtype';

/** Node metadata where torch's dynamo exporter records scopes (torch/onnx/_internal/exporter/_core.py). */
export const NAME_SCOPES_KEY = 'pkg.torch.onnx.name_scopes';
export const NAMESPACE_KEY = 'namespace';

const moduleCache = new WeakMap<Node, { name: string; module: string }>();

/**
 * The module that ran a node. TorchScript exports scope node names:
 * `/down_blocks.0/resnets.0/conv1/Conv` -> `down_blocks.0.resnets.0.conv1`; `/Shape` -> ''.
 * The dynamo exporter names nodes `node_<fx name>` and keeps the scopes in metadata_props:
 * `pkg.torch.onnx.name_scopes` = `['', 'down_blocks.0', ..., 'down_blocks.0.resnets.0.conv1',
 * 'conv2d_3']` (the last entry is the fx node itself), or else `namespace` =
 * `: <class>/down_blocks.0: <class>/.../conv2d_3: aten.convolution.default`.
 */
export function moduleOfNode(node: Node): string {
  const cached = moduleCache.get(node);
  if (cached && cached.name === node.name) return cached.module;
  const module = node.name.includes('/') ? moduleOfScopedName(node.name) : (moduleOfMetadata(node) ?? '');
  moduleCache.set(node, { name: node.name, module });
  return module;
}

function moduleOfScopedName(name: string): string {
  return name
    .split('/')
    .filter((p) => p.length > 0)
    .slice(0, -1)
    .join('.');
}

/** The strings of a Python list repr: `['', 'a.b']` -> ['', 'a.b']. */
function pythonStrings(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"/g)) out.push((m[1] ?? m[2]).replace(/\\(.)/g, '$1'));
  return out;
}

/** A module path as torch records it, without the `@N` it appends to a module's later calls. */
const modulePath = (p: string) => p.replace(/@\d+$/, '');

function moduleOfMetadata(node: Node): string | undefined {
  const meta = (key: string) => node.metadataProps?.find((e) => e.key === key)?.value;
  const scopes = meta(NAME_SCOPES_KEY);
  if (scopes !== undefined) {
    const list = pythonStrings(scopes);
    return list.length >= 2 ? modulePath(list[list.length - 2]) : '';
  }
  const namespace = meta(NAMESPACE_KEY);
  if (namespace !== undefined) {
    const entries = namespace.split('/');
    return entries.length >= 2 ? modulePath(entries[entries.length - 2].split(': ')[0].trim()) : '';
  }
  return undefined;
}

/** True when `path` is `module` or lies inside it. */
export function isWithin(path: string, module: string): boolean {
  return path === module || path.startsWith(`${module}.`);
}

const PARAMETER_NAME = /^[A-Za-z_][\w]*(\.[\w]+)*\.(weight|bias)$/;
const FLOAT_TYPES: ReadonlySet<number> = new Set([DataType.FLOAT, DataType.FLOAT16, DataType.BFLOAT16, DataType.DOUBLE]);

/** Producer op of a value, looking through Reshape (GroupNorm's affine follows a Reshape). */
function producerThroughReshape(v: Value | null): Node | null {
  let n = v?.producer ?? null;
  while (n && n.opType === 'Reshape') n = n.inputs[0]?.producer ?? null;
  return n;
}

function otherInput(node: Node, index: number): Value | null {
  return node.inputs[index === 0 ? 1 : 0] ?? null;
}

/** Whether `node` reads its input `index` as a trainable parameter of some PyTorch module. */
function isParameterSlot(node: Node, index: number): boolean {
  switch (node.opType) {
    case 'Conv':
    case 'ConvTranspose':
    case 'LayerNormalization':
    case 'GroupNormalization':
      return index === 1 || index === 2;
    case 'Gemm':
    case 'MatMul':
      return true;
    case 'Mul': {
      // GroupNorm exports as Reshape -> InstanceNormalization -> Reshape -> Mul(weight) -> Add(bias).
      return producerThroughReshape(otherInput(node, index))?.opType === 'InstanceNormalization';
    }
    case 'Add': {
      const other = producerThroughReshape(otherInput(node, index));
      if (!other) return false;
      // Linear bias after MatMul, or GroupNorm bias after its Mul.
      if (other.opType === 'MatMul') return true;
      if (other.opType === 'Mul') return other.inputs.some((v, i) => v?.isInitializer && isParameterSlot(other, i));
      return false;
    }
    default:
      return false;
  }
}

export interface ParameterInfo {
  value: Value;
  /** Module path owning the parameter, e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`. */
  module: string;
  count: number;
}

/**
 * Every initializer that is a PyTorch parameter, with its owning module. A parameter named like
 * one (`conv_in.weight`) belongs to the module in its name; an anonymous one to the module of the
 * first node that reads it as a weight.
 */
export function findParameters(g: Graph): ParameterInfo[] {
  const out: ParameterInfo[] = [];
  for (const v of g.initializers()) {
    const t = v.initializer!;
    if (!FLOAT_TYPES.has(t.dataType) || t.dims.length === 0) continue;
    const named = PARAMETER_NAME.test(t.name);
    const slot = v.uses.find((u) => u.node.opType !== 'InstanceNormalization' && isParameterSlot(u.node, u.index));
    if (!named && !slot) continue;
    if (v.uses.length > 0 && v.uses.every((u) => u.node.opType === 'InstanceNormalization')) continue;
    const module = named ? t.name.replace(/\.(weight|bias)$/, '') : moduleOfNode(slot!.node);
    out.push({ value: v, module, count: tensorElementCount(t) });
  }
  return out;
}

/** Module paths that appear in node names, each with every prefix (`down_blocks.0`, `down_blocks.0.resnets.0`, ...). */
export function moduleTree(g: Graph): Set<string> {
  const modules = new Set<string>();
  for (const n of g.nodes) {
    const parts = moduleOfNode(n).split('.');
    for (let i = 1; i <= parts.length; i++) if (parts[0]) modules.add(parts.slice(0, i).join('.'));
  }
  return modules;
}
