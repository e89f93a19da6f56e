/**
 * Where a built model's weights go. The streaming sink generates each tensor in bounded chunks
 * straight into the external-data file and hands back an `external` Tensor pointing at that
 * range, so building a 10 GB SDXL never holds more than one chunk of weights in memory. The
 * virtual sink writes nothing: it lets tests and `describeUNet` look at full-size graphs and
 * count their parameters without 10 GB of disk.
 */
import * as path from 'path';
import { DataType } from '../../compiler/dtype';
import { ExternalDataWriter } from '../../compiler/external-data';
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
   * `stream` (the PyTorch parameter name, so values do not depend on ONNX naming). With `order`
   * 'transposed' the 2-D `dims` [a, b] hold the transpose of what the stream gives for [b, a]:
   * a torch-layout Linear weight (the dynamo export's) equal to the pre-transposed [in, out] one
   * of the TorchScript form built from the same seed.
   */
  tensor(name: string, dims: readonly number[], init: WeightInit, stream: string, order?: 'transposed'): Tensor;
  /** Bytes of weights produced so far. */
  readonly bytes: number;
}

const CHUNK_ELEMENTS = 1 << 20; // 4 MiB of float32 per write

function count(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/**
 * Streams weights into `file` (written under a temporary name; `finish()` renames it into
 * place). Tensors smaller than `inlineBelow` bytes stay inline in the graph, as in exports.
 */
export class StreamingWeightSink implements WeightSink {
  readonly file: string;
  private readonly writer: ExternalDataWriter;
  private readonly chunk = new Float32Array(CHUNK_ELEMENTS);
  private written = 0;

  constructor(
    file: string,
    readonly seed: number,
    readonly inlineBelow = 1024,
  ) {
    this.file = path.resolve(file);
    this.writer = new ExternalDataWriter(this.file);
  }

  get bytes(): number {
    return this.written;
  }

  tensor(name: string, dims: readonly number[], init: WeightInit, stream: string, order?: 'transposed'): Tensor {
    const n = count(dims);
    const rng = new Rng(this.seed, stream);
    this.written += n * 4;
    if (order === 'transposed') return this.transposed(name, dims, init, rng);
    if (n * 4 < this.inlineBelow) {
      const values = new Float32Array(n);
      rng.fillUniform(values, init.center, init.spread);
      return { name, dataType: DataType.FLOAT, dims: [...dims], data: { kind: 'inline', bytes: new Uint8Array(values.buffer) } };
    }
    const placed = this.writer.appendStream((write) => {
      for (let done = 0; done < n;) {
        const k = Math.min(CHUNK_ELEMENTS, n - done);
        const view = this.chunk.subarray(0, k);
        rng.fillUniform(view, init.center, init.spread);
        write(new Uint8Array(view.buffer, 0, k * 4));
        done += k;
      }
    });
    return {
      name,
      dataType: DataType.FLOAT,
      dims: [...dims],
      data: { kind: 'external', file: this.file, offset: placed.offset, length: placed.length },
    };
  }

  /** A whole 2-D tensor at once (a Linear weight: 52 MiB at most in full-size SDXL), transposed. */
  private transposed(name: string, dims: readonly number[], init: WeightInit, rng: Rng): Tensor {
    if (dims.length !== 2) throw new Error(`internal: transposed weight ${name} is not 2-D`);
    const [rows, cols] = dims;
    const drawn = new Float32Array(rows * cols);
    rng.fillUniform(drawn, init.center, init.spread);
    const values = new Float32Array(rows * cols);
    for (let c = 0; c < cols; c++) for (let r = 0; r < rows; r++) values[r * cols + c] = drawn[c * rows + r];
    const bytes = new Uint8Array(values.buffer);
    if (bytes.byteLength < this.inlineBelow) return { name, dataType: DataType.FLOAT, dims: [...dims], data: { kind: 'inline', bytes } };
    const placed = this.writer.appendStream((write) => write(bytes));
    return {
      name,
      dataType: DataType.FLOAT,
      dims: [...dims],
      data: { kind: 'external', file: this.file, offset: placed.offset, length: placed.length },
    };
  }

  /** Moves the data file to its final name (an empty file when every tensor was inline). */
  finish(): void {
    this.writer.commit();
  }

  abort(): void {
    this.writer.abort();
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
    // Small tensors (biases, norms) are zeros in memory: passes that fold constants read them,
    // and a weightless graph still specializes and differentiates (hollowc plan, tests).
    if (count(dims) <= VIRTUAL_INLINE_LIMIT)
      return { name, dataType: DataType.FLOAT, dims: [...dims], data: { kind: 'inline', bytes: new Uint8Array(length) } };
    const t: Tensor = {
      name,
      dataType: DataType.FLOAT,
      dims: [...dims],
      data: { kind: 'external', file: VIRTUAL_WEIGHTS_FILE, offset: this.offset, length },
    };
    this.offset += length;
    return t;
  }
}

/** Elements up to which a virtual weight is an inline zero tensor (the constant folder's limit). */
const VIRTUAL_INLINE_LIMIT = 1 << 14;

export function normalizeSeed(seed: number | undefined): number {
  const s = seed ?? 0;
  if (!Number.isSafeInteger(s) || s < 0 || s > 0xffffffff) throw new Error(`seed must be an integer in 0..4294967295, got ${seed}`);
  return s;
}
