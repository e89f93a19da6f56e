/**
 * The training artifacts (grads.onnx, train.onnx) built on the hollowed forward graph.
 */
import type { ResolvedSpec } from '../dsl';
import type { ArtifactName, BuildContext } from './compile';
import type { Model } from '../compiler/ir';

export function trainingGraphBuilders(_spec: ResolvedSpec): Partial<Record<ArtifactName, (forward: Model, ctx: BuildContext) => Model>> {
  return {};
}
