export * from './errors';
export * from './dtype';
export * from './ir';
export * from './builder';
export * from './serde';
export * from './external-data';
export * from './verify';
export * from './printer';
