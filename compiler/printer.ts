/**
 * A compact, stable text form of a graph for golden tests and debugging. Weights print as
 * type and shape only; small constants (up to SMALL_CONSTANT elements, a few bytes read) print their values.
 */
import { constFromTensor } from './constant-eval';
import { dataTypeName } from './dtype';
import { Attribute, Graph, Tensor, TensorType, tensorElementCount } from './ir';

const SMALL_CONSTANT = 8;

function typeText(t: TensorType | undefined): string {
  if (!t) return '?';
  const dims = t.shape ? `[${t.shape.map((d) => (d === null ? '?' : String(d))).join(',')}]` : '[*]';
  return `${dataTypeName(t.elemType)}${dims}`;
}

function tensorText(t: Tensor): string {
  const values = tensorElementCount(t) <= SMALL_CONSTANT ? constFromTensor(t)?.data : undefined;
  const shown = values ? ` {${values.map((x) => String(Number.isInteger(x) ? x : Number(x.toPrecision(7)))).join(', ')}}` : '';
  return `${dataTypeName(t.dataType)}[${t.dims.join(',')}]${shown}${t.data.kind === 'external' ? ' external' : t.data.kind === 'computed' ? ' computed' : ''}`;
}

function attrText(a: Attribute): string {
  switch (a.type) {
    case 'tensor':
      return `${a.name}=${tensorText(a.value)}`;
    case 'tensors':
      return `${a.name}=[${a.value.map(tensorText).join(', ')}]`;
    case 'string':
      return `${a.name}=${JSON.stringify(a.value)}`;
    case 'floats':
    case 'ints':
      return `${a.name}=[${a.value.join(',')}]`;
    case 'strings':
      return `${a.name}=${JSON.stringify(a.value)}`;
    case 'opaque':
      return `${a.name}=<opaque>`;
    default:
      return `${a.name}=${a.value}`;
  }
}

export interface PrintOptions {
  /** Print node names after each node (default true). */
  nodeNames?: boolean;
}

export function printGraph(g: Graph, options: PrintOptions = {}): string {
  const lines: string[] = [`graph ${JSON.stringify(g.name)}`];
  for (const v of g.inputs) lines.push(`  input %${v.name}: ${typeText(v.type)}`);
  for (const v of g.initializers()) lines.push(`  init %${v.name}: ${tensorText(v.initializer!)}`);
  for (const n of g.nodes) {
    const outs = n.outputs.map((o) => `%${o.name}`).join(', ');
    const ins = n.inputs.map((v) => (v ? `%${v.name}` : '_')).join(', ');
    const attrs = n.attributes.length ? ` {${n.attributes.map(attrText).join(', ')}}` : '';
    const op = n.domain ? `${n.domain}.${n.opType}` : n.opType;
    const name = options.nodeNames === false ? '' : `  # ${n.name}`;
    lines.push(`  ${outs} = ${op}(${ins})${attrs}${name}`);
  }
  for (const v of g.outputs) lines.push(`  output %${v.name}: ${typeText(v.type)}`);
  return lines.join('\n') + '\n';
}
