/** Seeded onnxruntime tensors for tests. */
import * as ort from 'onnxruntime-node';
import { Rng, fillNormal } from '../../models/random';

/** N(0, std²) values from the stream `name` of `seed`: the same call gives the same tensor. */
export function randomTensor(seed: number, name: string, dims: readonly number[], std = 1): ort.Tensor {
  const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
  fillNormal(new Rng(seed, name), data, std);
  return new ort.Tensor('float32', data, [...dims]);
}

export function zeros(dims: readonly number[]): ort.Tensor {
  return new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), [...dims]);
}
