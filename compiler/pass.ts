/**
 * The pass driver: an explicit, ordered pipeline of named rewrites over one graph, with the
 * verifier run after each when asked (tests always ask), so a broken rewrite is caught where it
 * happened.
 */
import { Graph } from './ir';
import { assertValidGraph } from './verify';

export interface Pass<C> {
  readonly name: string;
  /** Rewrites `graph` in place. */
  run(graph: Graph, context: C): void;
}

export interface PipelineOptions {
  verify?: boolean;
  log?: (message: string) => void;
}

export function runPipeline<C>(graph: Graph, passes: readonly Pass<C>[], context: C, options: PipelineOptions = {}): void {
  for (const pass of passes) {
    const before = graph.nodes.length;
    pass.run(graph, context);
    if (options.verify) assertValidGraph(graph, `pass ${pass.name}`);
    options.log?.(`${pass.name}: ${before} -> ${graph.nodes.length} nodes`);
  }
}
