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
import { compileFromSpec } from '../cli/api/compile-spec';
import { cloneModel } from '../compiler/clone';
import { Model } from '../compiler/ir';
import { saveModel } from '../compiler/serde';
import { compile } from '../passes/compile-unet';
import { makeNormalizationsPrecise } from '../passes/precision/precise-normalization';
import { makeTrigonometryPrecise } from '../passes/precision/precise-trigonometry';
import { HollowcError } from '../compiler/errors';
import { buildUNet } from '../models/builder';
import { FAMILIES, FamilyName } from '../models/families';
import { createSession, describePlacement, missingProvider, sessionProvider, SessionOptions } from '../runtime/ort/session';
import { findVulkanLoader, noAdapterMessage, useSoftwareVulkan, vulkanDrivers } from '../runtime/ort/vulkan';
import { runCli } from './support/cli';
import { compileFixtureGrads, fixtureGradientStep, tempDir } from './support/fixture';
import { precisionErrors, precisionFeeds, precisionGraph, PRECISION_SIZE } from './support/precision-graphs';
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
// Per output, max |webgpu - cpu| / max |cpu|: every output of every artifact, gradients and AdamW
// moments included. That holds because the artifacts compute normalizations and Sin/Cos with
// GPU-safe rewrites (passes/precision/precise-normalization.ts, passes/precision/precise-trigonometry.ts); before them
// lora_A gradients were 3-5e-4 off on SwiftShader.
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
        `${label}: ${d.name} differs from the reference by ${d.rel.toExponential(2)} relative (max abs ${d.maxAbs.toExponential(2)})`,
      );
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
      expect(names.filter((n) => n.endsWith('.exp_avg_sq.updated')).length).toBeGreaterThan(0);
      expectClose(want, got, names, `${family} train (loss, updated LoRA, both moments)`);
      // `step` is float32 (WebGPU's Cast takes no int64): nothing falls back to the CPU. One copy to
      // the host: release-dead-buffers' index (loss_weight cast to int64 on the GPU, 8 bytes), which
      // the shape arithmetic on the CPU reads.
      expect(placement.cpuOps).toEqual({});
      expect(placement.copies).toBe(1);
    });
  });
});

gpuDescribe('precision on webgpu (SwiftShader)', () => {
  test('the GPU-safe rewrites: normalizations and Sin/Cos as precise as float64 allows, where the raw kernels are not', async () => {
    const dir = tempDir('hollowc-webgpu-precise-');
    const raw = precisionGraph(PRECISION_SIZE);
    const safe = cloneModel(raw);
    makeNormalizationsPrecise(safe);
    makeTrigonometryPrecise(safe);
    const errors = async (model: Model, name: string, feeds: Record<string, ort.Tensor>) => {
      const file = path.join(dir, `${name}.onnx`);
      saveModel(model, file);
      const session = await createSession(file, { ep: 'webgpu' });
      try {
        return precisionErrors(await session.run(feeds), feeds);
      } finally {
        await session.release();
      }
    };
    const feeds = precisionFeeds(PRECISION_SIZE, 20, 1, 999);
    const before = await errors(raw, 'raw', feeds);
    const after = await errors(safe, 'safe', feeds);
    console.log(
      `webgpu vs float64, group means 20 deviations off zero, t = 999: raw ops ${JSON.stringify(before)}, rewritten ${JSON.stringify(after)}`,
    );
    expect(after.normalization).toBeLessThan(5e-7);
    expect(after.trigonometry).toBeLessThan(5e-7);
  });

  test('sd15-tiny fixture: grads.onnx (39.2% cut) on webgpu = PyTorch autograd, every LoRA gradient', async () => {
    const { out, m } = compileFixtureGrads('fp32', 'hollowc-webgpu-fixture-');
    const { params, feeds, torchGradient } = fixtureGradientStep(m);
    const session = await createSession(path.join(out, 'grads.onnx'), { ...SESSIONS.train, ep: 'webgpu' });
    let got: Record<string, ort.Tensor>;
    try {
      got = await session.run(feeds);
    } finally {
      await session.release();
    }
    const torch = Object.fromEntries(
      params.map((p) => [`${p.name}.grad`, new ort.Tensor('float32', torchGradient(p), got[`${p.name}.grad`].dims)]),
    );
    // Against PyTorch, not the CPU provider: the same per-tensor bound, here 240 gradients.
    expectClose(torch, got, Object.keys(torch), 'sd15-tiny fixture gradients, webgpu vs torch');
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

  test('demo --ep webgpu: the whole personalize workflow on the GPU provider, every session placed there', async () => {
    const out = path.join(tempDir('hollowc-webgpu-demo-'), 'demo');
    const r = await cli(['demo', '--ep', 'webgpu', '--steps', '2', '--seeds', '1', '--prompts', '1', '--sample-steps', '1', '--out', out]);
    expect([r.code, r.stderr.match(/^hollowc: error.*$/m)?.[0]]).toEqual([0, undefined]);
    expect(r.stdout.match(/^report: (.*)$/m)?.[1]).toBe(path.join(out, 'report.html'));
    // --prompts 1 --seeds 1: one comparison image a side
    expect(r.stdout).toMatch(/^1 prompts the photos never had x 1 seeds: /m);
    const run = path.join(out, 'run');
    for (const f of ['report.html', 'lora.safetensors']) expect(fs.existsSync(path.join(run, f))).toBe(true);
    expect(fs.readdirSync(path.join(run, 'images')).filter((f) => f.endsWith('.png')).length).toBeGreaterThan(0);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('execution provider: '));
    console.log(`demo --ep webgpu:\n${lines.join('\n')}`);
    expect(lines.length).toBeGreaterThan(3);
    expect(lines.every((l) => /: webgpu: \d+ nodes/.test(l))).toBe(true);
    // The compiled artifacts personalize runs (precompute, grads with AdamW on the host, the
    // two-path infer for the validation images) have no CPU fallback at all.
    for (const artifact of ['precompute', 'grads', 'infer']) {
      const mine = lines.filter((l) => l.includes(`compiled/${artifact}.onnx: `));
      expect([artifact, mine.length > 0, mine.every((l) => /: webgpu: \d+ nodes, cpu fallback: 0,/.test(l))]).toEqual([
        artifact,
        true,
        true,
      ]);
    }
  }, 1_200_000); // SwiftShader: every session of the demo compiles its shaders on the CPU; 703 s beside the rest of the suite (2026-12-07, before --prompts reached the demo and its comparison images shared sessions)

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
    expect(fallback.stderr).toMatch(/execution provider: unet\/model\.onnx: cpu/);
  });
});
