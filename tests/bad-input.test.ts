/**
 * The bad-input corpus: one table, one row per way a user's input can be wrong. Each row runs a
 * real `hollowc` command line in-process and checks that it exits 1 with one line naming what is
 * wrong (spec errors: the first line is `file:line:col: error: ...`, then the source and a caret),
 * and that the output folder it was given is byte-identical afterwards (or still absent).
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import sharp from 'sharp';
import { MANIFEST_FILE } from '../compiler/manifest';
import { decodeModelProto, encodeModelProto, PModel } from '../compiler/proto';
import { buildUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { loadImage } from '../runtime/formats/images';
import { writeNpy } from '../runtime/formats/npy';
import { float32Tensor, writeSafetensors } from '../runtime/formats/safetensors';
import { runCli } from './support/cli';
import { tempDir, TINY_SD15_SPEC } from './support/fixture';
import { TinyFolder, tinyCompiled, writeData } from './runtime-fake-train';

const cli = runCli;

/** Every file under `dir` with its sha256, or null when `dir` does not exist. */
function snapshot(dir: string): Record<string, string> | null {
  if (!fs.existsSync(dir)) return null;
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[path.relative(dir, p)] = crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    }
  };
  walk(dir);
  return out;
}

let root: string;
let model: string; // tiny sd15 UNet with external data
let folder: TinyFolder; // compiled tiny sd15 (39.2%, stand-in train.onnx) with a precomputed store
let data: string;
const SPEC = TINY_SD15_SPEC;

function write(name: string, content: string | Uint8Array): string {
  const file = path.join(root, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
  return file;
}

/** A copy of the tiny model (graph + data file) in its own folder, with the graph edited. */
function modelVariant(name: string, edit: (m: PModel) => void, dataEdit?: (dataFile: string) => void): string {
  const dir = path.join(root, 'models', name);
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(`${model}_data`, path.join(dir, 'model.onnx_data'));
  const m = decodeModelProto(fs.readFileSync(model));
  edit(m);
  const file = path.join(dir, 'model.onnx');
  fs.writeFileSync(file, encodeModelProto(m));
  dataEdit?.(path.join(dir, 'model.onnx_data'));
  return file;
}

/** The tiny model with one GroupNorm fused into com.microsoft's GroupNorm, as Olive writes it. */
function oliveVariant(): string {
  const file = path.join(root, 'models', 'olive', 'model.onnx');
  if (fs.existsSync(file)) return file;
  return modelVariant('olive', (m) => {
    const norm = m.graph!.node!.find((n) => n.op_type === 'InstanceNormalization')!;
    norm.op_type = 'GroupNorm';
    norm.domain = 'com.microsoft';
    m.opset_import!.push({ domain: 'com.microsoft', version: 1 });
  });
}

function externalOf(m: PModel, i = 0) {
  const t = m.graph!.initializer!.filter((x) => x.data_location === 1)[i]!;
  return { tensor: t, entry: (key: string) => t.external_data!.find((e) => e.key === key)! };
}

function specFile(name: string, text: string): string {
  return write(`specs/${name}.hollow`, text);
}

/** The compiled folder's LoRA file with one thing changed. */
function loraVariant(name: string, edit: (tensors: Map<string, ReturnType<typeof float32Tensor>>) => void): string {
  const tensors = new Map<string, ReturnType<typeof float32Tensor>>();
  for (const t of folder.manifest.lora.targets.filter((x) => x.trained)) {
    tensors.set(
      `unet.${t.lora_A.name}`,
      float32Tensor(t.lora_A.shape, new Float32Array(t.lora_A.shape.reduce((a, b) => a * b, 1)).fill(0.01)),
    );
    tensors.set(
      `unet.${t.lora_B.name}`,
      float32Tensor(t.lora_B.shape, new Float32Array(t.lora_B.shape.reduce((a, b) => a * b, 1)).fill(0.02)),
    );
  }
  edit(tensors);
  const file = path.join(root, 'lora', `${name}.safetensors`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeSafetensors(file, tensors, { format: 'pt' });
  return file;
}

/** A safetensors file whose JSON header is `header` (and `body` bytes after it). */
function rawSafetensors(name: string, header: unknown, body = 16): string {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return write(`lora/${name}.safetensors`, Buffer.concat([len, json, Buffer.alloc(body)]));
}

/** A copy of the compiled folder (store included) to damage. */
function folderCopy(name: string): string {
  const dir = path.join(root, 'folders', name);
  fs.cpSync(folder.out, dir, { recursive: true });
  return dir;
}

interface Case {
  /** What is wrong. */
  name: string;
  /** The command line (built in beforeAll, when the inputs exist). */
  args: () => string[];
  /** A fragment of the one-line message. */
  message: string | RegExp;
  /** The folder that must be unchanged (default: the `-o`/`--out` argument, if any). */
  output?: () => string;
  /** Spec diagnostics: first line file:line:col, then source and caret. */
  spec?: boolean;
}

const out = () => path.join(root, 'never-written');
const compileWith =
  (m: () => string, spec: () => string = () => specFile('good', SPEC)) =>
  () => ['compile', m(), spec(), '-o', out()];
const compileSpec = (name: string, text: string) =>
  compileWith(
    () => model,
    () => specFile(name, text),
  );
/** `compile` of the tiny model into a folder of its own that does not exist yet. */
const newFolderCompile = (name: string, spec = SPEC) => ['compile', model, specFile(name, spec), '-o', path.join(root, 'new', name)];
const specWith = (line: string) => SPEC.replace('lora rank 2\n', `lora rank 2\n${line}\n`);

const CASES: Case[] = [
  // ONNX files
  {
    name: 'onnx: truncated',
    args: compileWith(() => write('m/file-29.onnx', fs.readFileSync(model).subarray(0, 5000))),
    message: 'not a valid ONNX model',
  },
  { name: 'onnx: garbage', args: compileWith(() => write('m/file-30.onnx', crypto.randomBytes(4096))), message: 'not a valid ONNX model' },
  { name: 'onnx: empty file', args: compileWith(() => write('m/file-31.onnx', '')), message: 'not a valid ONNX model' },
  {
    name: 'onnx: wrong family for the spec',
    args: compileSpec(
      'spec-13',
      SPEC.replace('model sd15', 'model sdxl')
        .replace('hollow preset "39.2%"', 'hollow none')
        .replace('emit precompute infer', 'emit infer'),
    ),
    message: /sdxl.*sd15|sd15.*sdxl/,
    spec: true,
  },
  {
    name: 'onnx: not a UNet',
    args: compileWith(() =>
      modelVariant('model-1', (m) => {
        m.graph!.node = m.graph!.node!.filter((n) => !n.name?.includes('up_blocks'));
      }),
    ),
    message: 'expected an SD-family UNet',
  },
  {
    name: 'onnx: unscoped node names',
    args: compileWith(() => modelVariant('model-2', (m) => m.graph!.node!.forEach((n, i) => (n.name = `node_${i}`)))),
    message: 'without such scopes',
  },
  {
    name: 'onnx: missing external data file',
    args: compileWith(() =>
      modelVariant(
        'model-3',
        () => {},
        (f) => fs.rmSync(f),
      ),
    ),
    message: 'does not exist',
  },
  {
    name: 'onnx: external data shorter than its length',
    args: compileWith(() =>
      modelVariant(
        'model-4',
        () => {},
        (f) => fs.truncateSync(f, fs.statSync(f).size - 1000),
      ),
    ),
    message: 'lies beyond the end',
  },
  {
    name: 'onnx: offset past EOF',
    args: compileWith(() => modelVariant('model-5', (m) => (externalOf(m).entry('offset').value = String(1e9)))),
    message: 'lies beyond the end',
  },
  {
    name: 'onnx: absolute location',
    args: compileWith(() => modelVariant('model-6', (m) => (externalOf(m).entry('location').value = '/etc/passwd'))),
    message: 'refusing to read it',
  },
  {
    name: 'onnx: location escaping with ..',
    args: compileWith(() => modelVariant('model-7', (m) => (externalOf(m).entry('location').value = '../../model.onnx_data'))),
    message: 'refusing to read it',
  },
  {
    name: 'onnx: location through a symlink out of the folder',
    args: compileWith(() =>
      modelVariant(
        'model-8',
        (m) => (externalOf(m).entry('location').value = 'link.bin'),
        (f) => fs.symlinkSync(path.resolve(`${model}_data`), path.join(path.dirname(f), 'link.bin')),
      ),
    ),
    message: 'refusing to read it',
  },
  {
    name: 'onnx: duplicate value names',
    args: compileWith(() => modelVariant('model-9', (m) => (m.graph!.node![5].output = [...m.graph!.node![4].output!]))),
    message: 'defined twice',
  },
  {
    name: 'onnx: a cycle',
    args: compileWith(() =>
      modelVariant('model-10', (m) => {
        // node 10 reads the output of node 20, which (through the chain) reads node 10.
        const late = m.graph!.node!.find((n, i) => i > 40 && n.op_type === 'Add')!;
        const early = m.graph!.node!.find((n) => n.op_type === 'Mul')!;
        early.input = [late.output![0], ...early.input!.slice(1)];
      }),
    ),
    message: 'cycle',
  },
  {
    name: 'onnx: IR version newer than supported',
    args: compileWith(() => modelVariant('model-11', (m) => (m.ir_version = 99))),
    message: 'IR version 99',
  },
  {
    name: 'onnx: opset newer than supported',
    args: compileWith(() => modelVariant('model-12', (m) => (m.opset_import![0].version = 99))),
    message: 'opset 99',
  },
  {
    name: 'onnx: a graph file over 2 GB (no external data)',
    args: compileWith(() => {
      const file = path.join(root, 'm', 'huge.onnx');
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.closeSync(fs.openSync(file, 'w'));
      fs.truncateSync(file, 2 ** 31 + 4096); // sparse: no disk used, and it must be refused unread
      return file;
    }),
    message: '2 GiB',
  },
  {
    name: 'onnx: an Olive-optimized graph (com.microsoft GroupNorm), compile',
    args: compileWith(() => oliveVariant()),
    message: /op GroupNorm of domain com\.microsoft \(node "[^"]+"; 1 nodes .*\) is not a standard ONNX op.*export a plain graph/,
  },
  {
    name: 'onnx: an Olive-optimized graph (com.microsoft GroupNorm), inspect',
    args: () => ['inspect', oliveVariant()],
    message: /op GroupNorm of domain com\.microsoft .*export a plain graph/,
  },
  { name: 'onnx: file does not exist', args: compileWith(() => path.join(root, 'nowhere.onnx')), message: 'ENOENT' },

  // Specs
  {
    name: 'spec: rank is not a number',
    args: compileSpec('spec-14', SPEC.replace('lora rank 2', 'lora rank two')),
    message: 'expected a number',
    spec: true,
  },
  { name: 'spec: lr is not a number', args: compileSpec('spec-15', specWith('optimizer adamw lr fast')), message: 'lr', spec: true },
  {
    name: 'spec: shape with a name in it',
    args: compileSpec('spec-16', SPEC.replace('shape sample [1, 4, 16, 16]', 'shape sample [1, four, 16, 16]')),
    message: 'shape',
    spec: true,
  },
  { name: 'spec: seed negative', args: compileSpec('spec-17', specWith('seed -3')), message: 'seed', spec: true },
  {
    name: 'spec: prior weight negative',
    args: compileSpec('spec-18', specWith('loss prior_weight -1')),
    message: 'prior_weight',
    spec: true,
  },
  { name: 'spec: unknown loss prediction', args: compileSpec('spec-19', specWith('loss mse sample')), message: 'epsilon', spec: true },
  {
    name: 'spec: unknown artifact in emit',
    args: compileSpec('spec-20', SPEC.replace('emit precompute infer', 'emit precompute everything')),
    message: 'everything',
    spec: true,
  },
  { name: 'spec: unknown preset', args: compileSpec('spec-21', SPEC.replace('"39.2%"', '"40%"')), message: 'preset', spec: true },
  {
    name: 'spec: unknown block',
    args: compileSpec('spec-22', SPEC.replace('hollow preset "39.2%"', 'hollow blocks 5-1, 5-9')),
    message: '5-9',
    spec: true,
  },
  {
    name: 'spec: non-contiguous hollow',
    args: compileSpec('spec-23', SPEC.replace('hollow preset "39.2%"', 'hollow blocks 4-2, 5-2')),
    message: '5-1',
    spec: true,
  },
  {
    name: 'spec: duplicate statement',
    args: compileSpec('spec-24', SPEC.replace('lora rank 2', 'lora rank 2\nlora rank 4')),
    message: 'once',
    spec: true,
  },
  {
    name: 'spec: rank above a layer width',
    args: compileSpec('spec-25', SPEC.replace('lora rank 2', 'lora rank 64')),
    message: 'rank 64',
    spec: true,
  },
  {
    name: 'spec: target glob matching nothing',
    args: compileSpec('spec-26', SPEC.replace('"attn1.to_q"', '"attn9.*"')),
    message: 'attn9',
    spec: true,
  },
  { name: 'spec: unknown family', args: compileSpec('spec-27', SPEC.replace('model sd15', 'model sd3')), message: 'sd3', spec: true },
  { name: 'spec: unknown statement', args: compileSpec('spec-28', specWith('learning rate 3')), message: 'learning', spec: true },
  {
    name: 'spec: file does not exist',
    args: () => ['compile', model, path.join(root, 'missing.hollow'), '-o', out()],
    message: 'cannot read spec',
  },

  // Pipeline folders and images
  {
    name: 'tokenizer: folder without vocab',
    args: () => ['tokenize', fs.mkdtempSync(path.join(root, 'tok-')), 'a photo'],
    message: 'no vocab.json',
  },

  // Stores
  {
    name: 'store: CRC damage in the middle',
    args: () => ['train', damagedStore('crc'), '--steps', '6'],
    message: /record \d+ of \d+ is corrupt/,
    output: () => path.join(root, 'folders', 'crc'),
  },
  {
    name: 'store: from another compile',
    args: () => ['train', otherCompileStore()],
    message: 'another compile',
    output: () => path.join(root, 'folders', 'other'),
  },
  {
    name: 'store: wrong dtype',
    args: () => ['train', damagedStore('dtype')],
    message: 'float16',
    output: () => path.join(root, 'folders', 'dtype'),
  },

  {
    name: 'store: records file cut back to fewer records than precompute wrote',
    args: () => ['train', storeVariant('cut', (store) => fs.truncateSync(path.join(store, 'records.bin'), 4 * recordBytes(store)))],
    message: /records\.bin: holds 4 records but its precompute finished with 6 \(the file was cut short\); run hollowc precompute again/,
    output: () => path.join(root, 'folders', 'cut'),
  },
  {
    name: 'store: precompute stopped before its count (killed, out of space)',
    args: () => [
      'train',
      storeVariant('unfinished', (store) => fs.writeFileSync(path.join(store, 'progress.json'), '{"count":9,"finished":false}')),
    ],
    message: /records\.bin: the store is unfinished: its precompute stopped after 6 of 9 records; run hollowc precompute again/,
    output: () => path.join(root, 'folders', 'unfinished'),
  },
  {
    name: 'store: no record of what its precompute completed',
    args: () => ['train', storeVariant('no-progress', (store) => fs.rmSync(path.join(store, 'progress.json')))],
    message: /progress\.json: missing: no precompute finished this store/,
    output: () => path.join(root, 'folders', 'no-progress'),
  },

  // The user's data for precompute: checked before anything is written (a new --store stays
  // absent, an existing store byte-identical)
  {
    name: 'data: latents of another shape than the compiled one',
    args: () => precomputeInto('latent-shape', dataVariant('latent-shape', allLatents([4, 15, 16]))),
    message:
      /latents\/0\.npy: the latent is \[4, 15, 16\], this folder expects \[4, 16, 16\] \(the spec's `shape sample \[1, 4, 16, 16\]` line\)/,
    output: () => newStore('latent-shape'),
  },
  {
    name: 'data: latents of another shape, over an existing store',
    args: () => [
      'precompute',
      folderCopy('pre-shape'),
      '--data',
      dataVariant('all-latents-shape', allLatents([4, 15, 16])),
      '--count',
      '8',
    ],
    message: 'this folder expects [4, 16, 16]',
    output: () => path.join(root, 'folders', 'pre-shape'),
  },
  {
    name: 'data: prompt embeddings of another width',
    args: () =>
      precomputeInto(
        'prompt-width',
        dataVariant('prompt-width', (d) => ['instance_prompt.npy', 'class_prompt.npy'].forEach((f) => latent(d, f, [7, 17]))),
      ),
    message: /instance_prompt\.npy: the instance prompt's encoder_hidden_states is \[7, 17\], this folder expects \[7, 32\]/,
    output: () => newStore('prompt-width'),
  },
  {
    name: 'data: prompt embeddings of another length',
    args: () =>
      precomputeInto(
        'prompt-length',
        dataVariant('prompt-length', (d) => ['instance_prompt.npy', 'class_prompt.npy'].forEach((f) => latent(d, f, [5, 32]))),
      ),
    message: 'encoder_hidden_states is [5, 32], this folder expects [7, 32]',
    output: () => newStore('prompt-length'),
  },
  {
    name: 'data: an image among the latents',
    args: () =>
      precomputeInto(
        'image',
        dataVariant('image', (d) => fs.writeFileSync(path.join(d, 'latents', '2.png'), 'png')),
      ),
    message: /latents\/2\.png: is an image, not a latent: turn images into latents with hollowc encode/,
    output: () => newStore('image'),
  },
  {
    name: 'data: a latents folder with a file that is not .npy',
    args: () =>
      precomputeInto(
        'stray',
        dataVariant('stray', (d) => fs.writeFileSync(path.join(d, 'latents', '2.npz'), 'npz')),
      ),
    message: /latents\/2\.npz: is not a \.npy latent/,
    output: () => newStore('stray'),
  },
  {
    name: 'data: a latents batch that is neither .npy nor .safetensors',
    args: () =>
      precomputeInto(
        'batch-pt',
        write('data-variants/latents.pt', 'torch'),
        '--instance-prompt',
        path.join(data, 'instance_prompt.npy'),
        '--class-prompt',
        path.join(data, 'class_prompt.npy'),
      ),
    message: /latents\.pt: expected a \.npy or \.safetensors latents batch/,
    output: () => newStore('batch-pt'),
  },
  {
    name: 'data: a latent that is not a .npy inside',
    args: () =>
      precomputeInto(
        'not-npy',
        dataVariant('not-npy', (d) => fs.writeFileSync(path.join(d, 'latents', '1.npy'), 'not numpy')),
      ),
    message: /latents\/1\.npy: not a \.npy file/,
    output: () => newStore('not-npy'),
  },
  {
    name: 'data: NaN in a latent',
    args: () =>
      precomputeInto(
        'nan',
        dataVariant('nan', (d) => latent(d, 'latents/1.npy', [4, 16, 16], NaN)),
      ),
    message: /latents\/1\.npy: value 0 is NaN: expected finite numbers/,
    output: () => newStore('nan'),
  },
  {
    name: 'data: class latents of another shape than the instance latents',
    args: () =>
      precomputeInto(
        'class-shape',
        dataVariant('class-shape', (d) => latent(d, 'class_latents/0.npy', [4, 8, 8])),
      ),
    message: /class_latents\/0\.npy: latent is \[4, 8, 8\], 0\.npy \[4, 16, 16\]: all samples need one shape/,
    output: () => newStore('class-shape'),
  },

  // LoRA / safetensors
  {
    name: 'lora: header length beyond the file',
    args: () => [
      'bake',
      folder.out,
      '--lora',
      write('lora/case-f.safetensors', Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0]), Buffer.from('{}')])),
    ],
    message: 'header',
    output: () => folder.out,
  },
  {
    name: 'lora: out-of-range offsets',
    args: () => ['bake', folder.out, '--lora', rawSafetensors('case-a', { x: { dtype: 'F32', shape: [4, 4], data_offsets: [0, 64] } })],
    message: 'offsets',
    output: () => folder.out,
  },
  {
    name: 'lora: overlapping offsets',
    args: () => [
      'bake',
      folder.out,
      '--lora',
      rawSafetensors('case-b', {
        a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
      }),
    ],
    message: 'overlap',
    output: () => folder.out,
  },
  {
    name: 'lora: wrong shapes',
    args: () => [
      'bake',
      folder.out,
      '--lora',
      loraVariant('case-c', (t) => {
        const [k, v] = [...t][0];
        t.set(k, float32Tensor([v.shape[0] + 1, v.shape[1]], new Float32Array((v.shape[0] + 1) * v.shape[1])));
      }),
    ],
    message: 'LoRA rank 5 in the file',
    output: () => folder.out,
  },
  {
    name: 'lora: missing modules',
    args: () => ['bake', folder.out, '--lora', loraVariant('case-d', (t) => t.delete([...t.keys()][0]))],
    message: 'no LoRA tensors for 1 module',
    output: () => folder.out,
  },
  {
    name: 'lora: NaN values',
    args: () => [
      'bake',
      folder.out,
      '--lora',
      loraVariant('case-e', (t) => {
        const [k, v] = [...t][1];
        t.set(k, float32Tensor(v.shape, new Float32Array(v.shape.reduce((a, b) => a * b, 1)).fill(NaN)));
      }),
    ],
    message: 'NaN',
    output: () => folder.out,
  },

  // --lora-init: checked before anything is written, and a new output folder (one per case, so
  // that a folder one case leaves cannot hide another's) stays absent
  {
    name: 'lora-init: header claiming 1 TiB',
    args: () => [
      ...newFolderCompile('init-huge'),
      '--lora-init',
      write('lora/init-huge.safetensors', Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 1, 0, 0]), Buffer.from('{}')])),
    ],
    message: 'header length 1099511627776',
  },
  {
    name: 'lora-init: truncated file',
    args: () => {
      const file = loraVariant('init-truncated', () => {});
      fs.truncateSync(file, fs.statSync(file).size - 5);
      return [...newFolderCompile('init-truncated'), '--lora-init', file];
    },
    message: 'init-truncated.safetensors: tensor',
  },
  {
    name: 'lora-init: shapes that do not fit the compiled LoRA',
    args: () => [
      ...newFolderCompile('init-rank', SPEC.replace('lora rank 2', 'lora rank 3')),
      '--lora-init',
      loraVariant('init-rank', () => {}),
    ],
    message: /init-rank\.safetensors.*rank/,
  },

  {
    name: 'lora-init: bad shapes, compiling over a compiled folder',
    args: () => [
      'compile',
      model,
      specFile('rank-3b', SPEC.replace('lora rank 2', 'lora rank 3')),
      '-o',
      folderCopy('recompile'),
      '--lora-init',
      loraVariant('init-rank-b', () => {}),
    ],
    message: /init-rank-b\.safetensors.*rank/,
  },

  // Training
  { name: 'train: lr 0', args: () => ['train', folder.out, '--lr', '0'], message: '--lr', output: () => folder.out },
  { name: 'train: lr negative', args: () => ['train', folder.out, '--lr', '-1e-4'], message: '--lr', output: () => folder.out },
  { name: 'train: steps 0', args: () => ['train', folder.out, '--steps', '0'], message: 'positive integer', output: () => folder.out },
  {
    name: 'train: resume with nothing to resume',
    args: () => ['train', folder.out, '--resume'],
    message: 'nothing to resume',
    output: () => folder.out,
  },

  // CLI
  {
    name: 'cli: unknown flag',
    args: () => ['compile', model, specFile('good', SPEC), '-o', out(), '--frobnicate'],
    message: "unknown option '--frobnicate'",
  },
  { name: 'cli: unknown command', args: () => ['compiel', model], message: "unknown command 'compiel'" },
  {
    name: 'cli: compiled folder that does not exist',
    args: () => ['precompute', path.join(root, 'nope'), '--data', data],
    message: 'not a compiled hollowc folder',
  },
  {
    name: 'cli: data folder that does not exist',
    args: () => ['precompute', folder.out, '--data', path.join(root, 'no-data')],
    message: 'no-data',
    output: () => folder.out,
  },
  {
    name: 'cli: compile output is the model file',
    args: () => ['compile', model, specFile('good', SPEC), '-o', model],
    message: 'not a folder',
    output: () => path.dirname(model),
  },
  {
    name: "cli: export over the compiled folder's own manifest",
    args: () => ['export-lora', folder.out, '-o', path.join(folder.out, MANIFEST_FILE)],
    message: 'would overwrite',
    output: () => folder.out,
  },
];

function damagedStore(name: 'crc' | 'dtype'): string {
  const dir = folderCopy(name);
  const store = path.join(dir, 'store');
  if (name === 'crc') {
    const records = fs.readdirSync(store).find((f) => f.endsWith('.bin'))!;
    const file = path.join(store, records);
    const bytes = fs.readFileSync(file);
    bytes[Math.floor(bytes.length / 2)] ^= 0xff; // a record in the middle, not the torn tail
    fs.writeFileSync(file, bytes);
  } else {
    const file = path.join(store, 'store.json');
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace(/"float32"/, '"float16"'));
  }
  return dir;
}

/** A copy of the compiled folder whose store has one thing changed; the folder. */
function storeVariant(name: string, edit: (store: string) => void): string {
  const dir = folderCopy(name);
  edit(path.join(dir, 'store'));
  return dir;
}

const recordBytes = (store: string) => JSON.parse(fs.readFileSync(path.join(store, 'store.json'), 'utf8')).recordBytes as number;

/** A copy of the data folder with one thing changed. */
function dataVariant(name: string, edit: (dir: string) => void): string {
  const dir = path.join(root, 'data-variants', name);
  fs.cpSync(data, dir, { recursive: true });
  edit(dir);
  return dir;
}

/** Writes a float32 .npy of `shape` (zeros, or `fill`) at `rel` inside `dir`. */
function latent(dir: string, rel: string, shape: number[], fill = 0): void {
  writeNpy(path.join(dir, rel), { dtype: 'float32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill) });
}

/** Every latent of the data folder (instance and class) at `shape`. */
const allLatents = (shape: number[]) => (dir: string) =>
  ['latents', 'class_latents'].forEach((sub) => fs.readdirSync(path.join(dir, sub)).forEach((f) => latent(dir, `${sub}/${f}`, shape)));

const newStore = (name: string) => path.join(root, 'new-stores', name);
/** precompute of the compiled folder into a store of its own that does not exist yet. */
const precomputeInto = (name: string, dataPath: string, ...extra: string[]) => [
  'precompute',
  folder.out,
  '--data',
  dataPath,
  '--store',
  newStore(name),
  ...extra,
];

function otherCompileStore(): string {
  const dir = folderCopy('other');
  // The manifest now says the folder was compiled from another model: the store is not its own.
  const file = path.join(dir, MANIFEST_FILE);
  const m = JSON.parse(fs.readFileSync(file, 'utf8'));
  m.model.sha256 = '0'.repeat(64);
  fs.writeFileSync(file, JSON.stringify(m, null, 2));
  return dir;
}

beforeAll(async () => {
  root = tempDir('hollowc-bad-input-');
  model = (await buildUNet(FAMILIES.sd15.tiny.config, { outDir: path.join(root, 'unet'), seed: 2 })).file;
  folder = await tinyCompiled(path.join(root, 'tiny'), 'sd15', { batch: 1, preset: '39.2%', extraSpec: 'lora targets "attn1.to_q"' });
  data = writeData(path.join(root, 'data'), 'sd15', { instances: 2, classes: 1 });
  const r = await cli(['precompute', folder.out, '--data', data, '--count', '6']);
  if (r.code !== 0) throw new Error(r.stderr);
});

test(`the corpus has ${CASES.length} cases (at least 40)`, () => {
  expect(CASES.length).toBeGreaterThanOrEqual(40);
  expect(new Set(CASES.map((c) => c.name)).size).toBe(CASES.length);
});

test.each(CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
  const args = c.args();
  const outIndex = args.findIndex((a) => a === '-o' || a === '--out');
  const watched = c.output?.() ?? (outIndex >= 0 ? args[outIndex + 1] : undefined);
  const before = watched ? snapshot(watched) : null;
  const r = await cli(args);
  expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 1, stdout: '' });
  const lines = r.stderr.trimEnd().split('\n');
  if (c.spec) {
    expect(lines[0]).toMatch(/^.+\.hollow:\d+:\d+: error: /);
    expect(lines.length).toBeGreaterThanOrEqual(3); // the source line and a caret follow
  } else {
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^(hollowc: )?error: /);
  }
  if (typeof c.message === 'string') expect(r.stderr).toContain(c.message);
  else expect(r.stderr).toMatch(c.message);
  if (watched) expect(snapshot(watched)).toEqual(before);
});

describe('images (what personalize and the page read)', () => {
  const cases: [string, () => Promise<string>, string][] = [
    [
      'corrupt JPEG',
      async () =>
        write(
          'img/corrupt.jpg',
          Buffer.concat([
            (
              await sharp({ create: { width: 32, height: 32, channels: 3, background: '#808080' } })
                .jpeg()
                .toBuffer()
            ).subarray(0, 200),
          ]),
        ),
      'corrupt.jpg',
    ],
    ['zero-byte image', async () => write('img/zero.png', ''), 'zero.png'],
    [
      'a 1x1 image',
      async () =>
        write(
          'img/one.png',
          await sharp({ create: { width: 1, height: 1, channels: 3, background: '#000' } })
            .png()
            .toBuffer(),
        ),
      'one.png',
    ],
    ['a 20000x20000 PNG header (refused before decoding)', async () => write('img/huge.png', hugePngHeader(20000, 20000)), 'huge.png'],
    ['not an image at all', async () => write('img/notes.png', 'hello'), 'notes.png'],
  ];
  test.each(cases)('%s: one clear error naming the file', async (_n, make, name) => {
    const file = await make();
    const started = Date.now();
    await expect(loadImage(file, { width: 64, height: 64 })).rejects.toThrow(new RegExp(name.replace('.', '\\.')));
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

/** A PNG signature and IHDR claiming a huge size, with no image data. */
function hugePngHeader(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const chunk = (type: string, body: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([Buffer.from(type), body])) >>> 0);
    return Buffer.concat([len, Buffer.from(type), body, crc]);
  };
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function crc32(b: Buffer): number {
  let c = ~0;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c;
}
