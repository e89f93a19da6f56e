// Runs the error cases of tests/fixtures/specs/errors.hollow (format described at its top):
// each case must fail with exactly the diagnostics its `# expect:` lines spell out.
import * as fs from 'fs';
import * as path from 'path';
import { checkSpec, ModelFacts, parseSpec, SpecError } from '../dsl';
import { toySd15 } from './dsl-toy-model';

const FILE = path.join(__dirname, 'fixtures', 'specs', 'errors.hollow');
const FACTS: Record<string, () => ModelFacts> = { 'toy-sd15': toySd15 };

interface Case {
  readonly text: string;
  readonly expected: string;
  readonly facts?: string;
  /** Line of the separator in errors.hollow, to find a failing case. */
  readonly at: number;
}

function readCases(): Case[] {
  const chunks = fs.readFileSync(FILE, 'utf8').split(/^# -----[^\n]*\n/m);
  const cases: Case[] = [];
  let line = chunks[0]!.split('\n').length; // the header, before the first separator
  for (const text of chunks.slice(1)) {
    const lines = text.split('\n');
    const expected = lines.filter((l) => l.startsWith('# expect:')).map((l) => l.replace(/^# expect: ?/, ''));
    const facts = lines.map((l) => /^# facts: (\S+)$/.exec(l)?.[1]).find((f) => f !== undefined);
    cases.push({ text, expected: expected.join('\n'), at: line, ...(facts === undefined ? {} : { facts }) });
    line += lines.length - 1 + 1;
  }
  return cases;
}

function diagnostics(c: Case): string {
  try {
    const spec = parseSpec(c.text, 'case.hollow');
    if (c.facts !== undefined) {
      const facts = FACTS[c.facts];
      if (facts === undefined) throw new Error(`unknown "# facts: ${c.facts}"`);
      checkSpec(spec, facts());
    }
  } catch (e) {
    if (e instanceof SpecError) return e.formatAll();
    throw e;
  }
  return '(no error)';
}

const cases = readCases();

test('errors.hollow has cases, each with an expectation', () => {
  expect(cases.length).toBeGreaterThan(50);
  for (const c of cases) expect({ at: c.at, expected: c.expected }).not.toEqual({ at: c.at, expected: '' });
});

describe.each(cases.map((c) => [`errors.hollow:${c.at}: ${c.expected.split('\n')[0]}`, c] as const))('%s', (_, c) => {
  test('reports exactly the expected diagnostics', () => {
    expect(diagnostics(c)).toBe(c.expected);
  });
});
