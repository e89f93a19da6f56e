import * as fs from 'fs';
import * as path from 'path';
import { checkSpec, matchesGlob, globProblem, parseSpec, Spec, SpecError, specErrorAt } from '../dsl';
import { toySd15 } from './dsl-toy-model';
import { trainingSettingsOf } from '../cli/api/spec-facts';

const SPECS = path.join(__dirname, 'fixtures', 'specs');

/** The spec's values with every `pos` (and the source text) stripped, for whole-AST comparisons. */
function values(x: unknown): unknown {
  if (Array.isArray(x)) return x.map(values);
  if (x === null || typeof x !== 'object') return x;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(x)) {
    if (k === 'pos' || k === 'dimsPos' || k === 'listPos' || k === 'text') continue;
    out[k] = values(v);
  }
  return out;
}

const parse = (text: string) => parseSpec(text, 'test.hollow');

function parseError(text: string): SpecError {
  try {
    parse(text);
  } catch (e) {
    if (e instanceof SpecError) return e;
    throw e;
  }
  throw new Error('expected a SpecError');
}

describe('parseSpec: the issue example', () => {
  const text = fs.readFileSync(path.join(SPECS, 'dog.hollow'), 'utf8');
  const spec = parseSpec(text, 'dog.hollow');

  test('parses into the expected AST', () => {
    expect(values(spec)).toEqual({
      file: 'dog.hollow',
      model: { value: 'sd21' },
      hollow: { kind: 'preset', preset: { value: '39.2%' } },
      shapes: [
        { input: { value: 'sample' }, dims: [{ value: 1 }, { value: 4 }, { value: 64 }, { value: 64 }] },
        { input: { value: 'encoder_hidden_states' }, dims: [{ value: 1 }, { value: 77 }, { value: 1024 }] },
      ],
      lora: {
        rank: { value: 128 },
        alpha: { value: 128 },
        targets: ['attn1.to_q', 'attn1.to_k', 'attn1.to_v', 'attn1.to_out.0', 'attn2.*'].map((value) => ({ value })),
        init: { kind: 'gaussian', std: { value: 0.02 } },
        infer: { value: 'fp32' },
      },
      trainBase: [],
      loss: { kind: 'mse', prediction: { value: 'epsilon' }, priorWeight: { value: 1 } },
      optimizer: {
        kind: 'adamw',
        lr: { value: 1e-4 },
        betas: [{ value: 0.9 }, { value: 0.999 }],
        eps: { value: 1e-8 },
        weightDecay: { value: 0.01 },
      },
      emit: { value: ['precompute', 'train', 'grads', 'infer'] },
      seed: { value: 0 },
      train: { steps: { value: 1000 }, batch: { value: 1 }, checkpointEvery: { value: 1000 } },
      base: { value: 'fp32' },
      recompute: { value: 'cheap' },
      gradients: { value: 'fp32' },
      chunks: {},
    });
  });

  test('keeps source positions of statements and values', () => {
    expect(spec.model.pos).toEqual({ line: 2, col: 7, length: 4 });
    expect(spec.hollow.pos).toEqual({ line: 3, col: 1, length: 13 }); // "hollow preset"
    expect(spec.hollow.kind === 'preset' && spec.hollow.preset.pos).toEqual({ line: 3, col: 15, length: 7 });
    expect(spec.shapes[1]!.dimsPos).toEqual({ line: 5, col: 29, length: 13 });
    expect(spec.lora.rank.pos).toEqual({ line: 6, col: 11, length: 3 });
    expect(spec.lora.alpha.pos).toEqual({ line: 6, col: 21, length: 3 });
    expect(spec.lora.targets[4]!.pos).toEqual({ line: 7, col: 70, length: 9 });
    expect(spec.optimizer.betas[1].pos).toEqual({ line: 11, col: 35, length: 5 });
    expect(spec.emit.pos).toEqual({ line: 12, col: 1, length: 4 });
    expect(spec.seed.pos).toBeUndefined(); // defaulted
    expect(spec.text).toBe(text);
  });
});

describe('parseSpec: defaults', () => {
  test('a spec with only "hollow" gets every default', () => {
    expect(values(parse('hollow preset "39.2%"\n'))).toEqual({
      file: 'test.hollow',
      model: { value: 'auto' },
      hollow: { kind: 'preset', preset: { value: '39.2%' } },
      shapes: [],
      lora: {
        rank: { value: 16 },
        alpha: { value: 16 },
        targets: [
          'attn1.to_q',
          'attn1.to_k',
          'attn1.to_v',
          'attn1.to_out.0',
          'attn2.to_q',
          'attn2.to_k',
          'attn2.to_v',
          'attn2.to_out.0',
        ].map((value) => ({ value })),
        init: { kind: 'gaussian', std: { value: 1 / 16 } },
        infer: { value: 'fp32' },
      },
      trainBase: [],
      loss: { kind: 'mse', prediction: { value: undefined }, priorWeight: { value: 1 } },
      optimizer: {
        kind: 'adamw',
        lr: { value: 1e-4 },
        betas: [{ value: 0.9 }, { value: 0.999 }],
        eps: { value: 1e-8 },
        weightDecay: { value: 0.01 },
      },
      emit: { value: ['precompute', 'train', 'grads', 'infer'] },
      seed: { value: 0 },
      train: { steps: { value: 1000 }, batch: { value: 1 }, checkpointEvery: { value: 1000 } },
      base: { value: 'fp32' },
      recompute: { value: 'cheap' },
      gradients: { value: 'fp32' },
      chunks: {},
    });
  });

  test('alpha and the gaussian std follow the rank', () => {
    const s = parse('hollow none\nlora rank 8\nlora init gaussian\n');
    expect(s.lora.alpha).toEqual({ value: 8 });
    expect(s.lora.init).toEqual({ kind: 'gaussian', std: { value: 1 / 8 }, pos: { line: 3, col: 1, length: 9 } });
  });

  test('"hollow none" does not emit precompute by default', () => {
    expect(parse('hollow none').emit.value).toEqual(['train', 'grads', 'infer']);
  });

  test('checkpoint_every defaults to the step count', () => {
    expect(parse('hollow none\ntrain steps 300').train.checkpointEvery.value).toBe(300);
  });
});

describe('parseSpec: every statement form', () => {
  const one = (line: string) => parse(`hollow none\n${line}\n`);
  const hollow = (line: string) => values(parse(line).hollow);

  test.each(['sd15', 'sd21', 'sdxl', 'auto'])('model %s', (family) => {
    expect(one(`model ${family}`).model.value).toBe(family);
  });

  test('hollow preset: quoted, bare percentage, sdxl-mid', () => {
    expect(hollow('hollow preset "11.5%"')).toEqual({ kind: 'preset', preset: { value: '11.5%' } });
    expect(hollow('hollow preset 84.3%')).toEqual({ kind: 'preset', preset: { value: '84.3%' } });
    expect(hollow('hollow preset sdxl-mid')).toEqual({ kind: 'preset', preset: { value: 'sdxl-mid' } });
    expect(hollow('hollow preset "sdxl-mid"')).toEqual({ kind: 'preset', preset: { value: 'sdxl-mid' } });
  });

  test('hollow blocks: range, list, single, mixed, without spaces', () => {
    const id = (v: string) => ({ kind: 'id', id: { value: v } });
    const range = (a: string, b: string) => ({ kind: 'range', from: { value: a }, to: { value: b } });
    expect(hollow('hollow blocks 3-3 .. 6-4')).toEqual({ kind: 'blocks', items: [range('3-3', '6-4')] });
    expect(hollow('hollow blocks 5-1, 5-2')).toEqual({ kind: 'blocks', items: [id('5-1'), id('5-2')] });
    expect(hollow('hollow blocks 5-1')).toEqual({ kind: 'blocks', items: [id('5-1')] });
    expect(hollow('hollow blocks 4-2, 5-1..5-2,6-1')).toEqual({
      kind: 'blocks',
      items: [id('4-2'), range('5-1', '5-2'), id('6-1')],
    });
    const s = parse('hollow blocks 3-3 .. 6-4, 7-1');
    expect(s.hollow.kind === 'blocks' && s.hollow.listPos).toEqual({ line: 1, col: 15, length: 15 });
  });

  test('hollow after: module path or paper id', () => {
    expect(hollow('hollow after down_blocks.2.attentions.1')).toEqual({
      kind: 'after',
      ref: { value: 'down_blocks.2.attentions.1' },
      refKind: 'path',
    });
    expect(hollow('hollow after 3-2')).toEqual({ kind: 'after', ref: { value: '3-2' }, refKind: 'id' });
  });

  test('hollow none', () => {
    expect(hollow('hollow none')).toEqual({ kind: 'none' });
  });

  test('shape: accumulates; names may be keywords or quoted; [] is a scalar', () => {
    const s = parse('hollow none\nshape sample [2, 4, 32, 32]\nshape timestep []\nshape train [1]\nshape "odd/name" [3]\n');
    expect(values(s.shapes)).toEqual([
      { input: { value: 'sample' }, dims: [2, 4, 32, 32].map((value) => ({ value })) },
      { input: { value: 'timestep' }, dims: [] },
      { input: { value: 'train' }, dims: [{ value: 1 }] },
      { input: { value: 'odd/name' }, dims: [{ value: 3 }] },
    ]);
  });

  test('lora rank / alpha / targets / init', () => {
    expect(one('lora rank 4').lora.rank.value).toBe(4);
    const ra = one('lora rank 4 alpha 2.5').lora;
    expect([ra.rank.value, ra.alpha.value]).toEqual([4, 2.5]);
    const a = parse('hollow none\nlora alpha 32\nlora rank 64').lora;
    expect([a.rank.value, a.alpha.value]).toEqual([64, 32]);
    const t = parse('hollow none\nlora targets "attn1.*"\nlora targets "resnets.*.conv1" "ff.net.2"\n').lora.targets;
    expect(t.map((g) => g.value)).toEqual(['attn1.*', 'resnets.*.conv1', 'ff.net.2']);
    expect(values(one('lora init gaussian 0.5').lora.init)).toEqual({ kind: 'gaussian', std: { value: 0.5 } });
    expect(values(one('lora init from "dog \\"v2\\".safetensors"').lora.init)).toEqual({
      kind: 'file',
      path: { value: 'dog "v2".safetensors' },
    });
  });

  test('loss', () => {
    expect(one('loss mse').loss.prediction.value).toBeUndefined();
    expect(one('loss mse v_prediction').loss.prediction.value).toBe('v_prediction');
    expect(one('loss mse epsilon').loss.prediction.value).toBe('epsilon');
    expect(one('loss prior_weight 0').loss.priorWeight.value).toBe(0);
  });

  test('optimizer: options in any order, each optional', () => {
    const o = one('optimizer adamw weight_decay 0 lr 3e-4').optimizer;
    expect(values(o)).toEqual({
      kind: 'adamw',
      lr: { value: 3e-4 },
      betas: [{ value: 0.9 }, { value: 0.999 }],
      eps: { value: 1e-8 },
      weightDecay: { value: 0 },
    });
    expect(one('optimizer adamw').optimizer.lr.value).toBe(1e-4);
    expect(one('optimizer adamw betas 0 0.5').optimizer.betas.map((b) => b.value)).toEqual([0, 0.5]);
  });

  test('emit: any subset, canonical order', () => {
    expect(one('emit infer train').emit.value).toEqual(['train', 'infer']);
    expect(parse('hollow preset "39.2%"\nemit precompute').emit.value).toEqual(['precompute']);
  });

  test('seed and train', () => {
    expect(one('seed 1234').seed.value).toBe(1234);
    const t = one('train checkpoint_every 100 batch 2 steps 800').train;
    expect([t.steps.value, t.batch.value, t.checkpointEvery.value]).toEqual([800, 2, 100]);
  });

  test('comments, blank lines, tabs, CRLF, no final newline', () => {
    const s = parse('# header\r\n\r\n\tlora rank 4   # trailing\r\n  # indented comment\r\nhollow none');
    expect(s.lora.rank).toEqual({ value: 4, pos: { line: 3, col: 12, length: 1 } });
    expect(s.hollow.kind).toBe('none');
  });

  test('keyword prefixes lex as identifiers (no "eps" inside "epsilon", no "train" in "trainer")', () => {
    expect(one('loss mse epsilon').loss.prediction.value).toBe('epsilon');
    expect(values(one('shape trainer [1]').shapes)).toEqual([{ input: { value: 'trainer' }, dims: [{ value: 1 }] }]);
  });
});

describe('SpecError', () => {
  test('format renders location, source line, caret and hint; a tab is kept in the caret line', () => {
    const e = parseError('hollow none\n\tlora rnak 3\n');
    expect(e).toBeInstanceOf(SpecError);
    expect([e.file, e.line, e.col, e.suggestion]).toEqual(['test.hollow', 2, 7, 'did you mean "rank"?']);
    expect(e.message).toBe('unknown keyword "rnak" after "lora"; expected "rank", "alpha", "targets", "init" or "infer"');
    expect(e.format()).toBe(
      [
        'test.hollow:2:7: error: unknown keyword "rnak" after "lora"; expected "rank", "alpha", "targets", "init" or "infer"',
        '\tlora rnak 3',
        '\t     ^~~~',
        '  hint: did you mean "rank"?',
      ].join('\n'),
    );
  });

  test('several errors are collected in source order, one per broken line', () => {
    const e = parseError('lora rank 0\nhollow nope\nlora alpha -1\nbogus\n');
    expect(e.all.map((x) => [x.line, x.message])).toEqual([
      [1, 'lora rank must be a positive integer, not 0'],
      [2, 'unknown keyword "nope" after "hollow"; expected "preset", "blocks", "after" or "none"'],
      [3, 'lora alpha must be > 0, not -1'],
      [
        4,
        'unknown statement "bogus"; a statement starts with "model", "hollow", "shape", "lora", "loss", "optimizer", "emit", "seed", "train", "base", "recompute", "chunks" or "gradients"',
      ],
    ]);
    expect(e.all[0]).toBe(e);
  });

  test('specErrorAt points at an AST node, or at the whole file for a defaulted value', () => {
    const spec: Spec = parse('hollow none\nlora rank 4\n');
    const at = specErrorAt(spec, spec.lora.rank, 'rank 4 is too small for this', 'try 8');
    expect(at.format()).toBe(
      ['test.hollow:2:11: error: rank 4 is too small for this', 'lora rank 4', '          ^', '  hint: try 8'].join('\n'),
    );
    expect(specErrorAt(spec, spec.seed, 'seed is odd').format()).toBe('test.hollow: error: seed is odd');
  });
});

describe('globs', () => {
  const path = 'down_blocks.0.attentions.0.transformer_blocks.0';
  test.each([
    ['attn1.to_q', `${path}.attn1.to_q`, true],
    ['attn1.to_q', `${path}.attn1.to_qx`, false],
    ['to_q', `${path}.xattn1.to_q`, true],
    ['attn1.to_q', `${path}.xattn1.to_q`, false],
    ['attn2.*', `${path}.attn2.to_k`, true],
    ['attn2.*', `${path}.attn2.to_out.0`, true],
    ['attn2.**', `${path}.attn2.to_out.0`, true],
    ['attn*.to_*', `${path}.attn1.to_v`, true],
    ['resnets.*.conv*', 'up_blocks.1.resnets.2.conv_shortcut', true],
    ['down_blocks.*.resnets.0.conv1', 'down_blocks.3.resnets.0.conv1', true],
    ['down_blocks.*.resnets.0.conv1', 'up_blocks.3.resnets.0.conv1', false],
    ['to-q', 'a.to-q', true],
  ])('%s ~ %s: %s', (glob, module, expected) => {
    expect(globProblem(glob)).toBeUndefined();
    expect(matchesGlob(glob, module)).toBe(expected);
  });

  test.each([
    ['', 'it is empty'],
    ['attn1..to_q', 'it has an empty path segment (a leading, trailing or doubled ".")'],
    ['.to_q', 'it has an empty path segment (a leading, trailing or doubled ".")'],
    ['attn1/to_q', 'a glob may only contain letters, digits, "_", "-", "*" and "."'],
    ['attn**', '"**" must be a whole segment, as in "attn2.**"'],
  ])('%j is rejected', (glob, problem) => {
    expect(globProblem(glob)).toBe(problem);
  });
});

describe('checkSpec against a hand-made sd15 model', () => {
  const facts = toySd15();
  const check = (text: string) => checkSpec(parse(text), facts);
  const checkError = (text: string): SpecError => {
    try {
      check(text);
    } catch (e) {
      if (e instanceof SpecError) return e;
      throw e;
    }
    throw new Error('expected a SpecError');
  };

  test('resolves the 39.2% preset, default targets, family defaults', () => {
    const r = check('hollow preset "39.2%"\nshape sample [1, 4, 32, 32]\nlora rank 8 alpha 4\n');
    expect(r.family).toBe('sd15');
    expect(r.hollow).toEqual({ kind: 'preset', hollowed: ['3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4'] });
    expect(r.shapes).toEqual({ sample: [1, 4, 32, 32] });
    expect(r.lora.scale).toBe(0.5);
    expect(r.lora.init).toEqual({ kind: 'gaussian', std: 1 / 8 });
    expect(r.loss).toEqual({ kind: 'mse', prediction: 'epsilon', priorWeight: 1 });
    // 6 down + 1 mid + 9 up attentions, 8 projections each.
    expect(r.lora.targets).toHaveLength(16 * 8);
    expect(r.lora.targets.every((t) => t.kind === 'linear')).toBe(true);
    const mid = r.lora.targets.filter((t) => t.module.startsWith('mid_block.'));
    expect(mid.map((t) => t.hollowed)).toEqual(Array(8).fill(true));
    expect(r.lora.targets.find((t) => t.module.startsWith('down_blocks.0.'))).toEqual({
      module: 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q',
      in: 32,
      out: 32,
      kind: 'linear',
      glob: 'attn1.to_q',
      hollowed: false,
    });
  });

  test('ranges expand in graph order; overlapping items are merged', () => {
    expect(check('hollow blocks 4-2 .. 6-1, 5-1').hollow.hollowed).toEqual(['4-2', '5-1', '5-2', '6-1']);
  });

  test('hollow after: by id, by layer module path, by a deeper path, by a path covering a block', () => {
    const p392 = check('hollow preset "39.2%"').hollow.hollowed;
    expect(check('hollow after 3-2').hollow.hollowed).toEqual(p392);
    expect(check('hollow after down_blocks.2.attentions.1').hollow.hollowed).toEqual(p392);
    expect(check('hollow after down_blocks.2.attentions.1.transformer_blocks.0').hollow.hollowed).toEqual(p392);
    // down_blocks.1.resnets.1 is layer 2-2, so 2-3 is the first hollowed (the 84.3% cut) ...
    expect(check('hollow after down_blocks.1.resnets.1').hollow.hollowed[0]).toBe('2-3');
    // ... while down_blocks.1 covers 2-1..2-3 and keeps all of them (the 73.3% cut).
    expect(check('hollow after down_blocks.1').hollow.hollowed[0]).toBe('3-1');
  });

  test('hollow none hollows nothing and targets all layers', () => {
    const r = check('hollow none\nlora targets "attn2.to_k"');
    expect(r.hollow).toEqual({ kind: 'none', hollowed: [] });
    expect(r.lora.targets.map((t) => [t.in, t.out])).toContainEqual([96, 32]);
    expect(r.emit).toEqual(['train', 'grads', 'infer']);
  });

  test('conv globs select resnet convs', () => {
    const r = check('hollow none\nlora targets "down_blocks.0.resnets.*.conv*"\nlora rank 4');
    expect(r.lora.targets.map((t) => t.module)).toEqual([
      'down_blocks.0.resnets.0.conv1',
      'down_blocks.0.resnets.0.conv2',
      'down_blocks.0.resnets.1.conv1',
      'down_blocks.0.resnets.1.conv2',
    ]);
    expect(r.lora.targets[0]!.kind).toBe('conv');
  });

  test('a glob listed first claims the module', () => {
    const r = check('hollow none\nlora targets "attn1.*" "to_q"');
    const q = r.lora.targets.find((t) => t.module.endsWith('attn1.to_q'))!;
    expect(q.glob).toBe('attn1.*');
    expect(r.lora.targets.find((t) => t.module.endsWith('attn2.to_q'))!.glob).toBe('to_q');
  });

  test('base int8 and fp16 pass through to the resolved spec (default fp32)', () => {
    expect(check('hollow none\nbase int8').base).toBe('int8');
    expect(check('hollow none\nbase fp16').base).toBe('fp16');
    expect(check('hollow none').base).toBe('fp32');
  });

  test('chunks sizes pass through in bytes; a size not given stays absent', () => {
    expect(check('hollow none\nchunks attention 1.5MiB infer_attention 1GiB feed_forward 512KiB').chunks).toEqual({
      attention: 1.5 * 2 ** 20,
      infer_attention: 2 ** 30,
      feed_forward: 512 * 2 ** 10,
    });
    expect(check('hollow none').chunks).toEqual({});
  });

  test('recompute blocks passes through to the resolved spec and the training settings (default cheap)', () => {
    expect(check('hollow none\nrecompute blocks').recompute).toBe('blocks');
    expect(check('hollow none\nrecompute cheap').recompute).toBe('cheap');
    expect(check('hollow none').recompute).toBe('cheap');
    expect(trainingSettingsOf(check('hollow none\nrecompute blocks')).recompute).toBe('blocks');
  });

  test('v_prediction and an explicit model pass through', () => {
    const r = check('model sd15\nhollow none\nloss mse v_prediction\nseed 7\ntrain steps 10 batch 2');
    expect(r.loss.prediction).toBe('v_prediction');
    expect([r.seed, r.train]).toEqual([7, { steps: 10, batch: 2, checkpointEvery: 10 }]);
  });

  test('collects every semantic error, each at its statement', () => {
    const e = checkError('model sd21\nhollow blocks 4-3\nlora targets "attn3.to_q"\nshape latent [1]\n');
    expect(e.all.map((x) => `${x.line}:${x.col} ${x.message}`)).toEqual([
      '1:7 "model sd21" does not match the graph, which is an sd15 UNet',
      '2:15 unknown block "4-3"; this model has no such layer',
      '3:14 lora target "attn3.to_q" matches no layer of this model',
      '4:7 the model has no input "latent"',
    ]);
  });

  test('a default target that matches nothing is a whole-file error', () => {
    const bare = { ...facts, loraCandidates: facts.loraCandidates.filter((c) => !c.module.endsWith('attn1.to_q')) };
    try {
      checkSpec(parse('hollow none'), bare);
      throw new Error('expected a SpecError');
    } catch (e) {
      expect((e as SpecError).format()).toBe(
        'test.hollow: error: default lora target "attn1.to_q" matches no layer of this model\n  hint: set "lora targets" explicitly',
      );
    }
  });
});
