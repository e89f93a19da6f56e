/** personalize/: photos and a prompt in, a LoRA or a fine-tuned UNet, images and a report out, as resumable stages. */
export { personalize } from './personalize';
export type { PersonalizeResult } from './personalize';
export type { CompileStage, ExportUnetStage, PersonalizeOptions } from './settings';
export type { StageResult } from './stage-runner';
export { STATE_FILE } from './stage-runner';
export { DIFFUSERS_LORA_FILE, DIFFUSERS_UNET_DIR, IMAGES_DIR, KOHYA_LORA_FILE, LOSS_SVG, PIPELINE_DIR, REPORT_FILE } from './run-folder';
export { identifierWords, personalizeSpec } from './spec';
