/**
 * The WebGPU provider (Dawn over Vulkan; here SwiftShader, Debian chromium's CPU Vulkan driver)
 * against the CPU provider on tiny sd15 and sdxl at 8x8 latents: precompute.onnx, infer.onnx
 * with B = 0 and with a nonzero LoRA, and one train.onnx step (loss, every updated LoRA tensor and
 * AdamW moment); plus the node placement report and the missing-provider messages.
 *
 * Without a Vulkan adapter (no loader or no driver) the WebGPU tests are skipped with a loud
 * message; CI has one (`apt-get install chromium`, VK_ICD_FILENAMES or useSoftwareVulkan()).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { compileFromSpec } from '../cli/compile';
import { HollowcError } from '../compiler/errors';
import { buildUNet } from '../models/builder';
import { FAMILIES, FamilyName } from '../models/families';
import { createSession, describePlacement, missingProvider, sessionProvider, SessionOptions } from '../runtime/session';
import { findVulkanLoader, noAdapterMessage, useSoftwareVulkan, vulkanDrivers } from '../runtime/vulkan';
import { runCli } from './support/cli';
import { tempDir } from './support/fixture';
import { compareOutputs, feedsFor } from './support/webgpu';

const software = useSoftwareVulkan();
const ADAPTER = process.platform !== 'linux' || ((!!findVulkanLoader() || !!software?.preloadedLoader) && vulkanDrivers().length > 0);
if (!ADAPTER) {
  // CI installs chromium (.ci/run): there a missing adapter is a failure, not a skip.
  if (process.env.CI) throw new Error(`no Vulkan adapter for the WebGPU tests in CI: ${noAdapterMessage()}`);
  const line = '*'.repeat(100);
  console.error(
    `${line}\n*** WEBGPU TESTS SKIPPED: ${noAdapterMessage()}\n*** CI must not skip these: install chromium (SwiftShader) there.\n${line}`,
  );
}
const gpuDescribe = ADAPTER ? describe : describe.skip;

const LATENT = 8;
// Per output, max |webgpu - cpu| / max |cpu|. Forward artifacts and the loss stay under 1e-4 on
// SwiftShader (measured 1.4e-5 .. 6e-5). Gradients do not: per-tensor differences of lora_A
// gradients reach 3-5e-4 (median 8e-5) although the CPU provider agrees with itself to 1e-5
// across thread counts and optimization levels (WEBGPU-NOTES.md), so AdamW moments (0.1 g and
// 0.001 g²) are compared against the largest moment of their kind over all tensors (sqrt of
// exp_avg_sq), and updated tensors where |g| is far above AdamW's eps (expectUpdatesClose).
const TOL = 1e-4;
const SESSIONS: Record<string, SessionOptions> = { precompute: {}, infer: {}, train: { optimization: 'basic', memPattern: false } };

interface Compiled {
  out: string;
  sizes: Record<string, number>;
}

async function compileTiny(family: FamilyName): Promise<Compiled> {
  const dir = tempDir(`hollowc-webgpu-${family}-`);
  const v = FAMILIES[family].tiny;
  const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 });
  const [tokens, dim] = v.shapes.encoder_hidden_states.slice(1);
  const spec = path.join(dir, 'spec.hollow');
  fs.writeFileSync(
    spec,
    [
      `model ${family}`,
      `hollow preset "${family === 'sdxl' ? 'sdxl-mid' : '39.2%'}"`,
      `shape sample [1, 4, ${LATENT}, ${LATENT}]`,
      'shape timestep [1]',
      `shape encoder_hidden_states [1, ${tokens}, ${dim}]`,
      ...(v.shapes.text_embeds ? [`shape text_embeds [1, ${v.shapes.text_embeds[1]}]`, 'shape time_ids [1, 6]'] : []),
      'lora rank 4',
      // Two targets keep train.onnx small; one in the kept down path, one cross-attention.
      'lora targets "attn1.to_q" "attn2.to_v"',
      'emit precompute train infer',
      '',
    ].join('\n'),
  );
  const out = path.join(dir, 'out');
  compileFromSpec(file, spec, { out });
  return { out, sizes: { batch: 1, height: LATENT, width: LATENT, sequence: tokens } };
}

/** CPU and WebGPU outputs of one artifact on the same feeds (one pair of sessions for all `loraB`). */
async function both(c: Compiled, artifact: string, loraBs: ('zero' | 'random')[]) {
  const file = path.join(c.out, `${artifact}.onnx`);
  const cpu = await createSession(file, SESSIONS[artifact]);
  const gpu = await createSession(file, { ...SESSIONS[artifact], ep: 'webgpu', placement: true });
  try {
    expect(sessionProvider(gpu)).toBe('webgpu');
    const runs = [];
    for (const loraB of loraBs) {
      const feeds = feedsFor(cpu, 5, loraB, c.sizes);
      runs.push({ loraB, want: await cpu.run(feeds), got: await gpu.run(feeds) });
    }
    const placement = describePlacement(gpu)!;
    console.log(`${path.basename(path.dirname(c.out))} ${artifact}.onnx: ${placement.summary}`);
    return { runs, placement };
  } finally {
    await cpu.release();
    await gpu.release();
  }
}

function expectClose(want: Record<string, ort.Tensor>, got: Record<string, ort.Tensor>, names: string[], label: string) {
  const diffs = compareOutputs(Object.fromEntries(names.map((n) => [n, want[n]])), got);
  console.log(
    `${label}: worst ${diffs[0].name} ${diffs[0].rel.toExponential(2)} (max abs ${diffs[0].maxAbs.toExponential(2)}, scale ${diffs[0].scale.toExponential(2)})`,
  );
  for (const d of diffs)
    if (!(d.rel <= TOL))
      throw new Error(
        `${label}: ${d.name} differs from the CPU by ${d.rel.toExponential(2)} relative (max abs ${d.maxAbs.toExponential(2)})`,
      );
}

/** Worst difference over a group of tensors, against the largest |value| in the group. */
function expectGroupClose(
  want: Record<string, ort.Tensor>,
  got: Record<string, ort.Tensor>,
  names: string[],
  label: string,
  f: (x: number) => number = (x) => x,
) {
  let scale = 0;
  let maxAbs = 0;
  for (const n of names) {
    const w = want[n].data as Float32Array;
    const g = got[n].data as Float32Array;
    for (let i = 0; i < w.length; i++) {
      scale = Math.max(scale, Math.abs(f(w[i])));
      maxAbs = Math.max(maxAbs, Math.abs(f(w[i]) - f(g[i])));
    }
  }
  const perTensor = compareOutputs(Object.fromEntries(names.map((n) => [n, want[n]])), got)[0];
  console.log(
    `${label}: ${(maxAbs / scale).toExponential(2)} of the largest (per tensor worst ${perTensor.name} ${perTensor.rel.toExponential(2)})`,
  );
  expect(maxAbs / scale).toBeLessThanOrEqual(TOL);
}

const LR = 1e-3;
// |g| below this (100 eps) makes AdamW's step-1 update g / (|g| + eps) hinge on eps: there a
// gradient difference far below the tolerance above moves the update by up to lr.
const EPS_DOMINATED = 1e-6;

/**
 * Updated LoRA tensors of step 1 (zero moments, so g = 10 exp_avg.updated): within TOL of the
 * largest |p| where |g| >= EPS_DOMINATED, within 2 lr (one step either way) elsewhere.
 */
function expectUpdatesClose(want: Record<string, ort.Tensor>, got: Record<string, ort.Tensor>, names: string[], label: string) {
  let worst = { name: '', rel: 0 };
  let hinged = 0;
  let total = 0;
  for (const n of names) {
    const w = want[n].data as Float32Array;
    const g = got[n].data as Float32Array;
    const m = want[n.replace(/\.updated$/, '.exp_avg.updated')].data as Float32Array;
    const scale = w.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
    total += w.length;
    for (let i = 0; i < w.length; i++) {
      const d = Math.abs(w[i] - g[i]);
      if (Math.abs(10 * m[i]) < EPS_DOMINATED) {
        hinged++;
        if (!(d <= 2 * LR)) throw new Error(`${label}: ${n}[${i}] (eps-dominated) moved ${d} from the CPU's, more than 2 lr`);
      } else if (d / scale > worst.rel) worst = { name: `${n}[${i}]`, rel: d / scale };
    }
  }
  console.log(
    `${label}: worst ${worst.name} ${worst.rel.toExponential(2)} of max |p| (${hinged} of ${total} elements have |g| < ${EPS_DOMINATED}: within 2 lr)`,
  );
  expect(worst.rel).toBeLessThanOrEqual(TOL);
}

describe('missing providers', () => {
  const model = path.join(__dirname, 'fixtures', 'diffusers', 'sd15-tiny', 'model.onnx');

  test('--ep cuda: one line naming the install command; --cpu-fallback runs on the CPU', async () => {
    const problem = missingProvider('cuda');
    if (problem === undefined) return console.warn('this machine has the CUDA provider installed: nothing to check');
    const err = await createSession(model, { ep: 'cuda' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HollowcError);
    const message = (err as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toContain('ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node');
    expect(message).toMatch(/^the cuda execution provider is not installed: /);
    const warnings: string[] = [];
    const session = await createSession(model, { ep: 'cuda', fallbackToCpu: true, log: (m) => warnings.push(m) });
    try {
      expect(sessionProvider(session)).toBe('cpu');
      expect(warnings).toEqual([`warning: ${problem}; running on the CPU instead`]);
    } finally {
      await session.release();
    }
  });

  test('providers other builds have say where they come from', () => {
    if (process.platform !== 'linux') return;
    expect(missingProvider('dml')).toMatch(/has no dml execution provider: DirectML ships only in onnxruntime-node for Windows/);
    expect(missingProvider('coreml')).toMatch(/CoreML ships only in onnxruntime-node for macOS/);
    expect(missingProvider('qnn')).toMatch(/has no qnn execution provider/);
    expect(missingProvider('webgpu')).toBeUndefined();
  });

  test('webgpu without a Vulkan driver: "no Vulkan adapter" with the SwiftShader hint (child process)', () => {
    if (process.platform !== 'linux') return;
    // A child process, so this process's WebGPU context is not touched.
    const code = `
      const { createSession } = require(${JSON.stringify(path.join(__dirname, 'support', 'webgpu-child.js'))});
      createSession(${JSON.stringify(model)}, { ep: 'webgpu' }).then(() => console.log('STARTED'), (e) => console.log('ERROR ' + e.message));`;
    const r = spawnSync(process.execPath, ['-e', code], {
      env: { ...process.env, VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '' },
      encoding: 'utf8',
      timeout: 60000,
    });
    const line = r.stdout.split('\n').find((l) => l.startsWith('ERROR') || l.startsWith('STARTED'));
    expect(line).toMatch(
      /^ERROR .*the webgpu execution provider found no adapter: no Vulkan adapter: .*install a GPU driver or SwiftShader \(.*VK_ICD_FILENAMES=/,
    );
  });
});

describe.each(['sd15', 'sdxl'] as FamilyName[])('tiny %s on webgpu (SwiftShader) = cpu', (family) => {
  let c: Compiled;
  beforeAll(async () => {
    if (ADAPTER) c = await compileTiny(family);
  });

  gpuDescribe('artifacts', () => {
    test('precompute.onnx', async () => {
      const {
        runs: [{ want, got }],
        placement,
      } = await both(c, 'precompute', ['random']);
      expectClose(want, got, Object.keys(want), `${family} precompute`);
      expect(placement.cpuOps).toEqual({});
    });

    test('infer.onnx with B = 0 and with a nonzero LoRA', async () => {
      const { runs, placement } = await both(c, 'infer', ['zero', 'random']);
      for (const { loraB, want, got } of runs) expectClose(want, got, Object.keys(want), `${family} infer (lora_B ${loraB})`);
      expect(placement.cpuOps).toEqual({});
    });

    test('one train.onnx step: loss, updated LoRA tensors, AdamW moments', async () => {
      const {
        runs: [{ want, got }],
        placement,
      } = await both(c, 'train', ['random']);
      const names = Object.keys(want);
      expectClose(want, got, ['loss'], `${family} train loss`);
      expectGroupClose(
        want,
        got,
        names.filter((n) => n.endsWith('.exp_avg.updated')),
        `${family} train exp_avg`,
      );
      // sqrt(exp_avg_sq) is what enters the update (and, like exp_avg, is linear in g).
      expectGroupClose(
        want,
        got,
        names.filter((n) => n.endsWith('.exp_avg_sq.updated')),
        `${family} train sqrt(exp_avg_sq)`,
        Math.sqrt,
      );
      expectUpdatesClose(
        want,
        got,
        names.filter((n) => /\.lora_[AB]\.weight\.updated$/.test(n)),
        `${family} train updated LoRA`,
      );
      // `step` is float32 (WebGPU's Cast takes no int64): nothing falls back to the CPU.
      expect(placement.cpuOps).toEqual({});
      expect(placement.copies).toBe(0);
    });
  });
});

gpuDescribe('the CLI on --ep webgpu', () => {
  const cli = runCli;

  test('generate --model writes an image and says which provider ran each component', async () => {
    const dir = tempDir('hollowc-webgpu-cli-');
    const folder = path.join(dir, 'pipe');
    expect((await cli(['model', 'build', 'sd15', '--tiny', '--pipeline', '-o', folder])).code).toBe(0);
    const png = path.join(dir, 'a.png');
    const r = await cli([
      'generate',
      '--model',
      folder,
      '--prompt',
      'a photo of a dog',
      '--width',
      '64',
      '--height',
      '64',
      '--steps',
      '2',
      '--seed',
      '1',
      '-o',
      png,
      '--ep',
      'webgpu',
    ]);
    expect([r.code, r.stderr.match(/^hollowc: error.*$/m)?.[0]]).toEqual([0, undefined]);
    expect(fs.existsSync(png)).toBe(true);
    // One placement line per session: text encoder, UNet, VAE decoder. The UNet and the VAE run
    // wholly on the GPU; CLIP's pooling casts input_ids int64 -> int32 for ArgMax (as the
    // transformers export does), which WebGPU's Cast does not take: that one op falls back.
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('execution provider: '));
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/: webgpu: \d+ nodes, cpu fallback: 1 \(Cast 1\)/);
    for (const l of lines.slice(1)) expect(l).toMatch(/: webgpu: \d+ nodes, cpu fallback: 0/);
  });

  test('the missing-provider line for --ep cuda on this machine, and --cpu-fallback runs anyway', async () => {
    const dir = tempDir('hollowc-webgpu-cuda-');
    const folder = path.join(dir, 'pipe');
    expect((await cli(['model', 'build', 'sd15', '--tiny', '--pipeline', '-o', folder])).code).toBe(0);
    const args = [
      'generate',
      '--model',
      folder,
      '--prompt',
      'a dog',
      '--width',
      '64',
      '--height',
      '64',
      '--steps',
      '1',
      '-o',
      path.join(dir, 'b.png'),
    ];
    const refused = await cli([...args, '--ep', 'cuda']);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(refused.stderr).toContain('ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node');
    const fallback = await cli([...args, '--ep', 'cuda', '--cpu-fallback']);
    expect(fallback.code).toBe(0);
    expect(fallback.stderr).toContain('running on the CPU instead');
    expect(fallback.stderr).toMatch(/execution provider: model\.onnx: cpu/);
  });
});
