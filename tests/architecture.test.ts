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

test.each(LAYERS.map((l) => [l]))('%s/ imports only the layers below it', (layer) => {
  const bad = sources(layer).flatMap((file) =>
    importedLayers(file)
      .filter((i) => FORBIDDEN[layer].includes(i.layer))
      .map((i) => `${file} imports ${i.spec}`),
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
