/** The static shapes the training graphs are built for: the spec's, else the family's defaults (specialize-shapes and chunk-attention's design point). */
import { HollowcError } from '../../compiler/errors';
import { Dim, Model } from '../../compiler/ir';
import { HOLLOW_ACTIVATION, TIMESTEP, isLoraParam } from '../../compiler/manifest';
import { FAMILIES, FamilyName } from '../../models/families';

/** Family default latent side and text length, used for dims a spec leaves open. */
function defaultDims(family: FamilyName, batch: number): Record<string, number> {
  const sample = FAMILIES[family].full.shapes.sample;
  const sequence = FAMILIES[family].full.shapes.encoder_hidden_states[1];
  // Under the names torch.onnx.export scripts use and those optimum's exporter uses.
  return { batch, height: sample[2], width: sample[3], sequence, batch_size: batch, sequence_length: sequence };
}

/** `height/4` with height = 64 -> 16. */
function resolveDim(d: Dim, dims: Record<string, number>, input: string): number {
  if (typeof d === 'number') return d;
  if (typeof d === 'string') {
    const m = /^([A-Za-z_]\w*)(?:\/(\d+))?$/.exec(d);
    if (m && dims[m[1]] !== undefined) return m[2] ? dims[m[1]] / Number(m[2]) : dims[m[1]];
  }
  throw new HollowcError(
    `no static size for dimension ${JSON.stringify(d)} of ${input}: give it with a "shape ${input} [...]" line in the spec`,
  );
}

/** Static shapes for every input of the hollowed forward graph (LoRA tensors are static already). */
export function trainingShapes(
  forward: Model,
  family: FamilyName,
  options: { shapes: Readonly<Record<string, readonly number[]>>; batch: number },
): Record<string, number[]> {
  const dims = defaultDims(family, options.batch);
  // Dims the spec fixes through the UNet's inputs (e.g. sample [1, 4, 32, 32] -> height 32).
  for (const v of forward.graph.inputs) {
    const given = options.shapes[v.name];
    v.type?.shape?.forEach((d, i) => {
      if (typeof d === 'string' && given?.[i] !== undefined) dims[d] = given[i];
    });
  }
  const shapes: Record<string, number[]> = {};
  for (const v of forward.graph.inputs) {
    if (isLoraParam(v.name)) continue;
    // The spec's timestep shape is the source model's; timestep-per-sample may have made a 0-d one [batch].
    const given = v.name === TIMESTEP && options.shapes[v.name]?.length !== v.type?.shape?.length ? undefined : options.shapes[v.name];
    // A [n] timestep carries one t per sample whatever its axis is called (optimum: `steps`).
    const shape = v.name === TIMESTEP && v.type?.shape?.length === 1 ? ['batch'] : (v.type?.shape ?? []);
    shapes[v.name] = given ? [...given] : shape.map((d) => resolveDim(d, dims, v.name));
  }
  const h = shapes[HOLLOW_ACTIVATION];
  if (h && !h.every((x) => Number.isInteger(x) && x > 0)) {
    throw new HollowcError(`the hollow activation would be [${h}]: the latent size must be divisible by the UNet's downsampling`);
  }
  return shapes;
}
