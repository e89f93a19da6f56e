/**
 * Adds LoRA to layers: y' = y + (alpha/r) · up(down(x)). For a Linear layer (torch weight
 * [out, in]) down is x·Aᵀ with A [r, in] and up is ·Bᵀ with B [out, r]; for a convolution, down
 * is a conv with A [r, in, kh, kw] and the layer's stride/padding, up a 1x1 conv with
 * B [out, r, 1, 1]. These are the peft/kohya shapes, so trained tensors export unchanged.
 * A and B become graph inputs named `<module path>.lora_A.weight` / `.lora_B.weight`.
 */
import { Attrs, GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { HollowcError } from '../../compiler/errors';
import { Graph, Value } from '../../compiler/ir';
import { loraParamNames } from '../../compiler/manifest';
import { isWithin } from '../../compiler/module-scope';
import { Pass } from '../../compiler/pass';
import { isBasePath } from '../lib/base-path';
import { ArtifactState, LoraConfig, LoraParam } from '../lib/artifact-state';
import { LoraSite, loraShapes, selectSites } from '../lib/lora-sites';

function scopeOf(nodeName: string): string {
  const cut = nodeName.lastIndexOf('/');
  return cut > 0 ? nodeName.slice(0, cut) : '';
}

/** Inserts LoRA at every site; returns the new parameter inputs in site order. */
export function insertLora(g: Graph, sites: readonly LoraSite[], config: LoraConfig): LoraParam[] {
  if (!Number.isInteger(config.rank) || config.rank < 1) throw new HollowcError(`LoRA rank must be a positive integer, got ${config.rank}`);
  const params: LoraParam[] = [];
  for (const site of sites) {
    if (config.rank > Math.min(site.inFeatures, site.outFeatures)) {
      throw new HollowcError(
        `LoRA rank ${config.rank} exceeds the width of ${site.module} (${site.inFeatures} in, ${site.outFeatures} out)`,
      );
    }
    const names = loraParamNames(site.module);
    const shapes = loraShapes(site, config.rank);
    const a = g.addInput(names.a, { elemType: DataType.FLOAT, shape: shapes.a });
    const b = g.addInput(names.b, { elemType: DataType.FLOAT, shape: shapes.b });
    // In the layer's scope; a dynamo export's node names carry none, so the module path is it.
    const scope = site.node.name.includes('/') ? scopeOf(site.node.name) : `/${site.module}`;
    const builder = new GraphBuilder(g, `${scope}/lora`);
    const delta = site.kind === 'conv' ? convDelta(builder, site, a, b) : linearDelta(builder, site, a, b);
    const scaled = builder.op('Mul', [delta, builder.scalar(config.alpha / config.rank)]);
    const readers = [...site.output.uses];
    const graphOutput = g.outputs.includes(site.output);
    const sum = builder.op('Add', [site.output, scaled]);
    for (const u of readers) g.setInput(u.node, u.index, sum);
    if (graphOutput) g.outputs = g.outputs.map((o) => (o === site.output ? sum : o));
    params.push(
      { name: names.a, module: site.module, role: 'A', shape: shapes.a },
      { name: names.b, module: site.module, role: 'B', shape: shapes.b },
    );
  }
  g.topologicalSort();
  return params;
}

function linearDelta(builder: GraphBuilder, site: LoraSite, a: Value, b: Value): Value {
  // x·Aᵀ·Bᵀ with the transposes on the small [r, in] / [out, r] tensors, not on activations.
  const down = builder.op('MatMul', [site.input, builder.op('Transpose', [a], { perm: [1, 0] })]);
  return builder.op('MatMul', [down, builder.op('Transpose', [b], { perm: [1, 0] })]);
}

function convDelta(builder: GraphBuilder, site: LoraSite, a: Value, b: Value): Value {
  const attrs: Attrs = {};
  for (const attr of site.node.attributes) {
    if (attr.name === 'kernel_shape') continue;
    if (attr.type === 'ints' || attr.type === 'int' || attr.type === 'string') attrs[attr.name] = attr.value;
  }
  const down = builder.op('Conv', [site.input, a], attrs);
  return builder.op('Conv', [down, b]);
}

/**
 * LoRA on the targets outside the hollow (inside it they never run with LoRA). In infer.onnx the
 * base path's copies of a target are skipped: path 1 stays the base model.
 */
export const insertLoraPass: Pass<ArtifactState> = {
  name: 'insert-lora',
  ensures: ['loraParams'],
  run(model, state) {
    const cut = state.cut;
    const trained = cut ? state.targets.filter((t) => !cut.hollowedModules.some((m) => isWithin(t, m))) : [...state.targets];
    const sites = selectSites(model.graph, trained, state.label).filter((s) => !isBasePath(s.node));
    state.loraParams = insertLora(model.graph, sites, state.lora);
    return { changed: sites.length > 0, summary: `LoRA rank ${state.lora.rank} on ${sites.length} layers` };
  },
};
