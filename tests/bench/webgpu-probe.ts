/**
 * WebGPU probe (not part of `npm test`): builds a tiny model, compiles precompute/infer/grads/train,
 * runs each on the CPU and on the WebGPU provider, and prints the worst relative difference and
 * the per-op-type CPU fallback from onnxruntime's profile.
 *
 *   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json LD_LIBRARY_PATH=/usr/lib/chromium \
 *     node dist/tests/bench/webgpu-probe.js sd15 8 [artifact...]
 *
 * Run with `2> log` and `HOLLOWC_ORT_VERBOSE=1` to also get onnxruntime's verbose node placements.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ort from 'onnxruntime-node';
import { buildUNet } from '../../models/builder';
import { FAMILIES, FamilyName } from '../../models/families';
import { compileFromSpec } from '../../cli/api/compile-spec';
import { feedsFor, worstRelative } from '../support/webgpu';
import { useSoftwareVulkan } from '../../runtime/ort/vulkan';
import { createSession, describePlacement, SessionOptions } from '../../runtime/ort/session';

async function main() {
  useSoftwareVulkan();
  const family = (process.argv[2] ?? 'sd15') as FamilyName;
  const latent = Number(process.argv[3] ?? 8);
  const only = process.argv.slice(4);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `hollowc-wgpu-${family}-`));
  const v = FAMILIES[family].tiny;
  const { file } = await buildUNet(v.config, { outDir: path.join(dir, 'model'), seed: 3 });
  const lines = [
    `model ${family}`,
    `hollow preset "${family === 'sdxl' ? 'sdxl-mid' : '39.2%'}"`,
    `shape sample [1, 4, ${latent}, ${latent}]`,
    'shape timestep [1]',
    `shape encoder_hidden_states [1, ${v.shapes.encoder_hidden_states.slice(1).join(', ')}]`,
    ...(v.shapes.text_embeds ? [`shape text_embeds [1, ${v.shapes.text_embeds[1]}]`, 'shape time_ids [1, 6]'] : []),
    'lora rank 4',
    'emit precompute train grads infer',
    '',
  ];
  const spec = path.join(dir, 'spec.hollow');
  fs.writeFileSync(spec, lines.join('\n'));
  const out = path.join(dir, 'out');
  compileFromSpec(file, spec, { out });
  console.log(`compiled in ${out}`);
  const artifacts = only.length ? only : ['precompute', 'infer', 'grads', 'train'];
  for (const name of artifacts) {
    const modelFile = path.join(out, `${name}.onnx`);
    const training = name === 'train' || name === 'grads';
    const tuning: SessionOptions = training ? { optimization: 'basic', memPattern: false } : {};
    const cpu = await createSession(modelFile, { ...tuning, ep: 'cpu' });
    const t0 = Date.now();
    const verbose = process.env.HOLLOWC_ORT_VERBOSE === '1';
    const gpu = await createSession(modelFile, {
      ...tuning,
      ep: 'webgpu',
      placement: true,
      ...(process.env.CPU_OPS !== undefined ? { webgpuCpuOps: process.env.CPU_OPS.split(',').filter(Boolean) } : {}),
      ...(verbose ? { logSeverityLevel: 0 } : {}),
    });
    const created = (Date.now() - t0) / 1000;
    for (const loraB of name === 'infer' ? (['zero', 'random'] as const) : (['random'] as const)) {
      const feeds = feedsFor(cpu, 11, loraB, { batch: 1, height: latent, width: latent, sequence: v.shapes.encoder_hidden_states[1] });
      const want = await cpu.run(feeds);
      const t1 = Date.now();
      const got = await gpu.run(feeds);
      const ran = (Date.now() - t1) / 1000;
      let worst = { name: '', rel: 0, maxAbs: 0, scale: 0 };
      for (const o of cpu.outputNames) {
        const r = worstRelative(want[o].data as Float32Array, got[o].data as Float32Array);
        if (r.rel >= worst.rel) worst = { name: o, ...r };
      }
      console.log(
        `${name}${name === 'infer' ? ` (lora_B ${loraB})` : ''}: session ${created.toFixed(1)} s, run ${ran.toFixed(1)} s, ${cpu.outputNames.length} outputs, worst rel ${worst.rel.toExponential(2)} (${worst.name}: max abs ${worst.maxAbs.toExponential(2)}, scale ${worst.scale.toExponential(2)})`,
      );
    }
    const placement = describePlacement(gpu);
    if (placement) {
      console.log(`  ${placement.summary}`);
      console.log(`  cpu ops: ${JSON.stringify(placement.cpuOps)}`);
      console.log(`  webgpu ops: ${JSON.stringify(placement.deviceOps)}`);
    }
    await cpu.release();
    await gpu.release();
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
