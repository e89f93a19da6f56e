/**
 * Layers LoRA can attach to, found in the graph: Linear layers (exported as MatMul with a weight
 * initializer, plus an Add for the bias; or Gemm) and convolutions. Each is named by its diffusers
 * module path, the name peft and kohya use for the LoRA of that layer.
 */
import { HollowcError } from '../../compiler/errors';
import { Graph, Node, Value } from '../../compiler/ir';
import { moduleOfNode } from '../../compiler/module-scope';

export interface LoraSite {
  module: string;
  kind: 'linear' | 'conv';
  /** The node computing the layer (MatMul, Gemm or Conv). */
  node: Node;
  /** The weight initializer (for a dynamo export's MatMul, the one its Transpose reads). */
  weight: Value;
  /** True when the weight is stored [in, out] (a TorchScript MatMul, Gemm without transB). */
  weightTransposed: boolean;
  /** The layer's input activation. */
  input: Value;
  /** The layer's output (after the bias Add, where the export split it off). */
  output: Value;
  inFeatures: number;
  outFeatures: number;
  /** Conv kernel [kh, kw]; [1, 1] for linear layers. */
  kernel: number[];
}

function biasAddAfter(g: Graph, matmulOut: Value): Node | undefined {
  if (matmulOut.uses.length !== 1) return undefined;
  const add = matmulOut.uses[0].node;
  if (add.opType !== 'Add') return undefined;
  const other = add.inputs[matmulOut.uses[0].index === 0 ? 1 : 0];
  return other?.initializer && other.initializer.dims.length === 1 ? add : undefined;
}

/** Every LoRA-able layer, by module path, in graph order. */
export function findLoraSites(g: Graph): LoraSite[] {
  const sites: LoraSite[] = [];
  for (const n of g.nodes) {
    const module = moduleOfNode(n);
    if (!module) continue;
    if (n.opType === 'MatMul') {
      const x = n.inputs[0];
      // TorchScript: MatMul(x, W [in, out]); dynamo: MatMul(x, Transpose(W [out, in])).
      const read = n.inputs[1];
      const viaTranspose = read?.producer?.opType === 'Transpose' && read.producer.attrInts('perm', []).join() === '1,0';
      const w = viaTranspose ? read!.producer!.inputs[0] : read;
      if (!x || !w?.initializer || w.initializer.dims.length !== 2) continue;
      const [inF, outF] = viaTranspose ? [w.initializer.dims[1], w.initializer.dims[0]] : w.initializer.dims;
      const bias = biasAddAfter(g, n.outputs[0]);
      sites.push({
        module,
        kind: 'linear',
        node: n,
        weight: w,
        weightTransposed: !viaTranspose,
        input: x,
        output: bias ? bias.outputs[0] : n.outputs[0],
        inFeatures: inF,
        outFeatures: outF,
        kernel: [1, 1],
      });
    } else if (n.opType === 'Gemm') {
      const w = n.inputs[1];
      const x = n.inputs[0];
      if (!x || !w?.initializer || n.attrInt('transA', 0) !== 0) continue;
      const [a, b] = w.initializer.dims;
      const transB = n.attrInt('transB', 0) === 1;
      sites.push({
        module,
        kind: 'linear',
        node: n,
        weight: w,
        weightTransposed: !transB,
        input: x,
        output: n.outputs[0],
        inFeatures: transB ? b : a,
        outFeatures: transB ? a : b,
        kernel: [1, 1],
      });
    } else if (n.opType === 'Conv') {
      const w = n.inputs[1];
      const x = n.inputs[0];
      if (!x || !w?.initializer || w.initializer.dims.length !== 4 || n.attrInt('group', 1) !== 1) continue;
      const [outC, inC, kh, kw] = w.initializer.dims;
      sites.push({ module, kind: 'conv', node: n, weight: w, weightTransposed: false, input: x, output: n.outputs[0], inFeatures: inC, outFeatures: outC, kernel: [kh, kw] });
    }
  }
  const seen = new Set<string>();
  return sites.filter((s) => (seen.has(s.module) ? false : (seen.add(s.module), true)));
}

/** LoRA sites for the requested targets, in graph order; unknown targets are an error. */
export function selectSites(g: Graph, targets: readonly string[], label: string): LoraSite[] {
  const sites = findLoraSites(g);
  const byModule = new Map(sites.map((s) => [s.module, s]));
  const missing = targets.filter((t) => !byModule.has(t));
  if (missing.length)
    throw new HollowcError(
      `no Linear or Conv layer for LoRA target${missing.length > 1 ? 's' : ''} ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`,
      label,
    );
  const wanted = new Set(targets);
  return sites.filter((s) => wanted.has(s.module));
}

/** peft/kohya shapes of a site's LoRA: A [r, in(, kh, kw)], B [out, r(, 1, 1)]. */
export function loraShapes(
  site: Pick<LoraSite, 'kind' | 'inFeatures' | 'outFeatures' | 'kernel'>,
  rank: number,
): { a: number[]; b: number[] } {
  return site.kind === 'conv'
    ? { a: [rank, site.inFeatures, ...site.kernel], b: [site.outFeatures, rank, 1, 1] }
    : { a: [rank, site.inFeatures], b: [site.outFeatures, rank] };
}
