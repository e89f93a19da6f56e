/**
 * Opens an SD pipeline folder in optimum's ONNX layout (what `hollowc model pipeline` writes, or
 * an `optimum-cli export onnx` of a diffusers repo) and checks it before anything is loaded:
 * every component present, configs parseable, a known scheduler. What the runtime needs to feed
 * the models (input names, dtypes and ranks: optimum exports int32 input_ids and int64 or float
 * timesteps) is read off the ONNX graphs alone; no weight is read.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from '../../compiler/errors';
import { dataTypeName, ortTypeName } from '../../compiler/dtype';
import { Dim } from '../../compiler/ir';
import { loadModel } from '../../compiler/serde';
import { FamilyName, isFamilyName } from '../../models/families';
import { vaeScalingFactor } from '../sampling/vae-scaling';

type Json = Record<string, unknown>;

/** diffusers schedulers whose forward process is the SD one (betas from the config). */
export const KNOWN_SCHEDULERS: readonly string[] = [
  'PNDMScheduler',
  'DDIMScheduler',
  'DDPMScheduler',
  'EulerDiscreteScheduler',
  'EulerAncestralDiscreteScheduler',
  'DPMSolverMultistepScheduler',
  'DPMSolverSinglestepScheduler',
  'LMSDiscreteScheduler',
  'HeunDiscreteScheduler',
  'KDPM2DiscreteScheduler',
  'KDPM2AncestralDiscreteScheduler',
  'UniPCMultistepScheduler',
  'DEISMultistepScheduler',
];

export interface GraphIo {
  readonly name: string;
  /** onnxruntime-node's tensor type name: float32, float16, int64, int32, ... */
  readonly dtype: string;
  readonly shape: readonly Dim[];
}

export interface ModelComponent {
  readonly name: string;
  readonly dir: string;
  readonly model: string;
  /** model.onnx_data, when the graph keeps its weights there */
  readonly data?: string;
  readonly config: Json;
  readonly inputs: readonly GraphIo[];
  readonly outputs: readonly GraphIo[];
}

export interface TokenizerComponent {
  readonly name: string;
  readonly dir: string;
  readonly padToken: string;
  readonly maxLength: number;
}

export interface PipelineFolder {
  readonly dir: string;
  readonly pipelineClass: string;
  readonly family: FamilyName;
  readonly modelIndex: Json;
  readonly unet: ModelComponent;
  /** text_encoder, then text_encoder_2 for SDXL */
  readonly textEncoders: readonly ModelComponent[];
  readonly tokenizers: readonly TokenizerComponent[];
  readonly vaeEncoder: ModelComponent;
  readonly vaeDecoder: ModelComponent;
  readonly scheduler: { readonly className: string; readonly config: Json; readonly predictionType: 'epsilon' | 'v_prediction' | 'sample' };
  /** latents = VAE encode * scalingFactor */
  readonly scalingFactor: number;
  readonly timestep: { readonly dtype: string; readonly rank: number };
}

/**
 * A JSON object file of a pipeline or tokenizer folder; errors name the folder `dir`, the file as
 * `what`, and say `missing` when it is absent.
 */
export function readJsonObject(file: string, dir: string, what: string, missing = `pipeline folder has no ${what}`): Json {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new HollowcError(code === 'ENOENT' ? missing : `cannot read ${what}: ${code ?? (e as Error).message}`, dir);
  }
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (e) {
    throw new HollowcError(`${what} is not valid JSON (${(e as Error).message})`, dir);
  }
}

function io(values: readonly { name: string; type?: { elemType: number; shape?: Dim[] } }[], label: string): GraphIo[] {
  return values.map((v) => {
    if (!v.type) throw new HollowcError(`graph input/output ${v.name} has no tensor type`, label);
    let dtype: string;
    try {
      dtype = ortTypeName(v.type.elemType);
    } catch {
      dtype = dataTypeName(v.type.elemType);
    }
    return { name: v.name, dtype, shape: v.type.shape ?? [] };
  });
}

function modelComponent(root: string, name: string, expectInputs: readonly string[]): ModelComponent {
  const dir = path.join(root, name);
  const model = path.join(dir, 'model.onnx');
  if (!fs.existsSync(model)) throw new HollowcError(`pipeline folder has no ${name}/model.onnx`, root);
  const config = readJsonObject(path.join(dir, 'config.json'), root, `${name}/config.json`);
  // the graph only: external weights are range-checked (they must exist), never read
  const m = loadModel(model);
  const inputs = io(m.graph.inputs, model);
  const missing = expectInputs.filter((n) => !inputs.some((i) => i.name === n));
  if (missing.length) {
    throw new HollowcError(`${name} graph lacks input(s) ${missing.join(', ')} (has ${inputs.map((i) => i.name).join(', ')})`, model);
  }
  const data = path.join(dir, 'model.onnx_data');
  return { name, dir, model, data: fs.existsSync(data) ? data : undefined, config, inputs, outputs: io(m.graph.outputs, model) };
}

function tokenizerComponent(root: string, name: string): TokenizerComponent {
  const dir = path.join(root, name);
  if (!fs.existsSync(dir)) throw new HollowcError(`pipeline folder has no ${name}/`, root);
  if (!fs.existsSync(path.join(dir, 'tokenizer.json')) && !fs.existsSync(path.join(dir, 'vocab.json'))) {
    throw new HollowcError(`${name}/ has no vocab.json (nor tokenizer.json)`, root);
  }
  const config = fs.existsSync(path.join(dir, 'tokenizer_config.json'))
    ? readJsonObject(path.join(dir, 'tokenizer_config.json'), root, `${name}/tokenizer_config.json`)
    : {};
  const special = fs.existsSync(path.join(dir, 'special_tokens_map.json'))
    ? readJsonObject(path.join(dir, 'special_tokens_map.json'), root, `${name}/special_tokens_map.json`)
    : {};
  const content = (v: unknown) => (typeof v === 'string' ? v : typeof v === 'object' && v !== null ? (v as Json).content : undefined);
  const pad = content(config.pad_token) ?? content(special.pad_token) ?? content(config.eos_token) ?? '<|endoftext|>';
  if (typeof pad !== 'string') throw new HollowcError(`${name}/tokenizer_config.json: pad_token is not a string`, root);
  const maxLength = config.model_max_length ?? 77;
  if (typeof maxLength !== 'number' || !Number.isInteger(maxLength) || maxLength < 2)
    throw new HollowcError(`${name}/tokenizer_config.json: bad model_max_length ${JSON.stringify(maxLength)}`, root);
  return { name, dir, padToken: pad, maxLength };
}

function schedulerOf(root: string): PipelineFolder['scheduler'] {
  const config = readJsonObject(path.join(root, 'scheduler', 'scheduler_config.json'), root, 'scheduler/scheduler_config.json');
  const className = config._class_name;
  if (typeof className !== 'string' || !KNOWN_SCHEDULERS.includes(className)) {
    throw new HollowcError(
      `scheduler/scheduler_config.json: unknown scheduler _class_name ${JSON.stringify(className)} (known: ${KNOWN_SCHEDULERS.join(', ')})`,
      root,
    );
  }
  const prediction = config.prediction_type ?? 'epsilon';
  if (prediction !== 'epsilon' && prediction !== 'v_prediction' && prediction !== 'sample') {
    throw new HollowcError(`scheduler/scheduler_config.json: unknown prediction_type ${JSON.stringify(prediction)}`, root);
  }
  if (config.beta_schedule !== undefined && config.beta_schedule !== 'scaled_linear') {
    throw new HollowcError(
      `scheduler/scheduler_config.json: beta_schedule ${JSON.stringify(config.beta_schedule)} is not SD's scaled_linear`,
      root,
    );
  }
  return { className, config, predictionType: prediction };
}

export function openPipelineFolder(dir: string): PipelineFolder {
  const root = path.resolve(dir);
  if (!fs.existsSync(root) || !fs.statSync(root).isDirectory()) throw new HollowcError('pipeline folder not found (or not a folder)', root);
  const modelIndex = readJsonObject(path.join(root, 'model_index.json'), root, 'model_index.json');
  const pipelineClass = typeof modelIndex._class_name === 'string' ? modelIndex._class_name : '';
  const xl = pipelineClass.includes('XL') || 'text_encoder_2' in modelIndex;
  const scheduler = schedulerOf(root);

  const unet = modelComponent(
    root,
    'unet',
    xl ? ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids'] : ['sample', 'timestep', 'encoder_hidden_states'],
  );
  const encoders = xl ? ['text_encoder', 'text_encoder_2'] : ['text_encoder'];
  const textEncoders = encoders.map((n) => modelComponent(root, n, ['input_ids']));
  const tokenizers = (xl ? ['tokenizer', 'tokenizer_2'] : ['tokenizer']).map((n) => tokenizerComponent(root, n));
  const vaeEncoder = modelComponent(root, 'vae_encoder', ['sample']);
  const vaeDecoder = modelComponent(root, 'vae_decoder', ['latent_sample']);

  const scaling = vaeScalingFactor(vaeDecoder.config, vaeEncoder.config, root);
  const t = unet.inputs.find((i) => i.name === 'timestep')!;

  // hollowc's own folders say what they are; others: XL -> sdxl, v-prediction -> SD 2.x
  const recorded = (modelIndex._hollowc as Json | undefined)?.family;
  const family: FamilyName =
    typeof recorded === 'string' && isFamilyName(recorded)
      ? recorded
      : xl
        ? 'sdxl'
        : scheduler.predictionType === 'v_prediction'
          ? 'sd21'
          : 'sd15';
  return {
    dir: root,
    pipelineClass,
    family,
    modelIndex,
    unet,
    textEncoders,
    tokenizers,
    vaeEncoder,
    vaeDecoder,
    scheduler,
    scalingFactor: scaling,
    timestep: { dtype: t.dtype, rank: t.shape.length },
  };
}
