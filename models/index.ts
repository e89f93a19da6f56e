// SD-family descriptions (configs, block layout, cuts, parameter counts, presets, training
// defaults), computed from diffusers configs, and (models/builder) builders of SD-shaped ONNX
// models for tests and the demo.
export * from './config';
export * from './families';
export * from './layout';
export * from './param-count';
export * from './presets';
export * from './training-defaults';
