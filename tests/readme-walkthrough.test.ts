/**
 * The README cannot drift from the CLI: its walkthrough (the ```sh block right after
 * `<!-- walkthrough -->`) runs as written, by bash in an empty folder, with `npx hollowc` being the
 * CLI `npm test` builds into dist/ (the package's bin); the compiled folder it leaves holds exactly
 * the files the README's table after `<!-- compiled-folder -->` lists; and every link from the
 * README or docs/ to a file or heading of ours lands.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { tempDir } from './support/fixture';

const ROOT = path.join(__dirname, '..');
const README = path.join(ROOT, 'README.md');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
/** What dist/ is compiled from: tsconfig.json's include and exclude (the tests' own output aside). */
const TSCONFIG = JSON.parse(fs.readFileSync(path.join(ROOT, 'tsconfig.json'), 'utf8')) as { include: string[]; exclude?: string[] };
const CLI_SOURCES = TSCONFIG.include.filter((p) => p !== 'tests');
const NOT_BUILT = (TSCONFIG.exclude ?? []).map((p) => path.normalize(p));

/** The body of the fenced block of `lang` right after `marker`. */
function blockAfter(markdown: string, marker: string, lang: string): string {
  const at = markdown.indexOf(marker);
  if (at < 0) throw new Error(`README.md has no ${marker}`);
  const m = new RegExp(`^\\s*\`\`\`${lang}\\n([\\s\\S]*?)^\`\`\`$`, 'm').exec(markdown.slice(at + marker.length));
  if (!m || m.index !== 0) throw new Error(`README.md: ${marker} is not followed by a \`\`\`${lang} block`);
  return m[1];
}

/** The first column's `names` of the table right after `marker`. */
function tableNamesAfter(markdown: string, marker: string): string[] {
  const at = markdown.indexOf(marker);
  if (at < 0) throw new Error(`README.md has no ${marker}`);
  const lines = markdown.slice(at).split('\n');
  const first = lines.findIndex((l) => l.startsWith('|'));
  const end = lines.findIndex((l, i) => i > first && !l.startsWith('|'));
  // the header row and its |---| line, then one row per name
  return lines.slice(first + 2, end).map((row) => {
    const m = /^\|\s*`([^`]+)`/.exec(row);
    if (!m) throw new Error(`README.md: a row of the table after ${marker} does not start with a \`name\`: ${row}`);
    return m[1];
  });
}

/** The sources of the built CLI that are newer than their dist/ output (or have none). */
function staleSources(): string[] {
  const stale: string[] = [];
  const visit = (rel: string) => {
    const file = path.join(ROOT, rel);
    if (!fs.existsSync(file)) return;
    if (fs.statSync(file).isDirectory()) {
      if (NOT_BUILT.includes(rel)) return;
      for (const e of fs.readdirSync(file)) visit(path.join(rel, e));
    } else if (rel.endsWith('.ts') && !rel.endsWith('.d.ts')) {
      const js = path.join(ROOT, 'dist', rel.replace(/\.ts$/, '.js'));
      if (!fs.existsSync(js) || fs.statSync(js).mtimeMs < fs.statSync(file).mtimeMs) stale.push(rel);
    }
  };
  CLI_SOURCES.forEach(visit);
  return stale;
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens. */
function headingAnchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function anchorsOf(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const m = !fenced && /^#{1,6}\s+(.*)$/.exec(line);
    if (!m) continue;
    const base = headingAnchor(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n ? `${base}-${n}` : base);
  }
  return anchors;
}

test('headingAnchor spells anchors as GitHub does', () => {
  expect(headingAnchor("2026-12-05, second run: residual sums recomputed, plan's prediction")).toBe(
    '2026-12-05-second-run-residual-sums-recomputed-plans-prediction',
  );
  expect(headingAnchor('Training memory on full SD 2.1')).toBe('training-memory-on-full-sd-21');
  expect(headingAnchor('Bad input, kills and concurrent runs')).toBe('bad-input-kills-and-concurrent-runs');
});

test('every link from the README and docs/ to a file or heading of ours lands', () => {
  const docs = fs.readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md'));
  const files = [README, ...docs.map((f) => path.join(ROOT, 'docs', f))];
  const broken: string[] = [];
  for (const file of files) {
    const text = fs.readFileSync(file, 'utf8').replace(/^```[\s\S]*?^```$/gm, '');
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/i.test(target)) continue;
      const [rel, anchor] = target.split('#');
      const linked = rel ? path.resolve(path.dirname(file), rel) : file;
      if (!fs.existsSync(linked)) broken.push(`${path.relative(ROOT, file)}: ${target} (no such file)`);
      else if (anchor !== undefined && !anchorsOf(fs.readFileSync(linked, 'utf8')).has(anchor))
        broken.push(`${path.relative(ROOT, file)}: ${target} (no such heading)`);
    }
  }
  expect(broken).toEqual([]);
});

test('the README walkthrough runs as written and leaves the compiled folder its table lists', () => {
  expect(fs.existsSync(CLI) ? 'built' : 'dist/cli/main.js is missing: npm run build (npm test builds it)').toBe('built');
  const stale = staleSources();
  expect(stale.length ? `dist/ is older than ${stale.slice(0, 3).join(', ')}: npm run build (npm test builds it)` : 'fresh').toBe('fresh');
  const readme = fs.readFileSync(README, 'utf8');
  const walkthrough = blockAfter(readme, '<!-- walkthrough -->', 'sh');
  expect(walkthrough).toMatch(/^npx hollowc compile /m);

  const dir = tempDir('hollowc-readme-');
  // `npx hollowc` is the package's bin, dist/cli/main.js; nothing else may reach npx (no downloads).
  const script = [
    'exec 2>&1',
    'set -euo pipefail',
    'npx() { if [ "$1" != hollowc ]; then echo "the walkthrough may run only npx hollowc, not npx $1" >&2; return 127; fi; shift; node "$HOLLOWC_CLI" "$@"; }',
    'set -x',
    walkthrough,
  ].join('\n');
  const r = spawnSync('bash', ['-c', script], {
    cwd: dir,
    env: { ...process.env, HOLLOWC_CLI: CLI },
    encoding: 'utf8',
    maxBuffer: 64 * 2 ** 20,
  });
  // bash -x writes each command before it runs: the tail names the one that failed and its error
  expect({ exit: r.status, tail: r.status === 0 ? '' : `${dir}\n${r.stdout.slice(-4000)}` }).toEqual({ exit: 0, tail: '' });

  const out = path.join(dir, 'out');
  const listed = tableNamesAfter(readme, '<!-- compiled-folder -->').sort();
  const written = fs
    .readdirSync(out, { withFileTypes: true })
    .map((e) => (e.isDirectory() ? `${e.name}/` : e.name))
    .sort();
  expect(written).toEqual(listed);
  fs.rmSync(dir, { recursive: true, force: true });
}, 600_000);
