/**
 * The layering the project depends on, checked on the sources: compiler/ imports nothing of
 * ours, the runtime reads compiled folders only through the artifact contract (never the
 * passes or the spec language), passes do not know the spec language, and the contract's names
 * are spelled in compiler/manifest.ts alone.
 */
import * as fs from 'fs';
import * as path from 'path';

const ROOT = path.join(__dirname, '..');
const LAYERS = ['compiler', 'models', 'passes', 'dsl', 'runtime', 'cli'] as const;
type Layer = (typeof LAYERS)[number];

function sources(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) return sources(rel);
    return e.name.endsWith('.ts') ? [rel] : [];
  });
}

/** Every relative import of `file`, as the top-level folder it lands in. */
function importedLayers(file: string): { layer: string; spec: string }[] {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  const specs = [...text.matchAll(/(?:from\s+|import\(|require\()['"](\.[^'"]+)['"]/g)].map((m) => m[1]);
  return specs.map((spec) => ({
    spec,
    layer: path.relative(ROOT, path.resolve(path.dirname(path.join(ROOT, file)), spec)).split(path.sep)[0],
  }));
}

const FORBIDDEN: Record<Layer, readonly string[]> = {
  compiler: ['models', 'passes', 'dsl', 'runtime', 'cli'],
  models: ['passes', 'dsl', 'runtime', 'cli'],
  passes: ['dsl', 'runtime', 'cli'],
  dsl: ['passes', 'runtime', 'cli'],
  runtime: ['passes', 'dsl', 'cli'],
  cli: [],
};

/**
 * cli/api/ is the library's entries that wire the layers (what each command does, as a function;
 * index.ts exports them); the command files of cli/ parse options over it. The library knows no
 * command: cli/api/ imports nothing of cli/ outside itself.
 */
test('cli/api/ (the library) imports no command file', () => {
  const bad = sources(path.join('cli', 'api')).flatMap((file) =>
    importedLayers(file)
      .map((i) => path.relative(ROOT, path.resolve(path.dirname(path.join(ROOT, file)), i.spec)))
      .filter((target) => target.startsWith(`cli${path.sep}`) && !target.startsWith(path.join('cli', 'api') + path.sep))
      .map((target) => `${file} imports ${target}`),
  );
  expect(bad).toEqual([]);
});

test.each(LAYERS.map((l) => [l]))('%s/ imports only the layers below it', (layer) => {
  const bad = sources(layer).flatMap((file) =>
    importedLayers(file)
      .filter((i) => FORBIDDEN[layer].includes(i.layer))
      .map((i) => `${file} imports ${i.spec}`),
  );
  expect(bad).toEqual([]);
});

/**
 * What the runtime may use of compiler/: the artifact contract, errors, files written whole and the
 * folder lock, and the graph IR and its reader (to read an artifact's inputs). Never the passes'
 * machinery (pass driver, builders, shape inference, clone).
 */
const RUNTIME_MAY_USE_COMPILER = ['manifest', 'errors', 'atomic-files', 'folder-lock', 'dtype', 'float16', 'ir', 'serde'];

test("runtime/ uses only compiler/'s contract, file and IR modules", () => {
  const bad = sources('runtime').flatMap((file) =>
    importedLayers(file)
      .filter((i) => i.layer === 'compiler')
      .map((i) => path.basename(i.spec))
      .filter((m) => !RUNTIME_MAY_USE_COMPILER.includes(m))
      .map((m) => `${file} imports compiler/${m}`),
  );
  expect(bad).toEqual([]);
});

test('the artifact contract names are spelled only in compiler/manifest.ts', () => {
  // String literals of the names that cross the compile/run boundary.
  const NAMES =
    /['"`](hollow_activation|loss_weight|out_sample|base_encoder_hidden_states|base_text_embeds)['"`]|\.lora_\[AB\]|\.lora_[AB]\.weight|['"`]\.(exp_avg|exp_avg_sq|updated|grad)['"`]|\.exp_avg(_sq)?\.updated|\$\{[^}]+\}\.(exp_avg|updated|grad)\b/;
  const bad: string[] = [];
  for (const layer of LAYERS) {
    for (const file of sources(layer)) {
      if (file === path.join('compiler', 'manifest.ts')) continue;
      fs.readFileSync(path.join(ROOT, file), 'utf8')
        .split('\n')
        .forEach((line, i) => {
          const code = line
            .replace(/\/\*.*?\*\//g, '')
            .replace(/\/\/.*$/, '')
            .replace(/^\s*\/?\*.*$/, '');
          if (NAMES.test(code)) bad.push(`${file}:${i + 1}: ${line.trim()}`);
        });
    }
  }
  expect(bad).toEqual([]);
});

/** runtime/'s rooms, each with the rooms it may import (a DAG: formats at the bottom, personalize and web at the top). */
const RUNTIME_ROOMS: Record<string, readonly string[]> = {
  formats: [],
  ort: ['formats'],
  sampling: ['formats', 'ort'],
  store: ['formats', 'ort', 'sampling'],
  train: ['formats', 'ort', 'sampling', 'store'],
  'text-to-image': ['formats', 'ort', 'sampling', 'store'],
  personalize: ['formats', 'ort', 'sampling', 'store', 'train', 'text-to-image', '.'],
  // the server encodes `web --prompt` with the pipeline's text encoder at start
  web: ['formats', 'ort', 'sampling', 'store', 'train', 'text-to-image'],
  // runtime/'s own top level: progress lines and RSS sampling, used by any room
  '.': [],
};
const anyRoomMay = ['.'];

/** The room of a runtime/ file ('.' for runtime/'s top level), or undefined outside runtime/. */
function roomOf(file: string): string | undefined {
  const parts = path.normalize(file).split(path.sep);
  if (parts[0] !== 'runtime') return undefined;
  return parts.length === 2 ? '.' : parts[1];
}

test("runtime/'s rooms import only the rooms below them", () => {
  const bad = sources('runtime').flatMap((file) => {
    const room = roomOf(file)!;
    const allowed = RUNTIME_ROOMS[room];
    if (!allowed) return [`${file}: runtime/${room}/ is not a known room (add it to RUNTIME_ROOMS and the README)`];
    return importedLayers(file)
      .map((i) => ({ ...i, room: roomOf(path.relative(ROOT, path.resolve(path.dirname(path.join(ROOT, file)), i.spec))) }))
      .filter((i) => i.room !== undefined && i.room !== room && !allowed.includes(i.room) && !anyRoomMay.includes(i.room))
      .map((i) => `${file} (runtime/${room}) imports ${i.spec} (runtime/${i.room})`);
  });
  expect(bad).toEqual([]);
  // every room says what it is for
  for (const room of Object.keys(RUNTIME_ROOMS).filter((r) => r !== '.'))
    expect(fs.readFileSync(path.join(ROOT, 'runtime', room, 'README.md'), 'utf8').trim().length).toBeGreaterThan(20);
});

test('small modules: no source over 600 lines, cli/ command files at most 250, runtime/ top level at most 8 files', () => {
  const lines = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8').split('\n').length;
  const long = LAYERS.flatMap((l) => sources(l)).filter((f) => lines(f) > (f.startsWith(`cli${path.sep}`) && !f.startsWith(path.join('cli', 'api') + path.sep) ? 250 : 600));
  expect(long).toEqual([]);
  const top = fs.readdirSync(path.join(ROOT, 'runtime'), { withFileTypes: true }).filter((e) => e.isFile() && e.name.endsWith('.ts'));
  expect(top.length).toBeLessThanOrEqual(8);
});

/**
 * passes/'s rooms: a rewrite room imports only passes/lib/ and its own room (what rewrites share
 * lives in lib/, so a rewrite can move or go without breaking another); lib/ imports only lib/;
 * the pipeline (artifact-passes.ts), compile and plan/ on top import any room.
 */
const PASS_ROOMS = ['structure', 'memory', 'precision', 'training', 'fold'];
const PASS_TOP = ['artifact-passes.ts', 'compile-unet.ts', 'compile-graph.ts'];

test("passes/'s rewrites live in rooms by concern and borrow only from passes/lib/", () => {
  const passRoomOf = (file: string) => path.normalize(file).split(path.sep)[1];
  const top = fs.readdirSync(path.join(ROOT, 'passes'), { withFileTypes: true }).filter((e) => e.isFile());
  expect(top.map((e) => e.name).sort()).toEqual([...PASS_TOP].sort());
  const rooms = fs.readdirSync(path.join(ROOT, 'passes'), { withFileTypes: true }).filter((e) => e.isDirectory());
  expect(rooms.map((e) => e.name).sort()).toEqual([...PASS_ROOMS, 'lib', 'plan'].sort());
  const bad = sources('passes').flatMap((file) => {
    const room = passRoomOf(file);
    if (!PASS_ROOMS.includes(room) && room !== 'lib') return [];
    return importedLayers(file)
      .filter((i) => i.layer === 'passes')
      .map((i) => ({ ...i, room: passRoomOf(path.relative(ROOT, path.resolve(path.dirname(path.join(ROOT, file)), i.spec))) }))
      .filter((i) => i.room !== room && i.room !== 'lib')
      .map((i) => `${file} (passes/${room}) imports ${i.spec} (passes/${i.room})`);
  });
  expect(bad).toEqual([]);
});
