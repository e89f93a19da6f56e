/**
 * Seeded pseudo-random weights. Every tensor gets its own xoshiro128** stream, seeded from the
 * model seed and the tensor's PyTorch parameter name, so a weight's values do not depend on the
 * order tensors are built in, on chunk sizes, or on which other modules exist. Same seed and
 * name: same bytes, on every machine (32-bit integer arithmetic only, then one float32 rounding).
 */

// A module-level alias: inside a vm context (jest) every `Math.imul` would be a slow global
// lookup through the context's interceptor, 100x slower in the fill loop below.
const imul = Math.imul;

/** FNV-1a over the UTF-16 code units of `s` (names are ASCII). */
export function hashString(s: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** splitmix32 step: a well-mixed 32-bit value from a counter. */
function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) >>> 0;
  let z = x;
  z = imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** xoshiro128** (Blackman & Vigna): fast, 2^128 - 1 period, passes BigCrush. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream: string) {
    let x = (hashString(stream) ^ imul(seed >>> 0, 0x9e3779b1)) >>> 0;
    x = splitmix32(x);
    this.a = x;
    x = splitmix32(x ^ 0x5bd1e995);
    this.b = x;
    x = splitmix32(x ^ 0x27d4eb2f);
    this.c = x;
    x = splitmix32(x ^ 0x165667b1);
    this.d = x;
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
  }

  /** The next uint32. */
  next(): number {
    const result = imul(rotl(imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /**
   * Fills `out` with `center + spread * u`, u uniform in [-1, 1) on a 2^-23 grid. Computed in
   * float64 and rounded once to float32, so the values are reproducible bit for bit.
   */
  fillUniform(out: Float32Array, center: number, spread: number): void {
    // Inlined next(): this loop writes every weight of a 10 GB model.
    let a = this.a;
    let b = this.b;
    let c = this.c;
    let d = this.d;
    const scale = spread * 2 ** -23;
    for (let i = 0; i < out.length; i++) {
      const r = imul(rotl(imul(b, 5), 7), 9);
      const t = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= t;
      d = (d << 11) | (d >>> 21);
      // r >> 8: a signed 24-bit integer in [-2^23, 2^23).
      out[i] = center + (r >> 8) * scale;
    }
    this.a = a;
    this.b = b;
    this.c = c;
    this.d = d;
  }
}

/** A uniform float in (0, 1): 32 random bits, never exactly 0 (Box-Muller takes its log). */
export function uniformOpen(rng: Rng): number {
  return (rng.next() + 0.5) / 2 ** 32;
}

/** Fills `out` with N(0, std²) values (Box-Muller), reproducible for a given stream. */
export function fillNormal(rng: Rng, out: Float32Array, std: number): void {
  for (let i = 0; i < out.length; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniformOpen(rng)));
    const theta = 2 * Math.PI * uniformOpen(rng);
    out[i] = std * r * Math.cos(theta);
    if (i + 1 < out.length) out[i + 1] = std * r * Math.sin(theta);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * How a weight is initialised: `center + spread * U[-1, 1)`. PyTorch's defaults for Linear and
 * Conv2d (kaiming_uniform with a = sqrt(5), and the bias rule) both come out as
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norms get weights near 1 and small non-zero biases (like
 * the fixture's perturbed init), so no tensor is constant and activations stay O(1).
 */
export interface WeightInit {
  readonly center: number;
  readonly spread: number;
}

export function fanInUniform(fanIn: number): WeightInit {
  return { center: 0, spread: 1 / Math.sqrt(fanIn) };
}

export const NORM_WEIGHT: WeightInit = { center: 1, spread: 0.1 };
export const NORM_BIAS: WeightInit = { center: 0, spread: 0.1 };
