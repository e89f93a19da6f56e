/** A 2-D float32 weight's bytes transposed, produced when the tensor is written (never all weights at once). */
import { streamBytes } from '../../compiler/float16-data';
import { Tensor, TensorData, tensorElementCount } from '../../compiler/ir';

/** Streams [rows, cols] float32 bytes transposed to [cols, rows]: the source weight is read whole (one weight, tens of MiB at most). */
export function transposedData(t: Tensor, key: string): TensorData {
  const [rows, cols] = t.dims;
  const length = 4 * tensorElementCount(t);
  return {
    kind: 'computed',
    key,
    length,
    produce: (write) => {
      const bytes = new Uint8Array(length);
      let at = 0;
      streamBytes(t.name, t.data, (chunk) => {
        bytes.set(chunk, at);
        at += chunk.byteLength;
      });
      if (at !== length) throw new Error(`tensor ${t.name}: ${at} bytes read, ${length} expected`);
      const src = new Float32Array(bytes.buffer);
      const out = new Float32Array(rows * cols);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c];
      write(new Uint8Array(out.buffer));
    },
  };
}
