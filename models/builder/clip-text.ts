/**
 * Builds transformers' CLIPTextModel / CLIPTextModelWithProjection as ONNX, shaped like the
 * optimum / torch.onnx.export text encoders of SD pipelines (module-scoped node names under
 * `/text_model/...`, path-named biases and LayerNorm weights, `onnx::MatMul_N` transposed Linear
 * weights), with seeded random weights streamed into the external data file.
 *
 * Per layer (CLIPEncoderLayer, pre-norm): x += out_proj(attn(layer_norm1(x))), x +=
 * fc2(act(fc1(layer_norm2(x)))). Attention is CLIPAttention: q scaled by head_dim^-0.5 before
 * the scores, a causal mask of finfo(float32).min added to them, Softmax. Heads stay a separate
 * axis ([B, h, S, d]) instead of being folded into the batch: the same numbers with fewer nodes.
 */
import { GraphBuilder } from '../../compiler/builder';
import { DataType } from '../../compiler/dtype';
import { Graph, Model, Value } from '../../compiler/ir';
import { fanInUniform, NORM_BIAS, NORM_WEIGHT, WeightInit } from '../random';
import { ClipTextConfig, clipTextParameterCount, hasProjection } from '../text-encoder-config';
import { BuildContext, floatScalar, int64Const, layerNorm, linear3d, moduleBuilder } from './nn';
import { IR_VERSION, OPSET } from './unet';
import { VirtualWeightSink, WeightSink } from './weights';
import { writeBuiltModel, WrittenModel } from './write-model';

export interface ClipTextBuildOptions {
  /** also output `hidden_states.0` (embeddings) .. `hidden_states.L` (last layer, before the final LayerNorm), as SDXL needs */
  hiddenStates?: boolean;
  /**
   * The token and position embeddings' init spread as a multiple of CLIP's N(0, 0.02) (default 1).
   * Frozen at its random init, a CLIP's two fan-in-scaled layers add O(1) to a residual stream that
   * starts at 0.02: each word is drowned at its own position. A text encoder that stays random
   * (cli/api/world-pipeline.ts) draws them larger so every word stays readable.
   */
  embeddingScale?: number;
}

export interface BuiltTextEncoder {
  readonly model: Model;
  readonly parameterCount: number;
  readonly outputs: readonly string[];
}

/** CLIP's embedding init is N(0, 0.02); a uniform of the same spread keeps activations O(1). */
const EMBEDDING_INIT: WeightInit = { center: 0, spread: 0.02 * Math.sqrt(3) };
/** torch.finfo(torch.float32).min, what transformers' causal mask adds above the diagonal. */
const MASK_MIN = -3.4028234663852886e38;

/** An Identity giving an inner value a graph-output name (as the exporter does for returned intermediates). */
function namedIdentity(graph: Graph, x: Value, name: string): Value {
  return graph.addNode({ opType: 'Identity', name: `/Identity_${name}`, inputs: [x], outputs: [name] }).outputs[0];
}

function embedding(ctx: BuildContext, path: string, ids: Value, rows: number, dim: number, scale = 1): Value {
  const b = moduleBuilder(ctx, path);
  const init = { ...EMBEDDING_INIT, spread: EMBEDDING_INIT.spread * scale };
  const w = ctx.param(`${path}.weight`, `${path}.weight`, [rows, dim], [rows, dim], 'same', init);
  return b.op('Gather', [w, ids], { axis: 0 });
}

function activation(b: GraphBuilder, x: Value, kind: ClipTextConfig['hidden_act']): Value {
  if (kind === 'quick_gelu') {
    // QuickGELUActivation: x * sigmoid(1.702 * x)
    return b.op('Mul', [x, b.op('Sigmoid', [b.op('Mul', [x, floatScalar(b, Math.fround(1.702))])])]);
  }
  // GELUActivation (exact): x * 0.5 * (1 + erf(x / sqrt 2)), as torch exports F.gelu
  const erf = b.op('Erf', [b.op('Div', [x, floatScalar(b, Math.fround(Math.SQRT2))])]);
  return b.op('Mul', [b.op('Mul', [x, b.op('Add', [erf, floatScalar(b, 1)])]), floatScalar(b, 0.5)]);
}

function selfAttention(ctx: BuildContext, path: string, x: Value, mask: Value, c: ClipTextConfig): Value {
  const b = moduleBuilder(ctx, path);
  const d = c.hidden_size;
  const heads = c.num_attention_heads;
  const headDim = d / heads;
  const split = (v: Value) =>
    b.op('Transpose', [b.op('Reshape', [v, int64Const(b, [0, 0, heads, headDim])], { allowzero: 0 })], { perm: [0, 2, 1, 3] });
  const q = b.op('Mul', [linear3d(ctx, `${path}.q_proj`, x, d, d), floatScalar(b, Math.fround(headDim ** -0.5))]);
  const k = linear3d(ctx, `${path}.k_proj`, x, d, d);
  const v = linear3d(ctx, `${path}.v_proj`, x, d, d);
  const scores = b.op('MatMul', [split(q), b.op('Transpose', [split(k)], { perm: [0, 1, 3, 2] })]);
  const probs = b.op('Softmax', [b.op('Add', [scores, mask])], { axis: -1 });
  const merged = b.op(
    'Reshape',
    [b.op('Transpose', [b.op('MatMul', [probs, split(v)])], { perm: [0, 2, 1, 3] }), int64Const(b, [0, 0, d])],
    { allowzero: 0 },
  );
  return linear3d(ctx, `${path}.out_proj`, merged, d, d);
}

function encoderLayer(ctx: BuildContext, path: string, x: Value, mask: Value, c: ClipTextConfig): Value {
  const b = moduleBuilder(ctx, path);
  const d = c.hidden_size;
  const eps = c.layer_norm_eps;
  let h = b.op('Add', [x, selfAttention(ctx, `${path}.self_attn`, layerNorm(ctx, `${path}.layer_norm1`, x, d, eps), mask, c)]);
  const mlp = `${path}.mlp`;
  const up = linear3d(ctx, `${mlp}.fc1`, layerNorm(ctx, `${path}.layer_norm2`, h, d, eps), d, c.intermediate_size);
  const act = activation(moduleBuilder(ctx, `${mlp}.activation_fn`), up, c.hidden_act);
  h = b.op('Add', [h, linear3d(ctx, `${mlp}.fc2`, act, c.intermediate_size, d)]);
  return h;
}

/** The causal mask [S, S]: 0 on and below the diagonal, finfo.min above (a broadcast constant). */
function causalMask(b: GraphBuilder, s: number): Value {
  const m = new Float32Array(s * s);
  for (let i = 0; i < s; i++) for (let j = i + 1; j < s; j++) m[i * s + j] = MASK_MIN;
  return b.constant(m, [s, s]);
}

/**
 * The text encoder graph. Input `input_ids` int64 [batch, max_position_embeddings]; outputs
 * `last_hidden_state` [B, S, D] and `pooler_output` [B, D] (CLIPTextModel) or `text_embeds`
 * [B, projection_dim] and `last_hidden_state` (CLIPTextModelWithProjection), then
 * `hidden_states.*` when asked. Pooling takes the final-LayerNorm state at argmax(input_ids),
 * the EOS position (EOS = 49407 is the largest id).
 */
export function buildClipTextGraph(c: ClipTextConfig, weights: WeightSink, options: ClipTextBuildOptions = {}): BuiltTextEncoder {
  if (c.hidden_size % c.num_attention_heads !== 0)
    throw new Error(`hidden_size ${c.hidden_size} is not a multiple of num_attention_heads ${c.num_attention_heads}`);
  const graph = new Graph();
  graph.name = 'main_graph';
  const root = new GraphBuilder(graph);
  const ctx = new BuildContext(graph, root, weights);
  const s = c.max_position_embeddings;
  const d = c.hidden_size;
  const ids = graph.addInput('input_ids', { elemType: DataType.INT64, shape: ['batch_size', s] });

  const emb = moduleBuilder(ctx, 'text_model.embeddings');
  const tokens = embedding(ctx, 'text_model.embeddings.token_embedding', ids, c.vocab_size, d, options.embeddingScale);
  const positionIds = emb.constant(
    BigInt64Array.from({ length: s }, (_, i) => BigInt(i)),
    [1, s],
  );
  const positions = embedding(ctx, 'text_model.embeddings.position_embedding', positionIds, s, d, options.embeddingScale);
  let h = emb.op('Add', [tokens, positions]);

  const mask = causalMask(moduleBuilder(ctx, 'text_model'), s);
  const hidden: Value[] = [h];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    h = encoderLayer(ctx, `text_model.encoder.layers.${i}`, h, mask, c);
    hidden.push(h);
  }
  const finalScope = moduleBuilder(ctx, 'text_model.final_layer_norm');
  const w = ctx.param('text_model.final_layer_norm.weight', 'text_model.final_layer_norm.weight', [d], [d], 'same', NORM_WEIGHT);
  const bias = ctx.param('text_model.final_layer_norm.bias', 'text_model.final_layer_norm.bias', [d], [d], 'same', NORM_BIAS);
  const last = graph.addNode({
    opType: 'LayerNormalization',
    name: `${finalScope.scope}/LayerNormalization`,
    inputs: [h, w, bias],
    outputs: ['last_hidden_state'],
    attributes: [
      { name: 'axis', type: 'int', value: -1 },
      { name: 'epsilon', type: 'float', value: c.layer_norm_eps },
    ],
  }).outputs[0];
  last.type = { elemType: DataType.FLOAT, shape: ['batch_size', s, d] };

  // pooled = last_hidden_state[arange(B), input_ids.to(int).argmax(-1)]: ArgMax has no int64 kernel, hence the Cast
  const tm = moduleBuilder(ctx, 'text_model');
  const eos = tm.op('ArgMax', [tm.op('Cast', [ids], { to: DataType.INT32 })], { axis: -1, keepdims: 1 });
  const pooledName = hasProjection(c) ? undefined : 'pooler_output';
  const pooledNode = graph.addNode({
    opType: 'GatherND',
    name: `${tm.scope}/GatherND`,
    inputs: [last, eos],
    outputs: [pooledName ?? graph.freshName('/text_model/GatherND_output_0')],
    attributes: [{ name: 'batch_dims', type: 'int', value: 1 }],
  });
  const pooled = pooledNode.outputs[0];

  const outputs: Value[] = [];
  if (hasProjection(c)) {
    const p = c.projection_dim;
    const proj = ctx.param(ctx.anonymousName('MatMul'), 'text_projection.weight', [p, d], [d, p], 'transposed', fanInUniform(d));
    const embeds = graph.addNode({ opType: 'MatMul', name: '/text_projection/MatMul', inputs: [pooled, proj], outputs: ['text_embeds'] })
      .outputs[0];
    embeds.type = { elemType: DataType.FLOAT, shape: ['batch_size', p] };
    outputs.push(embeds, last);
  } else {
    pooled.type = { elemType: DataType.FLOAT, shape: ['batch_size', d] };
    outputs.push(last, pooled);
  }
  if (options.hiddenStates) {
    hidden.forEach((v, i) => {
      const out = namedIdentity(graph, v, `hidden_states.${i}`);
      out.type = { elemType: DataType.FLOAT, shape: ['batch_size', s, d] };
      outputs.push(out);
    });
  }
  graph.outputs = outputs;
  if (ctx.parameterCount !== clipTextParameterCount(c)) {
    throw new Error(`internal: text encoder has ${ctx.parameterCount} parameters, the config says ${clipTextParameterCount(c)}`);
  }

  const model = new Model(graph);
  model.irVersion = IR_VERSION;
  model.opsetImports = [{ domain: '', version: OPSET }];
  model.producerName = 'hollowc';
  model.producerVersion = 'model build';
  return { model, parameterCount: ctx.parameterCount, outputs: outputs.map((o) => o.name) };
}

export function describeClipText(c: ClipTextConfig, options: ClipTextBuildOptions = {}): BuiltTextEncoder {
  return buildClipTextGraph(c, new VirtualWeightSink(), options);
}

/** Writes `<outDir>/model.onnx` + `model.onnx_data` of the text encoder. */
export function buildClipText(c: ClipTextConfig, options: ClipTextBuildOptions & { outDir: string; seed?: number }): WrittenModel {
  return writeBuiltModel(
    { outDir: options.outDir, seed: options.seed, metadata: { 'hollowc.text_encoder_config': JSON.stringify(c) } },
    (sink) => buildClipTextGraph(c, sink, options),
  );
}
