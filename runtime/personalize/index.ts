/** personalize/: photos and a prompt in, a LoRA, images and a report out, as resumable stages. */
export { personalize } from './personalize';
export type { PersonalizeResult } from './personalize';
export type { CompileStage, PersonalizeOptions } from './settings';
export type { StageResult } from './stage-runner';
export { STATE_FILE } from './stage-runner';
export { DIFFUSERS_LORA_FILE, IMAGES_DIR, KOHYA_LORA_FILE, LOSS_SVG, REPORT_FILE } from './run-folder';
export { identifierWords, personalizeSpec } from './spec';
