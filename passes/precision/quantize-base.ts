/**
 * `base int8`: the training graphs hold the frozen base weights as int8 with one fp32 scale per
 * output channel (symmetric, zero point 0), and dequantize them at each use, as QLoRA does with
 * its 4-bit base. LoRA parameters, biases, norms and everything small stay fp32, and so does the
 * arithmetic: only the stored weights lose precision.
 *
 * Each use (forward and backward) gets its own DequantizeLinear, so an fp32 copy of a weight
 * lives only while that one node runs. One DequantizeLinear shared by the forward and backward
 * reads would keep the copy alive in between; onnxruntime's common subexpression elimination
 * would merge them the same way and is off for training sessions (runtime/train/step-session.ts). Its
 * constant folding skips DequantizeLinear, so no fp32 copy is made at session start either.
 *
 * The dequantize nodes go first in the node list. onnxruntime orders execution by a depth-first
 * walk from the sinks that, at each node, enters its inputs' producers from the highest node index
 * down, so the producer with the lowest index runs last, right before the reader. Placed next to
 * its reader, a dequantize had the highest index and ran before the whole subgraph of the reader's
 * other input: on full SD 2.1 (39.2%, 32x32) 320 MiB of dequantized weights were alive at the peak.
 *
 * The weights are read once here, in bounded chunks, for their scales; the int8 bytes are
 * produced chunk by chunk again when the artifact is written (TensorData `computed`).
 */
import * as fs from 'fs';
import { HollowcError } from '../../compiler/errors';
import { readRangeInChunks } from '../../compiler/external-data';
import { DataType } from '../../compiler/dtype';
import { Graph, Node, Tensor, Value, inlineTensor, tensorElementCount } from '../../compiler/ir';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';

/** Smaller weights (16 KiB in fp32) stay as they are: they save little. */
export const MIN_QUANTIZED_ELEMENTS = 1 << 12;

/**
 * Calls `f` on consecutive runs of the fp32 tensor's values with each value's channel along
 * `axis` (row-major: element i is in channel floor(i / inner) mod channels). Buffers are reused.
 */
function forEachChunk(t: Tensor, axis: number, f: (values: Float32Array, channels: Int32Array) => void): void {
  const inner = t.dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const count = t.dims[axis];
  let channels = new Int32Array(0);
  const visit = (values: Float32Array, first: number) => {
    if (channels.length < values.length) channels = new Int32Array(values.length);
    for (let i = 0; i < values.length; i++) channels[i] = Math.floor((first + i) / inner) % count;
    f(values, channels.subarray(0, values.length));
  };
  if (t.data.kind === 'inline') {
    const b = t.data.bytes;
    const aligned = b.byteOffset % 4 === 0 ? b : new Uint8Array(b); // a copy at offset 0 (Buffer.slice would be a view)
    visit(new Float32Array(aligned.buffer, aligned.byteOffset, tensorElementCount(t)), 0);
    return;
  }
  if (t.data.kind === 'computed') {
    // a float16 export's weight, widened as it is read (float16-weights.ts): whole float32 values per chunk
    let at = 0;
    t.data.produce((chunk) => {
      const aligned = chunk.byteOffset % 4 === 0 ? chunk : new Uint8Array(chunk);
      visit(new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4), at / 4);
      at += chunk.byteLength;
    });
    return;
  }
  if (t.data.kind !== 'external') throw new Error(`tensor ${t.name}: cannot read ${t.data.kind} data as fp32`);
  readRangeInChunks(t.data.file, t.data.offset, t.data.length, (chunk, at) =>
    visit(new Float32Array(chunk.buffer, chunk.byteOffset, chunk.byteLength / 4), at / 4),
  );
}

/** Per-channel scales max|w|/127 (1 for an all-zero channel), read in chunks. */
function channelScales(t: Tensor, axis: number): Float32Array {
  const maxAbs = new Float32Array(t.dims[axis]);
  forEachChunk(t, axis, (v, c) => {
    for (let i = 0; i < v.length; i++) {
      const a = Math.abs(v[i]);
      if (a > maxAbs[c[i]]) maxAbs[c[i]] = a;
    }
  });
  return maxAbs.map((m) => (m > 0 && Number.isFinite(m) ? m / 127 : 1));
}

/** The int8 bytes of `t` under `scales`, produced chunk by chunk. */
function quantizedData(t: Tensor, axis: number, scales: Float32Array, key: string): Tensor['data'] {
  return {
    kind: 'computed',
    key,
    length: tensorElementCount(t),
    produce: (write) =>
      forEachChunk(t, axis, (v, c) => {
        const q = new Int8Array(v.length);
        for (let i = 0; i < v.length; i++) q[i] = Math.max(-127, Math.min(127, Math.round(v[i] / scales[c[i]])));
        write(new Uint8Array(q.buffer));
      }),
  };
}

/** Scales by weight source, so grads.onnx and train.onnx of one compile read each weight once for them. */
const scaleCache = new Map<string, Float32Array>();
const SCALE_CACHE_LIMIT = 4096;

function sourceKey(t: Tensor, axis: number): string {
  if (t.data.kind !== 'external') return '';
  const st = fs.statSync(t.data.file);
  return `${t.data.file}:${st.size}:${st.mtimeMs}:${t.data.offset}:${t.data.length}:${t.dims.join('x')}:${axis}`;
}

/**
 * The quantization axis: a MatMul's [in, out] weight per output column; a Gemm/Conv weight (and
 * anything else) per leading (output) channel.
 */
function axisFor(w: Value): number {
  const dims = w.initializer!.dims;
  if (dims.length === 2 && w.uses.some((u) => u.node.opType === 'MatMul' && u.index === 1)) return 1;
  return 0;
}

function quantizable(w: Value, minElements: number): boolean {
  const t = w.initializer;
  return (
    !!t &&
    t.dataType === DataType.FLOAT &&
    t.dims.length >= 2 &&
    tensorElementCount(t) >= minElements &&
    (t.data.kind === 'external' || t.data.kind === 'inline' || t.data.kind === 'computed') &&
    w.uses.length > 0
  );
}

export interface QuantizeResult {
  weights: number;
  /** Dequantize nodes added (one per use). */
  uses: number;
  fp32Bytes: number;
  int8Bytes: number;
}

/** `readScales` false: the graph's structure alone (every scale 1, no weight read), for plan. */
export function quantizeBase(
  g: Graph,
  label: string,
  opset: number,
  minElements = MIN_QUANTIZED_ELEMENTS,
  readScales = true,
): QuantizeResult {
  const result: QuantizeResult = { weights: 0, uses: 0, fp32Bytes: 0, int8Bytes: 0 };
  const weights = g.initializers().filter((w) => quantizable(w, minElements));
  const dequantizers: Node[] = [];
  if (weights.length && opset < 13)
    throw new HollowcError(`base int8 needs opset 13 or later (per-channel DequantizeLinear); the model is opset ${opset}`, label);
  for (const w of weights) {
    const t = w.initializer!;
    const axis = axisFor(w);
    const source = readScales ? sourceKey(t, axis) : '';
    let scales = !readScales ? new Float32Array(t.dims[axis]).fill(1) : source ? scaleCache.get(source) : undefined;
    if (!scales) {
      scales = channelScales(t, axis);
      if (source) {
        if (scaleCache.size >= SCALE_CACHE_LIMIT) scaleCache.clear();
        scaleCache.set(source, scales);
      }
    }
    const base = w.name;
    const q = g.addInitializer({
      name: g.freshName(`${base}.int8`),
      dataType: DataType.INT8,
      dims: [...t.dims],
      data: quantizedData(
        t,
        axis,
        scales,
        source ? `int8:${source}` : t.data.kind === 'computed' ? `int8:${t.data.key}:${axis}` : `int8:${base}:${g.freshName('inline')}`,
      ),
    });
    const scale = g.addInitializer(
      inlineTensor(g.freshName(`${base}.scale`), DataType.FLOAT, [scales.length], new Uint8Array(scales.buffer)),
    );
    const zero = g.addInitializer(
      inlineTensor(g.freshName(`${base}.zero_point`), DataType.INT8, [scales.length], new Uint8Array(scales.length)),
    );
    for (const use of [...w.uses]) {
      const dq = g.addNode({
        name: `${base}/dequantize`,
        opType: 'DequantizeLinear',
        inputs: [q, scale, zero],
        outputs: 1,
        attributes: [{ name: 'axis', type: 'int', value: axis }],
      });
      dequantizers.push(dq);
      dq.outputs[0].type = { elemType: DataType.FLOAT, shape: [...t.dims] };
      g.setInput(use.node, use.index, dq.outputs[0]);
      result.uses++;
    }
    g.deleteValue(w);
    result.weights++;
    result.fp32Bytes += tensorElementCount(t) * 4;
    result.int8Bytes += tensorElementCount(t) + scales.length * 5;
  }
  // first in node order (see the top of this file)
  const first = new Set(dequantizers);
  g.reorderNodes([...dequantizers, ...g.nodes.filter((n) => !first.has(n))]);
  return result;
}

/** grads.onnx and train.onnx under `base int8`, after differentiation: every weight read dequantized. */
export const quantizeBasePass: Pass<ArtifactState> = {
  name: 'quantize-base',
  requires: ['gradients'],
  run(model, state) {
    if (state.training.base !== 'int8') return { changed: false, summary: 'base fp32: weights as they are' };
    const r = quantizeBase(model.graph, state.label, model.opsetVersion(), state.quantizeMinElements, !state.structureOnly);
    return {
      changed: r.weights > 0,
      summary: `${r.weights} weights, ${(r.fp32Bytes / 2 ** 20).toFixed(1)} MiB fp32 -> ${(r.int8Bytes / 2 ** 20).toFixed(1)} MiB int8, ${r.uses} dequantize nodes`,
    };
  },
};
