/**
 * Where a built model's weights go. The streaming sink generates each tensor in bounded chunks
 * straight into the external-data file and hands back an `external` Tensor pointing at that
 * range, so building a 10 GB SDXL never holds more than one chunk of weights in memory. The
 * virtual sink writes nothing: it lets tests and `describeUNet` look at full-size graphs and
 * count their parameters without 10 GB of disk.
 */
import * as fs from 'fs';
import * as path from 'path';
import { DataType } from '../../compiler/dtype';
import { Tensor } from '../../compiler/ir';
import { Rng, WeightInit } from '../random';

/** How an ONNX initializer holds a PyTorch parameter. */
export type ParameterLayout =
  /** same shape and element order */
  | 'same'
  /** Linear weight exported for MatMul: ONNX [in, out] = transpose of torch [out, in] */
  | 'transposed'
  /** GroupNorm weight/bias exported for Mul/Add: ONNX [C, 1, 1] = torch [C] */
  | 'channel';

export interface ParameterRecord {
  /** PyTorch state_dict name, e.g. `down_blocks.0.resnets.0.norm1.weight` */
  readonly torchName: string;
  readonly torchShape: readonly number[];
  /** ONNX initializer name: the torch name, or `onnx::MatMul_N` / `onnx::Mul_N` / `onnx::Add_N` */
  readonly initializer: string;
  readonly dims: readonly number[];
  readonly layout: ParameterLayout;
}

export interface WeightSink {
  /**
   * The float32 tensor `name` with `dims`, filled per `init` from the random stream named
   * `stream` (the PyTorch parameter name, so values do not depend on ONNX naming).
   */
  tensor(name: string, dims: readonly number[], init: WeightInit, stream: string): Tensor;
  /** Bytes of weights produced so far. */
  readonly bytes: number;
}

const CHUNK_ELEMENTS = 1 << 20; // 4 MiB of float32 per write
const ALIGN = 64;

function count(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/**
 * Streams weights into `file` (written under a temporary name; `finish()` renames it into
 * place). Tensors smaller than `inlineBelow` bytes stay inline in the graph, as in exports.
 */
export class StreamingWeightSink implements WeightSink {
  private fd: number | undefined;
  private offset = 0;
  private readonly tmp: string;
  private readonly chunk = new Float32Array(CHUNK_ELEMENTS);
  private readonly pad = new Uint8Array(ALIGN);
  private written = 0;

  constructor(
    readonly file: string,
    readonly seed: number,
    readonly inlineBelow = 1024,
  ) {
    this.file = path.resolve(file);
    this.tmp = `${this.file}.tmp-${process.pid}-${Date.now()}`;
  }

  get bytes(): number {
    return this.written;
  }

  tensor(name: string, dims: readonly number[], init: WeightInit, stream: string): Tensor {
    const n = count(dims);
    const rng = new Rng(this.seed, stream);
    const length = n * 4;
    this.written += length;
    if (length < this.inlineBelow) {
      const values = new Float32Array(n);
      rng.fillUniform(values, init.center, init.spread);
      return { name, dataType: DataType.FLOAT, dims: [...dims], data: { kind: 'inline', bytes: new Uint8Array(values.buffer) } };
    }
    if (this.fd === undefined) this.fd = fs.openSync(this.tmp, 'w');
    const padding = (ALIGN - (this.offset % ALIGN)) % ALIGN;
    if (padding) this.write(this.pad.subarray(0, padding));
    const start = this.offset;
    for (let done = 0; done < n; ) {
      const k = Math.min(CHUNK_ELEMENTS, n - done);
      const view = this.chunk.subarray(0, k);
      rng.fillUniform(view, init.center, init.spread);
      this.write(new Uint8Array(view.buffer, 0, k * 4));
      done += k;
    }
    return { name, dataType: DataType.FLOAT, dims: [...dims], data: { kind: 'external', file: this.file, offset: start, length } };
  }

  private write(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.byteLength) done += fs.writeSync(this.fd!, bytes, done, bytes.byteLength - done, this.offset + done);
    this.offset += bytes.byteLength;
  }

  /** Closes the data file and moves it to its final name (an empty file when every tensor was inline). */
  finish(): void {
    if (this.fd === undefined) this.fd = fs.openSync(this.tmp, 'w');
    fs.closeSync(this.fd);
    this.fd = undefined;
    fs.renameSync(this.tmp, this.file);
  }

  abort(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    fs.rmSync(this.tmp, { force: true });
  }
}

/** Placeholder location of weights that were never written (see `VirtualWeightSink`). */
export const VIRTUAL_WEIGHTS_FILE = '<virtual weights: not written>';

/**
 * Produces weightless tensors: external ranges into a file that does not exist. A graph built
 * this way can be inspected, printed and counted, but not saved or run.
 */
export class VirtualWeightSink implements WeightSink {
  private offset = 0;

  get bytes(): number {
    return this.offset;
  }

  tensor(name: string, dims: readonly number[]): Tensor {
    const length = count(dims) * 4;
    const t: Tensor = { name, dataType: DataType.FLOAT, dims: [...dims], data: { kind: 'external', file: VIRTUAL_WEIGHTS_FILE, offset: this.offset, length } };
    this.offset += length;
    return t;
  }
}
