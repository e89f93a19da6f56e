// The world with ground truth: a procedural captioned image set, subjects to personalize on, and
// scorers that read any image's pixels (README.md).
export * from './palette';
export * from './figures';
export * from './shapes';
export * from './draw';
export * from './scene';
export * from './subjects';
export { perceive, type Perception, GRID } from './perceive';
export * from './score';
