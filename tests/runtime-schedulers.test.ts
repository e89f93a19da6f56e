/**
 * The noise schedule and the samplers against diffusers' numbers, and each sampler's math
 * checked with an oracle model that knows the clean latents: a deterministic sampler fed the
 * exact noise (or v) must land on x0.
 *
 * Literal timesteps are what diffusers' set_timesteps computes for the SD scheduler config
 * (timestep_spacing "leading", steps_offset 1), e.g. DDIM 50 steps: 981, 961, ..., 1; sigma
 * values are k-diffusion's SD sigma_max 14.6146 and sigma_min 0.0292.
 */
import { NoiseSchedule } from '../runtime/sampling/noise-schedule';
import { SchedulerName, ddimTimesteps, dpmTimesteps, makeScheduler, roundHalfEven, spacedTimesteps } from '../runtime/sampling/schedulers';
import { Rng, fillNormal } from '../models/random';

const schedule = NoiseSchedule.forFamily('sd15');
const sqrt = Math.sqrt;

describe('scaled_linear noise schedule', () => {
  test('betas, alphas_cumprod and sigmas', () => {
    expect(schedule.betas).toHaveLength(1000);
    expect(schedule.betas[0]).toBeCloseTo(0.00085, 12);
    expect(schedule.betas[999]).toBeCloseTo(0.012, 12);
    // linspace of square roots, squared: the midpoint is not the linear midpoint
    const mid = (sqrt(0.00085) + ((sqrt(0.012) - sqrt(0.00085)) * 500) / 999) ** 2;
    expect(schedule.betas[500]).toBeCloseTo(mid, 14);
    expect(schedule.betas[500]).not.toBeCloseTo((0.00085 + 0.012) / 2, 4);
    expect(schedule.alphasCumprod[0]).toBeCloseTo(0.99915, 12);
    expect(schedule.alphasCumprod[1]).toBeCloseTo(0.99915 * (1 - schedule.betas[1]), 12);
    expect(schedule.alphasCumprod[999]).toBeCloseTo(0.0046601, 6); // diffusers (float32): 0.00466009
    expect(schedule.sigma(999)).toBeCloseTo(14.6146, 3);
    expect(schedule.sigma(0)).toBeCloseTo(0.0292, 4);
    expect(schedule.sigma(958)).toBeCloseTo(11.4769, 3);
    expect(() => schedule.sigma(1000)).toThrow('timestep 1000 is outside 0..999');
  });

  test('add_noise and the v target invert as diffusers converts them', () => {
    const z = new Float32Array(64);
    const eps = new Float32Array(64);
    fillNormal(new Rng(1, 'z'), z, 1);
    fillNormal(new Rng(1, 'eps'), eps, 1);
    for (const t of [0, 417, 999]) {
      const a = schedule.alphasCumprod[t];
      const zt = schedule.addNoise(z, eps, t);
      const v = schedule.velocity(z, eps, t);
      expect(zt[5]).toBeCloseTo(sqrt(a) * z[5] + sqrt(1 - a) * eps[5], 6);
      for (let i = 0; i < 64; i++) {
        // x0 = sqrt(a) z_t - sqrt(1-a) v, eps = sqrt(a) v + sqrt(1-a) z_t
        expect(sqrt(a) * zt[i] - sqrt(1 - a) * v[i]).toBeCloseTo(z[i], 5);
        expect(sqrt(a) * v[i] + sqrt(1 - a) * zt[i]).toBeCloseTo(eps[i], 5);
      }
      expect(schedule.target('epsilon', z, eps, t)).toEqual(eps);
      expect(schedule.target('v_prediction', z, eps, t)).toEqual(v);
    }
  });
});

describe('timesteps and sigmas as diffusers sets them', () => {
  test('DDIM', () => {
    const ts = ddimTimesteps(1000, 50);
    expect(ts.slice(0, 5)).toEqual([981, 961, 941, 921, 901]);
    expect(ts.slice(-3)).toEqual([41, 21, 1]);
    expect(ts).toEqual(Array.from({ length: 50 }, (_, i) => 981 - 20 * i));
    expect(ddimTimesteps(1000, 10)).toEqual([901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
    expect(ddimTimesteps(1000, 10, 'linspace', 0)).toEqual([999, 888, 777, 666, 555, 444, 333, 222, 111, 0]);
    expect(ddimTimesteps(1000, 10, 'trailing', 0)).toEqual([999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
    expect(() => ddimTimesteps(1000, 0)).toThrow('--steps must be an integer in 1..1000, got 0');
  });

  test('Euler ancestral', () => {
    const lead = makeScheduler('euler_a', schedule, 30, { prediction: 'epsilon' }) as ReturnType<typeof makeScheduler> & {
      sigmas: number[];
    };
    expect(lead.timesteps.slice(0, 3)).toEqual([958, 925, 892]);
    expect(lead.timesteps[29]).toBe(1);
    expect(lead.sigmas).toHaveLength(31);
    expect(lead.sigmas[30]).toBe(0);
    expect(lead.sigmas[0]).toBeCloseTo(11.4769, 3);
    // leading spacing: init_noise_sigma = sqrt(sigma_max² + 1)
    expect(lead.initNoiseSigma).toBeCloseTo(sqrt(lead.sigmas[0] ** 2 + 1), 6);

    const lin = makeScheduler('euler_a', schedule, 30, { prediction: 'epsilon', spacing: 'linspace' }) as typeof lead;
    expect(lin.timesteps.slice(0, 4).map((t) => Number(t.toFixed(3)))).toEqual([999, 964.552, 930.103, 895.655]);
    expect(lin.timesteps[29]).toBe(0);
    // np.interp over the float32 timesteps: 14.6146555, 11.91757, 9.814183 in diffusers
    expect(lin.sigmas[0]).toBeCloseTo(14.6146, 3);
    expect(lin.sigmas[1]).toBeCloseTo(11.9176, 3);
    expect(lin.sigmas[2]).toBeCloseTo(9.8142, 3);
    expect(lin.sigmas[29]).toBeCloseTo(0.0292, 4);
    expect(lin.initNoiseSigma).toBeCloseTo(14.6146, 3);
  });

  test('DPM-Solver++ 2M', () => {
    expect(dpmTimesteps(1000, 20)).toEqual([
      941, 894, 847, 800, 753, 706, 659, 612, 565, 518, 471, 424, 377, 330, 283, 236, 189, 142, 95, 48,
    ]);
    expect(dpmTimesteps(1000, 20, 'linspace')).toEqual([
      999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50,
    ]);
    expect(dpmTimesteps(1000, 20, 'trailing')).toEqual([
      999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 499, 449, 399, 349, 299, 249, 199, 149, 99, 49,
    ]);
    const s = makeScheduler('dpmpp_2m', schedule, 20, { prediction: 'epsilon' });
    expect(s.initNoiseSigma).toBe(1);
  });

  test('numpy rounding', () => {
    expect([0.5, 1.5, 2.5, -0.5, 2.4, 2.6].map(roundHalfEven)).toEqual([0, 2, 2, -0, 2, 3]);
    expect(spacedTimesteps(1000, 4, 'leading', 1)).toEqual([751, 501, 251, 1]);
  });
});

describe('sampler math with an oracle model that knows x0', () => {
  const n = 48;
  const x0 = new Float32Array(n);
  fillNormal(new Rng(5, 'x0'), x0, 1);

  /**
   * The exact model output for the current sample: the UNet sees x_in (VP scale: x_in =
   * alpha x0 + sigma eps with alpha = sqrt(abar)), so eps = (x_in - alpha x0) / sigma and
   * v = alpha eps - sigma x0, where abar is that of the timestep it is given.
   */
  function oracle(prediction: 'epsilon' | 'v_prediction', xIn: Float32Array, t: number): Float32Array {
    const abar = t === Math.floor(t) ? schedule.alphasCumprod[t] : undefined;
    // Euler's float timesteps: use the sigma the scheduler used (interpolated) instead
    const a = abar ?? 1 / (1 + sigmaAt(t) ** 2);
    const alpha = sqrt(a);
    const sigma = sqrt(1 - a);
    return xIn.map((x, i) => {
      const eps = (x - alpha * x0[i]) / sigma;
      return prediction === 'epsilon' ? eps : alpha * eps - sigma * x0[i];
    });
  }
  function sigmaAt(t: number): number {
    const s = schedule.sigmas();
    const i = Math.floor(t);
    return s[i] + (t - i) * (s[i + 1] - s[i]);
  }

  function run(
    name: SchedulerName,
    prediction: 'epsilon' | 'v_prediction',
    steps: number,
  ): { out: Float32Array; start: Float32Array; first: number } {
    const s = makeScheduler(name, schedule, steps, { prediction });
    const start = new Float32Array(n);
    fillNormal(new Rng(9, 'start'), start, 1);
    let x: Float32Array = start.map((v) => v * s.initNoiseSigma);
    for (let i = 0; i < s.timesteps.length; i++) {
      const xIn = s.scaleModelInput(x, i);
      x = s.step(oracle(prediction, xIn, s.timesteps[i]), i, x, () => {
        const z = new Float32Array(n);
        fillNormal(new Rng(9, `noise${i}`), z, 1);
        return z;
      });
    }
    return { out: x, start, first: s.timesteps[0] };
  }

  const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

  test.each(['epsilon', 'v_prediction'] as const)(
    'DDIM (eta 0, %s) stays on its line and ends at sqrt(abar_0) x0 + sqrt(1 - abar_0) eps',
    (prediction) => {
      const { out, start, first } = run('ddim', prediction, 25);
      const a = schedule.alphasCumprod[first];
      const a0 = schedule.alphasCumprod[0];
      const want = start.map((x, i) => {
        const eps = (x - sqrt(a) * x0[i]) / sqrt(1 - a);
        return sqrt(a0) * x0[i] + sqrt(1 - a0) * eps;
      });
      expect(maxDiff(out, want)).toBeLessThan(2e-4);
    },
  );

  test.each([
    ['euler_a', 'epsilon'],
    ['euler_a', 'v_prediction'],
    ['dpmpp_2m', 'epsilon'],
    ['dpmpp_2m', 'v_prediction'],
  ] as const)('%s (%s) ends at x0', (name, prediction) => {
    const { out } = run(name, prediction, 20);
    expect(maxDiff(out, x0)).toBeLessThan(2e-4);
  });

  test('DPM-Solver++ 2M: step 1 is first order, step 2 adds the D1 = (m0 - m1) / r0 correction', () => {
    const s = makeScheduler('dpmpp_2m', schedule, 10, { prediction: 'epsilon' }) as ReturnType<typeof makeScheduler> & { sigmas: number[] };
    // VP quantities of a k-diffusion sigma: alpha = 1/sqrt(1+s²), sigma_t = s·alpha, lambda = log(alpha/sigma_t)
    const vp = (k: number) => ({ alpha: 1 / sqrt(1 + k * k), sig: k / sqrt(1 + k * k), lambda: -Math.log(k) });
    const [k0, k1, k2] = s.sigmas;
    const x0s = [0.7, -0.2]; // the model's data predictions at steps 0 and 1
    const x = 1.3;
    const eps0 = (x - vp(k0).alpha * x0s[0]) / vp(k0).sig;
    const y1 = s.step(Float32Array.of(eps0), 0, Float32Array.of(x), () => new Float32Array(1))[0];
    const h1 = vp(k1).lambda - vp(k0).lambda;
    const want1 = (vp(k1).sig / vp(k0).sig) * x - vp(k1).alpha * (Math.exp(-h1) - 1) * x0s[0];
    expect(y1).toBeCloseTo(want1, 5);
    const eps1 = (y1 - vp(k1).alpha * x0s[1]) / vp(k1).sig;
    const y2 = s.step(Float32Array.of(eps1), 1, Float32Array.of(y1), () => new Float32Array(1))[0];
    const h2 = vp(k2).lambda - vp(k1).lambda;
    const r0 = (vp(k1).lambda - vp(k0).lambda) / h2;
    const d1 = (x0s[1] - x0s[0]) / r0;
    const e = Math.exp(-h2) - 1;
    const want2 = (vp(k2).sig / vp(k1).sig) * y1 - vp(k2).alpha * e * x0s[1] - 0.5 * vp(k2).alpha * e * d1;
    expect(y2).toBeCloseTo(want2, 5);
    // and the correction matters
    expect(Math.abs(want2 - ((vp(k2).sig / vp(k1).sig) * y1 - vp(k2).alpha * e * x0s[1]))).toBeGreaterThan(1e-3);
  });
});
