/**
 * Computes each large convolution input gradient in bands of rows, in the training graphs (after
 * differentiation).
 *
 * Why: a convolution's input gradient is a ConvTranspose, and onnxruntime's CPU ConvTranspose
 * expands its whole input into one column buffer of (output channels x kernel size) x input
 * pixels for the duration of the kernel: for the first resnet of SD's last up block at 64x64
 * latents (960 channels, 3x3), 135 MiB, and the 90 MiB of the next one sat on the step's peak
 * (tests/bench/alloc-trace.ts). In bands of output rows, each band reads its rows of the gradient
 * plus kernel-1 rows of halo and needs a column buffer its size (at most CONV_GRADIENT_COL_BYTES).
 *
 * Matched: ConvTranspose with stride 1, dilation 1, one group, no output padding, a static 4-D
 * input and a weight. The input is zero-padded by kernel-1 rows on each side once; band b of output
 * rows [r, r + R) is the ConvTranspose of padded rows [r + top, r + top + R + kernel - 1) with
 * kernel-1 rows cropped on each side: the same products summed for every output element.
 */
import { GraphBuilder } from '../../compiler/builder';
import { isWeightView } from '../../compiler/flops';
import { Graph, Model, Node } from '../../compiler/ir';
import { OpEmitter } from '../../compiler/op-emitter';
import { Pass } from '../../compiler/pass';
import { staticShape } from '../../compiler/shape-inference';
import { ArtifactState } from '../lib/artifact-state';
import { rowBlocks } from '../lib/row-blocks';

/** The largest column buffer of one band (SD at 64x64: the 960- and 640-channel gradients in 4 and 3 bands; none at 32x32). */
export const CONV_GRADIENT_COL_BYTES = 40 * 2 ** 20;

const allEqual = (xs: readonly number[], v: number) => xs.every((x) => x === v);

/** Output rows of each band, or undefined when the node is not matched or fits the limit. */
function bandsOf(n: Node, limit: number): number[] | undefined {
  if (n.opType !== 'ConvTranspose' || n.domain !== '' || n.inputs[2]) return undefined;
  const [x, w] = n.inputs;
  const [xs, ws, ys] = [x, w, n.outputs[0]].map((v) => (v ? staticShape(v) : undefined));
  if (!xs || !ws || !ys || xs.length !== 4 || ws.length !== 4 || !isWeightView(w)) return undefined;
  if (n.attrInt('group', 1) !== 1 || n.attrString('auto_pad', 'NOTSET') !== 'NOTSET') return undefined;
  if (!allEqual(n.attrInts('strides', [1, 1]), 1) || !allEqual(n.attrInts('dilations', [1, 1]), 1)) return undefined;
  if (!allEqual(n.attrInts('output_padding', [0, 0]), 0) || n.attr('output_shape')) return undefined;
  const [, , kh, kw] = ws;
  const perRow = ws[1] * kh * kw * xs[3] * 4;
  if (perRow * xs[2] <= limit) return undefined;
  return rowBlocks(ys[2], Math.max(1, Math.floor(limit / perRow) - (kh - 1)));
}

function band(g: Graph, opset: number, n: Node, rows: number[]): void {
  const b = new GraphBuilder(g, `${n.name}/bands`);
  const e = new OpEmitter(b, opset, n);
  const [x, w] = n.inputs as [NonNullable<Node['inputs'][0]>, NonNullable<Node['inputs'][1]>];
  const kh = staticShape(w)![2];
  const [top, left, , right] = n.attrInts('pads', [0, 0, 0, 0]);
  const padded = e.pad(x, [0, 0, kh - 1, 0, 0, 0, kh - 1, 0]);
  let start = 0;
  const parts = rows.map((r, i) => {
    const slice = e.slice(padded, [start + top], [start + top + r + kh - 1], [2]);
    start += r;
    const out = b.op('ConvTranspose', [slice, w], undefined, { name: `ConvTranspose_band${i}`, before: n });
    out.producer!.attributes = n.attributes.filter((a) => a.name !== 'pads').map((a) => ({ ...a }));
    out.producer!.attributes.push({ name: 'pads', type: 'ints', value: [kh - 1, left, kh - 1, right] });
    const shape = [...staticShape(n.outputs[0])!];
    shape[2] = r;
    out.type = { elemType: n.outputs[0].type!.elemType, shape };
    return out;
  });
  const joined = e.op('Concat', parts, { axis: 2 });
  g.replaceAllUsesWith(n.outputs[0], joined);
  g.removeNode(n);
}

export function bandConvGradients(model: Model, limit = CONV_GRADIENT_COL_BYTES): { banded: number; bands: number } {
  const g = model.graph;
  const found = g.nodes.map((n) => [n, bandsOf(n, limit)] as const).filter((f): f is readonly [Node, number[]] => !!f[1]);
  const opset = model.opsetVersion('');
  for (const [n, rows] of found) band(g, opset, n, rows);
  return { banded: found.length, bands: found.reduce((a, [, rows]) => a + rows.length, 0) };
}

/** grads.onnx and train.onnx: convolution input gradients in bands of rows. */
export const bandConvGradientsPass: Pass<ArtifactState> = {
  name: 'band-conv-gradients',
  run(model, state) {
    const r = bandConvGradients(model, state.convGradientColBytes ?? CONV_GRADIENT_COL_BYTES);
    return { changed: r.banded > 0, summary: `${r.banded} convolution gradients in ${r.bands} bands of rows` };
  },
};
