/**
 * `hollowc web`: a static file server (node:http, nothing else) for the page, onnxruntime-web's
 * dist files and one compiled folder with its store. It computes nothing: the page does all the
 * work in the tab, so any static host serving the same files works as well.
 *
 *   /                  the page (runtime/web/browser/index.html)
 *   /page.js           the page's script (bundled with esbuild when the server starts)
 *   /ort/<file>        node_modules/onnxruntime-web/dist/<file>
 *   /folder/<file>     the compiled folder: manifest.json, the artifacts, the weights, lora-init;
 *   /folder/store/...  the store's store.json, records.bin, conditioning.safetensors
 *   /model.json        what --model adds (served-model.ts ServedModelJson), or {} without it
 *   /model/prompt.safetensors  with --model: "" (id 1, guidance's negative, unless the pipeline's is
 *                      zeros) and with --prompt the prompt (id 0), encoded once at start by the
 *                      pipeline's text encoder(s), in the store's conditioning layout: the page
 *                      guides with that negative, and samples the prompt after training instead
 *                      of the store's instance prompt
 *   /model/vae_decoder/<file>  with --model <pipeline folder>: its VAE decoder's model.onnx,
 *                      model.onnx_data (when there) and config.json, to decode the sample
 *
 * Only those files: not the folder's checkpoints, nor the pipeline's other components, nor anything
 * else. Responses carry COOP/COEP so the page is cross-origin isolated and onnxruntime-web may use
 * WASM threads.
 */
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { AddressInfo } from 'net';
import { HollowcError } from '../../compiler/errors';
import { ENCODER_HIDDEN_STATES, MANIFEST_FILE, readManifest } from '../../compiler/manifest';
import { LORA_INIT_FILE } from '../formats/lora-format';
import { CONDITIONING_FILE, HEADER_FILE, RECORDS_FILE, conditioningTensors } from '../store/store-format';
import { encodeSafetensorsBytes } from '../formats/safetensors-format';
import { SERVED_NEGATIVE_ID, SERVED_PROMPT_FILE, SERVED_PROMPT_ID, type ServedModelJson } from './served-model';
import { vaeScalingFactor } from '../sampling/vae-scaling';
import { openPipelineFolder } from '../text-to-image/pipeline-folder';
import { encodePrompts, zeroEmptyNegative } from '../text-to-image/text-to-image';
import type { Conditioning } from '../sampling/conditioning';
import { bundlePage } from './bundle';

export interface WebServerOptions {
  out: string;
  /** Default <out>/store. */
  storeDir?: string;
  /** 0: any free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** A pipeline folder whose vae_decoder/ the page decodes its sample with (without it: a latent preview). */
  model?: string;
  /** A prompt the page samples after training (default: the store's instance prompt); needs `model`, whose text encoder encodes it. */
  prompt?: string;
  /** Told when `model` cannot give the page its negative (the page then guides with zeros). */
  warn?: (line: string) => void;
}

export interface WebServer {
  url: string;
  host: string;
  port: number;
  close(): Promise<void>;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.map': 'application/json',
};

export function ortDistDir(): string {
  // Resolving the package from Node gives its node build, which lives in dist/ too.
  return path.dirname(require.resolve('onnxruntime-web'));
}

/** The folder's files the page may read, by URL path under /folder/. */
function folderFiles(out: string, storeDir: string): Map<string, string> {
  const manifest = readManifest(out);
  const files = new Map<string, string>();
  const add = (url: string, file: string) => {
    if (fs.existsSync(file) && fs.statSync(file).isFile()) files.set(url, file);
  };
  add(MANIFEST_FILE, path.join(out, MANIFEST_FILE));
  for (const a of Object.values(manifest.artifacts)) add(a!.file, path.join(out, a!.file));
  for (const w of manifest.weights) add(w, path.join(out, w));
  add(LORA_INIT_FILE, path.join(out, LORA_INIT_FILE));
  for (const f of [HEADER_FILE, RECORDS_FILE, CONDITIONING_FILE]) add(`store/${f}`, path.join(storeDir, f));
  if (!files.has(`store/${HEADER_FILE}`))
    throw new HollowcError(
      `no store here (${HEADER_FILE} is missing): run hollowc precompute first, the page trains on the store`,
      storeDir,
    );
  if (!manifest.artifacts.train)
    throw new HollowcError(
      "this folder has no train.onnx, which the page needs (add `train` to the spec's emit line and compile again)",
      out,
    );
  return files;
}

const VAE_DECODER = 'vae_decoder';
const VAE_WEIGHTS = ['model.onnx_data'];

/** The pipeline folder's VAE decoder files the page may read, by URL path under /model/; checked before serving. */
function vaeDecoderFiles(model: string): Map<string, string> {
  const dir = path.join(model, VAE_DECODER);
  const onnx = path.join(dir, 'model.onnx');
  if (!fs.existsSync(onnx) || !fs.statSync(onnx).isFile())
    throw new HollowcError(`--model: no ${VAE_DECODER}/model.onnx here (expected a pipeline folder with a VAE decoder)`, model);
  const config = path.join(dir, 'config.json');
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(config, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new HollowcError(
      `--model: ${VAE_DECODER}/config.json ${code === 'ENOENT' ? 'is missing' : `is not readable JSON (${(e as Error).message})`}`,
      model,
    );
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new HollowcError(`--model: ${VAE_DECODER}/config.json is not a JSON object`, model);
  // the page divides by it: refuse a bad one here rather than in the tab
  vaeScalingFactor(parsed as Record<string, unknown>, {}, model);
  const files = new Map([
    [`${VAE_DECODER}/model.onnx`, onnx],
    [`${VAE_DECODER}/config.json`, config],
  ]);
  for (const w of VAE_WEIGHTS) if (fs.existsSync(path.join(dir, w))) files.set(`${VAE_DECODER}/${w}`, path.join(dir, w));
  return files;
}

/** What servedConditionings gives: /model.json's part and the bytes of /model/prompt.safetensors. */
interface ServedConditioningFile {
  json: Pick<ServedModelJson, 'prompt' | 'negative'>;
  bytes?: Uint8Array;
}

/**
 * "" (and `text` when given) encoded by the pipeline's text encoder(s), checked against the shape
 * the folder trains on. A prompt that cannot be served is an error; a negative that cannot is a
 * warning, since --model alone asks only for the VAE decoder.
 */
async function servedConditionings(
  model: string,
  text: string | undefined,
  out: string,
  warn: (line: string) => void,
): Promise<ServedConditioningFile> {
  if (text !== undefined && !text.trim()) throw new HollowcError('--prompt is empty');
  const zeros = (why: string): ServedConditioningFile => {
    warn(`${model}: ${why}: the page guides with zeros as the negative, not the encoded "" the pipeline trained on`);
    return { json: { negative: false } };
  };
  let folder: ReturnType<typeof openPipelineFolder>;
  try {
    folder = openPipelineFolder(model);
  } catch (e) {
    if (text !== undefined || !(e instanceof HollowcError)) throw e;
    return zeros(`not a whole pipeline folder (${e.message})`);
  }
  // the negative of guidance as textToImage takes it: the encoded "", or zeros where SDXL says so
  const zero = zeroEmptyNegative(folder);
  const texts = [...(text !== undefined ? [text] : []), ...(zero ? [] : [''])];
  if (!texts.length) return { json: { negative: false } };
  const encoded = await encodePrompts(folder, texts);
  const got = encoded[0].encoderHiddenStates.shape;
  const want = readManifest(out).training?.shapes[ENCODER_HIDDEN_STATES]?.slice(1);
  if (want && want.join() !== got.join()) {
    const why = `this pipeline's text encoder gives [${got}], the store was precomputed with [${want}]`;
    if (text === undefined) return zeros(why);
    throw new HollowcError(`--prompt: ${why} (give the pipeline the folder was compiled from)`, model);
  }
  const conds: [number, Conditioning][] = [];
  if (text !== undefined) conds.push([SERVED_PROMPT_ID, encoded[0]]);
  if (!zero) conds.push([SERVED_NEGATIVE_ID, encoded[encoded.length - 1]]);
  return {
    json: { ...(text !== undefined && { prompt: { text } }), negative: !zero },
    bytes: encodeSafetensorsBytes(conditioningTensors(conds)),
  };
}

export async function startWebServer(options: WebServerOptions): Promise<WebServer> {
  if (options.prompt !== undefined && !options.model)
    throw new HollowcError("--prompt needs --model: the pipeline's text encoder encodes it");
  const out = path.resolve(options.out);
  const files = folderFiles(out, path.resolve(options.storeDir ?? path.join(out, 'store')));
  const modelFiles = options.model ? vaeDecoderFiles(path.resolve(options.model)) : new Map<string, string>();
  const served = options.model
    ? await servedConditionings(path.resolve(options.model), options.prompt, out, options.warn ?? (() => {}))
    : undefined;
  const modelJson = JSON.stringify(
    served
      ? ({
          [VAE_DECODER]: { weights: VAE_WEIGHTS.filter((w) => modelFiles.has(`${VAE_DECODER}/${w}`)) },
          ...served.json,
        } satisfies ServedModelJson)
      : {},
  );
  const page = await bundlePage();
  const ort = ortDistDir();
  const host = options.host ?? '127.0.0.1';

  const server = http.createServer((req, res) => {
    const headers = {
      'Cache-Control': 'no-store',
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cross-Origin-Resource-Policy': 'same-origin',
      'X-Content-Type-Options': 'nosniff',
    };
    const fail = (code: number, text: string) => {
      res.writeHead(code, { ...headers, 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(`${text}\n`);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405, 'only GET and HEAD');
    let url: string;
    try {
      url = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    } catch {
      return fail(400, 'bad URL');
    }
    const send = (body: string | Uint8Array, type: string) => {
      res.writeHead(200, { ...headers, 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const sendFile = (file: string) => {
      const size = fs.statSync(file).size;
      res.writeHead(200, { ...headers, 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'Content-Length': size });
      if (req.method === 'HEAD') return res.end();
      fs.createReadStream(file)
        .on('error', () => res.destroy())
        .pipe(res);
    };
    if (url === '/' || url === '/index.html') return send(page.html, TYPES['.html']);
    if (url === '/page.js') return send(page.js, TYPES['.js']);
    if (url === '/model.json') return send(modelJson, TYPES['.json']);
    if (served?.bytes && url === `/model/${SERVED_PROMPT_FILE}`) return send(served.bytes, 'application/octet-stream');
    const ortFile = /^\/ort\/([\w.-]+)$/.exec(url)?.[1];
    if (ortFile && !ortFile.startsWith('.')) {
      const file = path.join(ort, ortFile);
      return fs.existsSync(file) && fs.statSync(file).isFile() ? sendFile(file) : fail(404, 'not found');
    }
    const folderFile = url.startsWith('/folder/') ? files.get(url.slice('/folder/'.length)) : undefined;
    if (folderFile) return sendFile(folderFile);
    const modelFile = url.startsWith('/model/') ? modelFiles.get(url.slice('/model/'.length)) : undefined;
    if (modelFile) return sendFile(modelFile);
    return fail(404, 'not found');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'EADDRINUSE' ? new HollowcError(`port ${options.port} on ${host} is in use: pick another with --port`) : e),
    );
    server.listen(options.port ?? 8080, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shown}:${port}/`,
    host,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
