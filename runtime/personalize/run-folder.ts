/** Where `personalize` keeps each thing in its run folder. */
import * as path from 'path';
import { STORE_DIR } from '../store/store-format';

export const DIFFUSERS_LORA_FILE = 'lora.safetensors';
export const KOHYA_LORA_FILE = 'lora-kohya.safetensors';
export const REPORT_FILE = 'report.html';
export const LOSS_SVG = 'loss.svg';
export const IMAGES_DIR = 'images';
export const COMPILED_DIR = 'compiled';
/** A run that trains base weights: the fine-tuned UNet as an ONNX pipeline folder (generate --model) */
export const PIPELINE_DIR = 'pipeline';
/** ... and as a diffusers UNet folder (UNet2DConditionModel.from_pretrained) */
export const DIFFUSERS_UNET_DIR = 'unet-diffusers';
const DATA_DIR = 'data';
const CLASS_IMAGES_DIR = 'class-images';
const SPEC_FILE = 'spec.hollow';

export interface RunFolder {
  out: string;
  /** the compiled artifacts, with the store, the checkpoints and the trained (peft) LoRA */
  compiled: string;
  /** the encoded prompts, photo latents and class latents */
  data: string;
  /** generated class images */
  classImages: string;
  /** validation images */
  images: string;
  store: string;
  spec: string;
  /** the fine-tuned pipeline folder (runs that train base weights) */
  pipeline: string;
  /** the fine-tuned UNet in diffusers' form (runs that train base weights) */
  diffusersUnet: string;
}

export function runFolder(out: string): RunFolder {
  const compiled = path.join(out, COMPILED_DIR);
  return {
    out,
    compiled,
    data: path.join(out, DATA_DIR),
    classImages: path.join(out, CLASS_IMAGES_DIR),
    images: path.join(out, IMAGES_DIR),
    store: path.join(compiled, STORE_DIR),
    spec: path.join(out, SPEC_FILE),
    pipeline: path.join(out, PIPELINE_DIR),
    diffusersUnet: path.join(out, DIFFUSERS_UNET_DIR),
  };
}
