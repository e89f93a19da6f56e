/**
 * A UNet exported with a 0-d `timestep` (optimum >= 1.24) takes one t for the whole batch:
 * diffusers unsqueezes it to [1] and expands it to the batch. A training step draws one t per
 * sample, so the training graphs take `timestep` as [batch] instead: the input replaces the
 * Unsqueeze's output, and the Expand that follows is then a no-op. Graphs whose timestep is
 * already [batch], or whose 0-d timestep is read other than through Unsqueeze(axes [0]), are left
 * as they are (the runtime then feeds one t per step).
 */
import { Graph, Node } from '../../compiler/ir';
import { TIMESTEP } from '../../compiler/manifest';
import { Pass } from '../../compiler/pass';
import { ArtifactState } from '../lib/artifact-state';
import { constantInts } from '../../compiler/shape-inference';

function unsqueezesAxis0(n: Node): boolean {
  if (n.opType !== 'Unsqueeze') return false;
  const axes = n.inputs[1] ? constantInts(n, 1) : n.attrInts('axes', []);
  return axes?.length === 1 && axes[0] === 0;
}

/** Returns whether the graph changed. */
export function timestepPerSample(g: Graph): boolean {
  const t = g.inputs.find((v) => v.name === TIMESTEP);
  if (!t || t.type?.shape?.length !== 0 || t.uses.length === 0 || !t.uses.every((u) => u.index === 0 && unsqueezesAxis0(u.node)))
    return false;
  const unsqueezes = t.uses.map((u) => u.node);
  const position = g.inputs.indexOf(t);
  const elemType = t.type.elemType;
  for (const u of unsqueezes) g.setInput(u, 0, null);
  g.deleteValue(t);
  const perSample = g.addInput(TIMESTEP, { elemType, shape: ['batch'] });
  g.inputs = [...g.inputs.slice(0, position), perSample, ...g.inputs.slice(position).filter((v) => v !== perSample)];
  for (const u of unsqueezes) {
    g.replaceAllUsesWith(u.outputs[0], perSample);
    g.removeNode(u);
  }
  g.eliminateDeadNodes(); // the Unsqueezes' axes constants
  return true;
}

export const timestepPerSamplePass: Pass<ArtifactState> = {
  name: 'timestep-per-sample',
  run(model) {
    const changed = timestepPerSample(model.graph);
    return { changed, summary: changed ? 'timestep 0-d -> [batch]' : 'timestep already per sample' };
  },
};
