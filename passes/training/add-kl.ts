/**
 * A VAE's KL term: how far the encoder's diagonal Gaussian q(z|x) = N(mean, exp(logvar)) is from
 * N(0, 1), as diffusers' DiagonalGaussianDistribution.kl() computes it, averaged over the latent's
 * elements instead of summed, so that its weight reads against a per-pixel MSE.
 */
import { GraphBuilder } from '../../compiler/builder';
import { HollowcError } from '../../compiler/errors';
import { Model, Value } from '../../compiler/ir';
import { OpEmitter, staticShapeOf } from '../../compiler/op-emitter';

/** The KL term's output name. */
export const KL_LOSS = 'kl';

/**
 * mean over the elements of 0.5·(μ² + exp(lv) − 1 − lv), shape [1], for `parameters` =
 * μ ‖ lv along axis 1 (diffusers' DiagonalGaussianDistribution.kl(), per element instead of summed).
 */
export function addGaussianKl(model: Model, parameters: Value, name = KL_LOSS): Value {
  const g = model.graph;
  const shape = staticShapeOf(parameters);
  if (shape.length < 2 || shape[1] % 2 !== 0)
    throw new HollowcError(`KL term: ${parameters.name} has shape [${shape}]; expected [batch, 2·channels, ...] (mean ‖ logvar)`);
  const e = new OpEmitter(new GraphBuilder(g, '/kl'), model.opsetVersion(''));
  const c = shape[1] / 2;
  const half = (from: number) => e.op('Slice', [parameters, e.int64s([from]), e.int64s([from + c]), e.int64s([1])]);
  const mean = half(0);
  const logvar = half(c);
  const one = e.scalarLike(1, parameters);
  const inner = e.op('Sub', [e.op('Add', [e.op('Mul', [mean, mean]), e.op('Exp', [logvar])]), e.op('Add', [one, logvar])]);
  const perElement = e.reduce(
    'ReduceMean',
    inner,
    shape.map((_, i) => i),
    true,
  );
  const kl = e.op('Mul', [e.reshape(perElement, [1]), e.scalarLike(0.5, parameters)]);
  return g.addNode({ opType: 'Identity', name: `/kl/${name}`, inputs: [kl], outputs: [name] }).outputs[0];
}
