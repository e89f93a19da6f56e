/**
 * Builds the page's script: runtime/web/browser/page.ts and the pure runtime modules it imports,
 * bundled by esbuild into one browser script (IIFE; onnxruntime-web stays outside, loaded from its
 * own dist files as the global `ort`). The runtime's modules import Node built-ins for their file
 * functions, which the page never calls: those imports resolve to an empty module, and only from
 * the files listed in NODE_ONLY_IMPORTERS, so a page module that needed the file system fails the
 * build instead of failing in the tab. onnxruntime-node is never allowed in.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Plugin } from 'esbuild';

/** The package root (the sources live beside dist/). */
export function packageRoot(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'runtime', 'web', 'browser', 'page.ts'))) return dir;
  }
  throw new Error(`cannot find the page sources (runtime/web/browser/page.ts) above ${__dirname}`);
}

export const PAGE_DIR = ['runtime', 'web', 'browser'];

/** Modules whose Node-only functions the page leaves alone (it uses their constants and types): readManifest. */
const NODE_ONLY_IMPORTERS = ['compiler/manifest.ts'];
const NODE_BUILTINS = /^(node:)?(fs|path|crypto|zlib|os)$/;

function nodeStubs(root: string): Plugin {
  return {
    name: 'hollowc-node-stubs',
    setup(build) {
      build.onResolve({ filter: NODE_BUILTINS }, (args) => {
        const importer = path.relative(root, args.importer).split(path.sep).join('/');
        if (!NODE_ONLY_IMPORTERS.includes(importer))
          return { errors: [{ text: `${importer} imports ${args.path}: the page runs in a browser (add a pure module instead)` }] };
        return { path: args.path, namespace: 'node-stub' };
      });
      build.onResolve({ filter: /^onnxruntime-node$/ }, (args) => ({
        errors: [
          { text: `${path.relative(root, args.importer)} imports onnxruntime-node: the page uses onnxruntime-web (the global ort)` },
        ],
      }));
      build.onLoad({ filter: /.*/, namespace: 'node-stub' }, () => ({ contents: 'export {};', loader: 'js' }));
    },
  };
}

export async function bundlePage(): Promise<{ js: string; html: string; warnings: string[] }> {
  const esbuild = await import('esbuild');
  const root = packageRoot();
  const dir = path.join(root, ...PAGE_DIR);
  const result = await esbuild.build({
    entryPoints: [path.join(dir, 'page.ts')],
    bundle: true,
    write: false,
    format: 'iife',
    platform: 'browser',
    target: 'es2022',
    sourcemap: 'inline',
    logLevel: 'silent',
    plugins: [nodeStubs(root)],
    tsconfig: path.join(dir, 'tsconfig.json'),
  });
  return {
    js: result.outputFiles[0].text,
    html: fs.readFileSync(path.join(dir, 'index.html'), 'utf8'),
    warnings: result.warnings.filter((w) => !w.text.includes('node-stub:')).map((w) => w.text),
  };
}
