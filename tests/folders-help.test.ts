/**
 * Folders where a user points (issue 33 item 6): inspect and compile take a pipeline folder (its
 * unet/model.onnx) or a UNet folder, as plan does; a usage error points at the command's own help.
 */
import * as fs from 'fs';
import * as path from 'path';
import { readManifest } from '../compiler/manifest';
import { buildPipeline } from '../models/builder/pipeline';
import { runCli, refused } from './support/cli';
import { tempDir, TINY_SD15_SPEC } from './support/fixture';

let root: string;
let pipeA: string; // tiny sd15 pipeline
let out: string; // compiled from pipeA (given as its folder)

const SPEC = TINY_SD15_SPEC;

function write(name: string, content: string): string {
  const file = path.join(root, name);
  fs.writeFileSync(file, content);
  return file;
}


beforeAll(async () => {
  root = tempDir('hollowc-folders-');
  pipeA = path.join(root, 'pipe-a');
  await buildPipeline('sd15', 'tiny', pipeA, { seed: 1 });
  out = path.join(root, 'out');
  const r = await runCli(['compile', pipeA, write('spec.hollow', SPEC), '-o', out]);
  expect([r.code, r.stderr]).toEqual([0, '']);
});

describe('folders where a user points', () => {
  test('compile took the pipeline folder: the manifest names its unet/model.onnx', () => {
    expect(readManifest(out).model.file).toBe(path.resolve(pipeA, 'unet', 'model.onnx'));
  });

  test('inspect takes a pipeline folder and a UNet folder; a folder with neither is one line', async () => {
    const unet = path.join(pipeA, 'unet', 'model.onnx');
    for (const where of [pipeA, path.join(pipeA, 'unet')]) {
      const r = await runCli(['inspect', where]);
      expect([r.code, r.stdout.split('\n')[0]]).toEqual([0, `${unet}: sd15 UNet, 1,390,804 parameters, 12 skip connections`]);
    }
    await refused(['inspect', root], `${root}: a folder with neither unet/model.onnx (a pipeline folder) nor model.onnx (a UNet folder)`);
    await refused(['compile', root, path.join(root, 'spec.hollow'), '-o', path.join(root, 'never')], 'a folder with neither');
  });

  test("a usage error points at the command's own help", async () => {
    await refused(['generate', '--model', pipeA, '--bogus'], "unknown option '--bogus' (see hollowc generate --help)");
    await refused(['model', 'build', 'sd15', '--tiny'], 'not specified (see hollowc model build --help)');
    await refused(['nonsense'], '(see hollowc --help)');
  });
});
