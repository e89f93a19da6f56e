/**
 * The base weights that train (the spec's `train base`) become graph inputs of the training
 * graphs, each named by its diffusers parameter name and shaped as torch has it, so that users and
 * other tools see one name and layout everywhere: the input, `<name>.grad`, checkpoints, exports.
 * Where the export stores the weight otherwise, the graph maps torch's tensor onto the stored one
 * right where it is read:
 *
 *   torch        W                          (convolutions, named Linear/Gemm weights, biases)
 *   transposed   Transpose(W, [1, 0])       (TorchScript's `onnx::MatMul_<N>` [in, out])
 *   unsqueezed   Reshape(W, [C, 1, 1])      (GroupNorm's `onnx::Mul_<N>` / `onnx::Add_<N>`)
 *
 * The stored initializer leaves the graph. Runs after hollow-out, so a weight of a hollowed layer
 * is no longer there to be made an input (compile refuses to ask for one).
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Graph, Value } from '../../compiler/ir';
import { Pass } from '../../compiler/pass';
import { ArtifactState, BaseParam } from '../lib/artifact-state';
import { BaseParameter, findBaseParameters } from '../lib/base-parameters';

/**
 * Replaces `p`'s initializer by a graph input named `p.name` in torch's layout; returns the input.
 * Any graph's parameters (findBaseParameters), not only the UNet's: compile-graph.ts uses it too.
 */
export function makeParameterInput(g: Graph, p: BaseParameter): Value {
  const stored = p.value;
  const dims = [...stored.initializer!.dims];
  const readers = [...stored.uses];
  // The input takes the parameter's name, which a named initializer holds now.
  if (stored.name === p.name) g.renameValue(stored, g.freshName(`${p.name}.stored`));
  const input = g.addInput(p.name, { elemType: DataType.FLOAT, shape: [...p.shape] });
  // In the reader's scope, as insert-lora names its nodes (a dynamo export's node names carry none: the module path is it).
  const reader = readers[0]?.node.name ?? '';
  const scope = reader.includes('/') ? reader.slice(0, reader.lastIndexOf('/')) : `/${p.module}`;
  const b = new GraphBuilder(g, `${scope}/trainable`);
  const view =
    p.layout === 'transposed'
      ? b.op('Transpose', [input], { perm: [1, 0] })
      : p.layout === 'unsqueezed'
        ? b.op('Reshape', [input, b.int64s(dims)])
        : input;
  view.type = { elemType: DataType.FLOAT, shape: dims };
  for (const u of readers) g.setInput(u.node, u.index, view);
  g.deleteValue(stored);
  return input;
}

export const makeBaseTrainablePass: Pass<ArtifactState> = {
  name: 'make-base-trainable',
  ensures: ['baseParams'],
  run(model, state) {
    const names = state.trainBase ?? [];
    state.baseParams = [];
    if (names.length === 0) return { changed: false, summary: 'no base weight trains' };
    const g = model.graph;
    const byName = new Map(findBaseParameters(g).map((p) => [p.name, p]));
    const params = names.map((name) => {
      const p = byName.get(name);
      if (!p)
        throw new HollowcError(
          `train base: the training graph has no parameter ${name} (hollowed out, or not a parameter of this UNet)`,
          state.label,
        );
      if (p.value.initializer!.dataType !== DataType.FLOAT)
        throw new HollowcError(`train base: ${name} is not float32 (it is stored as type ${p.value.initializer!.dataType})`, state.label);
      return p;
    });
    let values = 0;
    state.baseParams = params.map((p): BaseParam => {
      makeParameterInput(g, p);
      values += p.shape.reduce((a, d) => a * d, 1);
      return { name: p.name, module: p.module, shape: [...p.shape] };
    });
    g.topologicalSort();
    return { changed: true, summary: `${params.length} base weights (${values} values) are inputs` };
  },
};
