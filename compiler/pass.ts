/**
 * One shape for every graph rewrite, and the driver that runs an ordered list of them.
 *
 * A pass reads and writes a shared state object `S` (the facts earlier passes produced, such as
 * the LoRA parameters or the loss value); `requires` and `ensures` name the state fields it reads
 * and writes, and the driver checks both, so a list in the wrong order fails with the pass's name
 * instead of an undefined deep inside it. The verifier runs after every pass.
 */
import { Model } from './ir';
import { assertValidGraph } from './verify';

export interface PassResult {
  changed: boolean;
  /** One line for logs: what the pass did (counts). */
  summary?: string;
  /** A rewrite that looks for sites (attention, feed-forwards): how many it found and matched. */
  sites?: PassSites;
}

/**
 * The sites a rewrite looked at: `found` candidates (e.g. every Softmax), `matched` of them the
 * form it knows, `rewritten` of those changed (a matched site may be too small to be worth it),
 * and why the others did not match, with a count for each reason.
 */
export interface PassSites {
  /** What a site is, e.g. "Softmax sites". */
  what: string;
  found: number;
  matched: number;
  rewritten: number;
  unmatched: { reason: string; count: number }[];
}

/**
 * What a rewrite found: `found` sites, `reasons` why each unmatched one was refused (the rest
 * matched), `rewritten` of the matched; each reason counted once, in the order first seen.
 */
export function passSites(what: string, found: number, reasons: readonly string[], rewritten: number): PassSites {
  const counts = new Map<string, number>();
  for (const r of reasons) counts.set(r, (counts.get(r) ?? 0) + 1);
  return { what, found, matched: found - reasons.length, rewritten, unmatched: [...counts].map(([reason, count]) => ({ reason, count })) };
}

export interface Pass<S> {
  readonly name: string;
  readonly requires?: readonly (keyof S)[];
  readonly ensures?: readonly (keyof S)[];
  run(model: Model, state: S): PassResult;
}

export interface PassRecord {
  pass: string;
  changed: boolean;
  summary?: string;
  sites?: PassSites;
  nodes: number;
}

export interface RunPassesOptions {
  /** Names the graph in error messages, e.g. "building train.onnx". */
  label?: string;
  log?: (message: string) => void;
  /**
   * When the verifier runs: after each pass (default: a broken graph is caught at the pass that
   * broke it), or once after the last (plan builds each cut's graphs only to measure them).
   */
  verify?: 'each' | 'last';
}

function missing<S>(state: S, keys: readonly (keyof S)[] | undefined): string[] {
  return (keys ?? []).filter((k) => state[k] === undefined).map(String);
}

export function runPasses<S>(model: Model, passes: readonly Pass<S>[], state: S, options: RunPassesOptions = {}): PassRecord[] {
  const label = options.label ?? model.graph.name;
  const records: PassRecord[] = [];
  for (const [i, pass] of passes.entries()) {
    const before = missing(state, pass.requires);
    if (before.length) throw new Error(`internal: pass ${pass.name} (${label}) needs ${before.join(', ')}, which no earlier pass provided`);
    const result = pass.run(model, state);
    const after = missing(state, pass.ensures);
    if (after.length) throw new Error(`internal: pass ${pass.name} (${label}) did not provide ${after.join(', ')}`);
    if (options.verify !== 'last') assertValidGraph(model.graph, `pass ${pass.name} (${label})`);
    else if (i === passes.length - 1) assertValidGraph(model.graph, `the passes up to ${pass.name} (${label})`);
    records.push({
      pass: pass.name,
      changed: result.changed,
      summary: result.summary,
      sites: result.sites,
      nodes: model.graph.nodes.length,
    });
    options.log?.(`  ${pass.name}: ${result.summary ?? (result.changed ? 'changed' : 'no change')} (${model.graph.nodes.length} nodes)`);
  }
  return records;
}
