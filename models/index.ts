// Pure-data descriptions of SD-family UNets: configs, block layout, cuts, parameter counts,
// presets. No ONNX here; everything is computed from a diffusers config.
export * from './config';
export * from './families';
export * from './layout';
export * from './param-count';
export * from './presets';
