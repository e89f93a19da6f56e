/**
 * torch.optim.AdamW (amsgrad off) on the host, in place, for the host-side optimizer mode: the
 * runtime runs grads.onnx (loss and every LoRA gradient) and updates the LoRA tensors and their
 * moments here, so a step allocates no new parameter or moment tensors.
 *
 * The arithmetic is passes/training/add-adamw.ts's, op for op and in float32: every intermediate that is a
 * tensor there is rounded to float32 here (Math.fround of the float64 result, which is the
 * correctly rounded float32 result for + − × ÷ √), the constants are the float32 values the
 * graph stores, and the operand order is the graph's:
 *
 *   t     = float(step)           β^t  = exp(t · ln β)  (ln β stored as a float32 constant)
 *   bc1   = 1 − β1^t              bc2√ = √(1 − β2^t)         stepSize = lr / bc1
 *   decay = 1 − lr·wd
 *   m ← m·β1 + g·(1 − β1)         v ← v·β2 + (g·g)·(1 − β2)
 *   p ← p·decay − (m / (√v / bc2√ + ε))·stepSize
 *
 * The one op whose float32 result is not fixed by IEEE is Exp: onnxruntime's float32 exp, against
 * the correctly rounded float32 of Math.exp here. Where the two differ by an ulp for some t, that
 * step's update differs from train.onnx's in the last bit; elsewhere the two agree bit for bit (tests/runtime-train.test.ts checks both modes' loss logs on a real
 * compile). Within the host mode a step is a pure function of its inputs, so a killed and resumed
 * run repeats a straight one bit for bit.
 *
 * A tensor with 8-bit moments (`optimizer adamw8bit`, adamw8bit.ts) runs the same arithmetic one
 * block at a time on its decoded moments and encodes them again after the step.
 */
import type { TrainingSettings } from '../../compiler/manifest';
import { BLOCK, decodeBlock, encodeBlock } from './adamw8bit';
import type { ParamState } from './checkpoint';

const f = Math.fround;

export class HostAdamW {
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly logBeta1: number;
  private readonly logBeta2: number;
  private readonly oneMinusBeta1: number;
  private readonly oneMinusBeta2: number;
  private readonly eps: number;
  private readonly weightDecay: number;

  constructor(optimizer: TrainingSettings['optimizer']) {
    const [beta1, beta2] = optimizer.betas;
    // The float32 constants add-adamw.ts writes (computed in float64, then stored as float32).
    this.beta1 = f(beta1);
    this.beta2 = f(beta2);
    this.logBeta1 = f(Math.log(beta1));
    this.logBeta2 = f(Math.log(beta2));
    this.oneMinusBeta1 = f(1 - beta1);
    this.oneMinusBeta2 = f(1 - beta2);
    this.eps = f(optimizer.eps);
    this.weightDecay = optimizer.weightDecay === 0 ? 0 : f(optimizer.weightDecay);
  }

  /**
   * A tensor whose moments are 8-bit (adamw8bit.ts): block by block, the moments decoded, the
   * float32 kernel run on the block, the new moments encoded with the block's new scales.
   */
  private step8bit(p: ParamState, g: Float32Array, bc2Sqrt: number, stepSize: number, decay: number): void {
    const { expAvg, expAvgSq } = p.quantized!;
    for (let b = 0; b < expAvg.absmax.length; b++) {
      const start = b * BLOCK;
      const end = Math.min(start + BLOCK, p.value.length);
      const m = end - start === BLOCK ? blockM : blockM.subarray(0, end - start);
      const v = end - start === BLOCK ? blockV : blockV.subarray(0, end - start);
      decodeBlock(expAvg, b, true, m);
      decodeBlock(expAvgSq, b, false, v);
      adamwKernel(
        p.value.subarray(start, end),
        m,
        v,
        g.subarray(start, end),
        this.beta1,
        this.beta2,
        this.oneMinusBeta1,
        this.oneMinusBeta2,
        this.eps,
        bc2Sqrt,
        stepSize,
        decay,
      );
      encodeBlock(m, expAvg, b, true);
      encodeBlock(v, expAvgSq, b, false);
    }
  }

  /**
   * One step `t` (1-based) at learning rate `lr`: updates every value and moment in place. The
   * gradients come as arrays or from a reader asked for one tensor at a time, in parameter order
   * (a reader may hand out the same buffer each time).
   */
  step(params: readonly ParamState[], grads: readonly Float32Array[] | GradientReader, lr: number, t: number): void {
    const count = isReader(grads) ? grads.count : grads.length;
    const gradientOf = isReader(grads) ? (k: number) => grads.read(k) : (k: number) => grads[k];
    if (count !== params.length) throw new Error(`AdamW: ${count} gradients for ${params.length} parameters`);
    const lr32 = f(lr);
    const t32 = f(t);
    const power = (logBeta: number) => f(Math.exp(f(t32 * logBeta)));
    const bc1 = f(1 - power(this.logBeta1));
    const bc2Sqrt = f(Math.sqrt(f(1 - power(this.logBeta2))));
    const stepSize = f(lr32 / bc1);
    const decay = this.weightDecay !== 0 ? f(1 - f(lr32 * this.weightDecay)) : 1;
    for (let k = 0; k < params.length; k++) {
      const p = params[k];
      const g = gradientOf(k);
      if (g.length !== p.value.length)
        throw new Error(`AdamW: gradient of ${p.name} has ${g.length} values, the parameter ${p.value.length}`);
      if (p.quantized) {
        this.step8bit(p, g, bc2Sqrt, stepSize, decay);
        continue;
      }
      adamwKernel(
        p.value,
        p.expAvg,
        p.expAvgSq,
        g,
        this.beta1,
        this.beta2,
        this.oneMinusBeta1,
        this.oneMinusBeta2,
        this.eps,
        bc2Sqrt,
        stepSize,
        decay,
      );
    }
  }
}

/** Gradients handed out one tensor at a time (float16 outputs widened into one buffer, step-runner.ts). */
export interface GradientReader {
  readonly count: number;
  read(k: number): Float32Array;
}

function isReader(g: readonly Float32Array[] | GradientReader): g is GradientReader {
  return !Array.isArray(g);
}

/** Scratch for one block of decoded moments (adamw8bit.ts): the 8-bit step updates a block at a time. */
const blockM = new Float32Array(BLOCK);
const blockV = new Float32Array(BLOCK);

/** One tensor's update; a plain monomorphic loop (it runs over every LoRA value each step). */
function adamwKernel(
  value: Float32Array,
  expAvg: Float32Array,
  expAvgSq: Float32Array,
  g: Float32Array,
  beta1: number,
  beta2: number,
  oneMinusBeta1: number,
  oneMinusBeta2: number,
  eps: number,
  bc2Sqrt: number,
  stepSize: number,
  decay: number,
): void {
  const n = value.length;
  for (let i = 0; i < n; i++) {
    const gi = g[i];
    const m = f(f(expAvg[i] * beta1) + f(gi * oneMinusBeta1));
    const v = f(f(expAvgSq[i] * beta2) + f(f(gi * gi) * oneMinusBeta2));
    expAvg[i] = m;
    expAvgSq[i] = v;
    const denom = f(f(f(Math.sqrt(v)) / bc2Sqrt) + eps);
    const delta = f(f(m / denom) * stepSize);
    // decay = 1 when there is no weight decay: p·1 is p exactly, as the graph skips the Mul.
    value[i] = f(value[i] * decay) - delta;
  }
}
