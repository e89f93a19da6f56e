import * as fs from 'fs';
import * as path from 'path';
import {
  FAMILIES,
  PRESETS,
  UNetConfig,
  buildLayout,
  cutFromHollowedIds,
  cutParamCounts,
  describeCut,
  getModelVariant,
  ownerOfModulePath,
  paramCounts,
  parseUNetConfig,
  presetCut,
  presetsFor,
  resolveConfig,
  unetParameters,
  validCuts,
} from '../models';

const SD_IDS = [
  '1-1',
  '1-2',
  '1-3',
  '2-1',
  '2-2',
  '2-3',
  '3-1',
  '3-2',
  '3-3',
  '4-1',
  '4-2',
  '5-1',
  '5-2',
  '6-1',
  '6-2',
  '6-3',
  '6-4',
  '7-1',
  '7-2',
  '7-3',
  '7-4',
  '8-1',
  '8-2',
  '8-3',
  '8-4',
  '9-1',
  '9-2',
  '9-3',
];
const SDXL_IDS = [
  '1-1',
  '1-2',
  '1-3',
  '2-1',
  '2-2',
  '2-3',
  '3-1',
  '3-2',
  '4-1',
  '4-2',
  '5-1',
  '5-2',
  '5-3',
  '5-4',
  '6-1',
  '6-2',
  '6-3',
  '6-4',
  '7-1',
  '7-2',
  '7-3',
];

// The sd15-tiny fixture (/work/shared/fixtures/diffusers/sd15-tiny/manifest.json, exported with
// diffusers 0.21.4 / torch 1.13): the numbers these tests need, copied so they run without
// ../shared. The last test re-reads the manifest when it is there.
const FIXTURE = {
  parameter_count: 1_390_804,
  initializer_count: 686,
  hollowed_modules: ['down_blocks.2.downsamplers.0', 'down_blocks.3', 'mid_block', 'up_blocks.0'],
  hollowed_parameter_count: 482_352,
  hollow_activation_shape: [1, 48, 4, 4],
  sample_shape: [1, 4, 16, 16],
  conv_shortcut_modules: [
    'down_blocks.1.resnets.0',
    'down_blocks.2.resnets.0',
    'up_blocks.0.resnets.0',
    'up_blocks.0.resnets.1',
    'up_blocks.0.resnets.2',
    'up_blocks.1.resnets.0',
    'up_blocks.1.resnets.1',
    'up_blocks.1.resnets.2',
    'up_blocks.2.resnets.0',
    'up_blocks.2.resnets.1',
    'up_blocks.2.resnets.2',
    'up_blocks.3.resnets.0',
    'up_blocks.3.resnets.1',
    'up_blocks.3.resnets.2',
  ],
};

// The published unet/config.json files (runwayml/stable-diffusion-v1-5,
// stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0), down/up types
// abbreviated into constants.
const SD_DOWN = ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'];
const SD_UP = ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'];
const SD15_JSON = {
  _class_name: 'UNet2DConditionModel',
  _diffusers_version: '0.6.0',
  act_fn: 'silu',
  attention_head_dim: 8,
  block_out_channels: [320, 640, 1280, 1280],
  center_input_sample: false,
  cross_attention_dim: 768,
  down_block_types: SD_DOWN,
  downsample_padding: 1,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  out_channels: 4,
  sample_size: 64,
  up_block_types: SD_UP,
};
const SD21_JSON = {
  _class_name: 'UNet2DConditionModel',
  _diffusers_version: '0.10.0.dev0',
  act_fn: 'silu',
  attention_head_dim: [5, 10, 20, 20],
  block_out_channels: [320, 640, 1280, 1280],
  center_input_sample: false,
  cross_attention_dim: 1024,
  down_block_types: SD_DOWN,
  downsample_padding: 1,
  dual_cross_attention: false,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  num_class_embeds: null,
  only_cross_attention: false,
  out_channels: 4,
  sample_size: 96,
  up_block_types: SD_UP,
  upcast_attention: true,
  use_linear_projection: true,
};
const SDXL_JSON = {
  _class_name: 'UNet2DConditionModel',
  _diffusers_version: '0.19.0.dev0',
  act_fn: 'silu',
  addition_embed_type: 'text_time',
  addition_embed_type_num_heads: 64,
  addition_time_embed_dim: 256,
  attention_head_dim: [5, 10, 20],
  block_out_channels: [320, 640, 1280],
  center_input_sample: false,
  class_embed_type: null,
  class_embeddings_concat: false,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
  cross_attention_dim: 2048,
  cross_attention_norm: null,
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  downsample_padding: 1,
  dual_cross_attention: false,
  encoder_hid_dim: null,
  encoder_hid_dim_type: null,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_only_cross_attention: null,
  mid_block_scale_factor: 1,
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  norm_eps: 1e-5,
  norm_num_groups: 32,
  num_attention_heads: null,
  num_class_embeds: null,
  only_cross_attention: false,
  out_channels: 4,
  projection_class_embeddings_input_dim: 2816,
  resnet_out_scale_factor: 1.0,
  resnet_skip_time_act: false,
  resnet_time_scale_shift: 'default',
  sample_size: 128,
  time_cond_proj_dim: null,
  time_embedding_act_fn: null,
  time_embedding_dim: null,
  time_embedding_type: 'positional',
  timestep_post_act: null,
  transformer_layers_per_block: [1, 2, 10],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  upcast_attention: null,
  use_linear_projection: true,
};

const layoutOf = (cfg: UNetConfig) => buildLayout(cfg);
const sd15 = layoutOf(FAMILIES.sd15.full.config);
const sd21 = layoutOf(FAMILIES.sd21.full.config);
const sdxl = layoutOf(FAMILIES.sdxl.full.config);
const sd15Tiny = layoutOf(FAMILIES.sd15.tiny.config);

describe('parameter counts', () => {
  test.each([
    ['sd15', sd15, 859_520_964],
    ['sd21', sd21, 865_910_724],
    ['sdxl', sdxl, 2_567_463_684],
    ['sd15-tiny', sd15Tiny, FIXTURE.parameter_count],
  ])('%s has exactly the PyTorch parameter count', (_name, layout, expected) => {
    const counts = paramCounts(layout);
    expect(counts.total).toBe(expected);
    // Per-layer and per-module sums partition the total.
    const byLayer = [...counts.byLayer.values()].reduce((a, b) => a + b, 0);
    const byModule = [...counts.byModule.values()].reduce((a, b) => a + b, 0);
    expect(byLayer).toBe(expected);
    expect(byModule).toBe(expected);
    const tensors = unetParameters(layout);
    expect(tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0)).toBe(expected);
    expect(new Set(tensors.map((t) => t.name)).size).toBe(tensors.length);
  });

  test('tiny variants keep their family structure and stay small', () => {
    for (const f of ['sd15', 'sd21', 'sdxl'] as const) {
      const total = paramCounts(layoutOf(FAMILIES[f].tiny.config)).total;
      expect(total).toBeLessThan(3_000_000);
    }
  });

  test('per-module counts are keyed by diffusers module path', () => {
    const c = paramCounts(sd15);
    // conv_in: 4*320*9 + 320
    expect(c.byModule.get('conv_in')).toBe(11_840);
    // Downsample2D conv: 1280*1280*9 + 1280
    expect(c.byModule.get('down_blocks.2.downsamplers.0')).toBe(14_746_880);
    expect(c.byLayer.get('3-3')).toBe(14_746_880);
    expect(c.byLayer.get('5-1')).toBe(c.byModule.get('mid_block.resnets.0')! + c.byModule.get('mid_block.attentions.0')!);
    // SD 1.5 projects with 1x1 convs, SD 2.1 with Linear: same count, different shapes.
    const names = (l: typeof sd15) => new Map(unetParameters(l).map((t) => [t.name, t.shape]));
    expect(names(sd15).get('down_blocks.0.attentions.0.proj_in.weight')).toEqual([320, 320, 1, 1]);
    expect(names(sd21).get('down_blocks.0.attentions.0.proj_in.weight')).toEqual([320, 320]);
    expect(names(sd21).get('down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight')).toEqual([320, 1024]);
    expect(names(sdxl).get('add_embedding.linear_1.weight')).toEqual([1280, 2816]);
  });
});

describe('SD 2.1 presets (the paper, exact counts)', () => {
  const rows: [string, string, string[], number][] = [
    ['11.5%', '4-2', ['5-1', '5-2'], 97_693_440],
    ['20.8%', '4-1', ['4-2', '5-1', '5-2', '6-1'], 177_996_800],
    ['30.1%', '3-3', ['4-1', '4-2', '5-1', '5-2', '6-1', '6-2'], 258_300_160],
    ['39.2%', '3-2', ['3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4'], 336_958_720],
    ['56.6%', '3-1', SD_IDS.slice(SD_IDS.indexOf('3-2'), SD_IDS.indexOf('7-1') + 1), 488_094_720],
    ['73.3%', '2-3', SD_IDS.slice(SD_IDS.indexOf('3-1'), SD_IDS.indexOf('7-2') + 1), 632_677_120],
    ['84.3%', '2-2', SD_IDS.slice(SD_IDS.indexOf('2-3'), SD_IDS.indexOf('7-4') + 1), 727_498_880],
  ];

  test.each(rows)('%s removes exactly the listed blocks and parameters', (name, lastKept, hollowed, removed) => {
    const cut = presetCut('sd21', name, sd21);
    expect(cut.lastKeptDown).toBe(lastKept);
    expect(cut.hollowed).toEqual(hollowed);
    expect(cutParamCounts(sd21, cut).hollowed).toBe(removed);
    expect(cutFromHollowedIds(sd21, [...hollowed].reverse())).toEqual(cut);
    // SD 1.5 shares the layout, so the same preset names the same blocks.
    expect(presetCut('sd15', name, sd15).hollowed).toEqual(hollowed);
  });

  test('39.2% resumes at 7-1 on the 6-4 upsampler output', () => {
    const cut = presetCut('sd21', '39.2%', sd21);
    expect(cut.firstKeptUp).toBe('7-1');
    expect(cut.lastHollowed).toBe('6-4');
    expect(cut.skipIndex).toBe(8);
    expect([cut.hollowChannels, cut.hollowScale]).toEqual([1280, 4]);
    expect(cut.hollowedBlocks).toEqual(['down_blocks.2.downsamplers.0', 'down_blocks.3', 'mid_block', 'up_blocks.0']);
    expect(describeCut(sd21, cut)).toBe('hollow 3-3 .. 6-4 (keeps down to 3-2, resumes at 7-1)');
  });

  test('preset names: accepted spellings and a clear error', () => {
    expect(presetCut('sd15', 'sd15-39.2%').lastKeptDown).toBe('3-2');
    expect(presetCut('sd15', '39.2').lastKeptDown).toBe('3-2');
    expect(() => presetCut('sd21', '40%')).toThrow(
      'unknown hollow preset "40%" for sd21; valid presets for sd21: 11.5%, 20.8%, 30.1%, 39.2%, 56.6%, 73.3%, 84.3%',
    );
    expect(() => presetCut('sdxl', '39.2%')).toThrow(/is a preset for sd15\/sd21.*valid presets for sdxl: sdxl-mid/);
    expect(PRESETS.map((p) => p.name)).toEqual(['11.5%', '20.8%', '30.1%', '39.2%', '56.6%', '73.3%', '84.3%', 'sdxl-mid']);
  });
});

describe('sd15-tiny fixture', () => {
  test('its 39.2% cut matches the manifest', () => {
    const cut = presetCut('sd15', '39.2%', sd15Tiny);
    expect(cut.hollowedBlocks).toEqual(FIXTURE.hollowed_modules);
    expect(cutParamCounts(sd15Tiny, cut).hollowed).toBe(FIXTURE.hollowed_parameter_count);
    const [b, , h, w] = FIXTURE.sample_shape;
    expect([b, cut.hollowChannels, h / cut.hollowScale, w / cut.hollowScale]).toEqual(FIXTURE.hollow_activation_shape);
  });

  test('conv_shortcut layers and parameter tensors match the export', () => {
    const shortcuts = sd15Tiny.layers
      .flatMap((l) => l.specs)
      .filter((s) => s.kind === 'resnet' && s.convShortcut)
      .map((s) => s.path);
    expect(shortcuts).toEqual(FIXTURE.conv_shortcut_modules);
    // Every initializer of the torch export is a parameter (404 under their own names, 160
    // transposed MatMul weights, 61 GroupNorm weight/bias pairs folded into Mul/Add).
    const tensors = unetParameters(sd15Tiny);
    expect(tensors.length).toBe(FIXTURE.initializer_count);
  });

  // The copy in tests/fixtures (always present), not ../shared, which a checkout may lack.
  const manifestPath = path.join(__dirname, 'fixtures/diffusers/sd15-tiny/manifest.json');
  test('the fixture manifest says the same', () => {
    const m = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
    expect(m.model.parameter_count).toBe(FIXTURE.parameter_count);
    expect(m.hollow.hollowed_modules).toEqual(FIXTURE.hollowed_modules);
    expect(m.hollow.hollowed_parameter_count).toBe(FIXTURE.hollowed_parameter_count);
    expect(m.model.conv_shortcut_modules).toEqual(FIXTURE.conv_shortcut_modules);
    expect(parseUNetConfig(m.model.config_args, 'manifest config_args')).toEqual(FAMILIES.sd15.tiny.config);
    expect(parseUNetConfig(m.model.config_full, 'manifest config_full')).toEqual(FAMILIES.sd15.tiny.config);
  });
});

describe('layout', () => {
  test('SD: 28 layers 1-1..9-3, stem, 12 skips consumed last-first', () => {
    expect(sd15.layers.map((l) => l.id)).toEqual(SD_IDS);
    expect(sd15.stem.map((s) => s.id)).toEqual(['conv_in', 'time_embedding', 'conv_norm_out', 'conv_out']);
    expect(sd15.skips).toHaveLength(12);
    expect(sd15.skips[0]).toEqual({ index: 0, producer: 'conv_in', consumer: '9-3', channels: 320, scale: 1 });
    expect(sd15.skips[11]).toEqual({ index: 11, producer: '4-2', consumer: '6-1', channels: 1280, scale: 8 });
    expect(sd15.skips.map((s) => s.consumer)).toEqual(['9-3', '9-2', '9-1', '8-3', '8-2', '8-1', '7-3', '7-2', '7-1', '6-3', '6-2', '6-1']);
    const l33 = sd15.layers.find((l) => l.id === '3-3')!;
    expect(l33).toMatchObject({ stage: 'down', role: 'downsampler', modules: ['down_blocks.2.downsamplers.0'], emitsSkip: 9 });
    expect(sd15.layers.find((l) => l.id === '1-1')!.modules).toEqual(['down_blocks.0.resnets.0', 'down_blocks.0.attentions.0']);
    expect(sd15.layers.find((l) => l.id === '4-1')!.modules).toEqual(['down_blocks.3.resnets.0']);
    expect(sd15.layers.find((l) => l.id === '5-1')!.modules).toEqual(['mid_block.resnets.0', 'mid_block.attentions.0']);
    expect(sd15.layers.find((l) => l.id === '5-2')!.modules).toEqual(['mid_block.resnets.1']);
    expect(sd15.layers.find((l) => l.id === '6-4')!.modules).toEqual(['up_blocks.0.upsamplers.0']);
    expect(sd15.layers.find((l) => l.id === '7-3')).toMatchObject({
      modules: ['up_blocks.1.resnets.2', 'up_blocks.1.attentions.2'],
      consumesSkip: 6,
      inChannels: 1280,
      skipChannels: 640,
      outChannels: 1280,
    });
  });

  test('SDXL: 3 down / mid 4 / 3 up, 9 skips, add_embedding in the stem', () => {
    expect(sdxl.layers.map((l) => l.id)).toEqual(SDXL_IDS);
    expect(sdxl.skips).toHaveLength(9);
    expect(sdxl.stem.map((s) => s.id)).toContain('add_embedding');
    expect(sdxl.layers.find((l) => l.id === '1-1')!.modules).toEqual(['down_blocks.0.resnets.0']);
    expect(sdxl.layers.find((l) => l.id === '5-4')!.modules).toEqual(['up_blocks.0.upsamplers.0']);
    const midAttn = sdxl.layers.find((l) => l.id === '4-1')!.specs[1];
    expect(midAttn).toMatchObject({ kind: 'transformer', layers: 10, heads: 20, headDim: 64 });
    const cut = presetCut('sdxl', 'sdxl-mid', sdxl);
    expect(cut.hollowedBlocks).toEqual(['mid_block']);
    expect(cut.firstKeptUp).toBe('5-1');
    // The paper's "~410M parameters".
    expect(cutParamCounts(sdxl, cut).hollowed).toBe(413_117_440);
  });

  test('resolveConfig: legacy attention_head_dim means heads; up blocks mirror down blocks', () => {
    const r15 = resolveConfig(FAMILIES.sd15.full.config);
    expect(r15.numHeads).toEqual([8, 8, 8, 8]);
    expect(r15.headDims).toEqual([40, 80, 160, 160]);
    const r21 = resolveConfig(FAMILIES.sd21.full.config);
    expect(r21.numHeads).toEqual([5, 10, 20, 20]);
    expect(r21.headDims).toEqual([64, 64, 64, 64]);
    const rxl = resolveConfig(FAMILIES.sdxl.full.config);
    expect(rxl.transformerLayersPerBlock).toEqual([1, 2, 10]);
    expect(rxl.up.map((u) => u.transformerLayers)).toEqual([10, 2, 1]);
    expect(rxl.up.map((u) => u.resnets)).toEqual([3, 3, 3]);
    expect(rxl.timeEmbedDim).toBe(1280);
    expect(rxl.addition).toEqual({ type: 'text_time', timeEmbedDim: 256, inputDim: 2816 });
  });

  test('ownerOfModulePath maps parameter names and scopes to layer ids', () => {
    expect(ownerOfModulePath(sd15, 'up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_q.weight')).toBe('7-3');
    expect(ownerOfModulePath(sd15, 'mid_block.attentions.0')).toBe('5-1');
    expect(ownerOfModulePath(sd15, 'time_embedding.linear_1.bias')).toBe('time_embedding');
    expect(ownerOfModulePath(sd15, 'down_blocks.0.resnets.10.conv1.weight')).toBeUndefined();
  });
});

describe('cuts', () => {
  test('one cut per down layer, nested, smallest first', () => {
    const cuts = validCuts(sd21);
    expect(cuts.map((c) => c.lastKeptDown)).toEqual(SD_IDS.slice(0, 11).reverse());
    expect(cuts[0].hollowed).toEqual(['5-1', '5-2']);
    for (let i = 1; i < cuts.length; i++) {
      expect(cuts[i].hollowed.length).toBeGreaterThan(cuts[i - 1].hollowed.length);
      expect(cuts[i].hollowed).toEqual(expect.arrayContaining([...cuts[i - 1].hollowed]));
    }
    // The largest hollow keeps 1-1 and the two up layers consuming skips 0 and 1.
    const largest = cuts[cuts.length - 1];
    expect([largest.hollowed[0], largest.lastHollowed, largest.firstKeptUp]).toEqual(['1-2', '9-1', '9-2']);
    expect(validCuts(sdxl)).toHaveLength(8);
  });

  test('an upsampler is hollowed only after all its resnets', () => {
    const cut = cutFromHollowedIds(sd21, ['3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4']);
    expect(cut.firstKeptUp).toBe('7-1');
    expect(presetCut('sd21', '30.1%', sd21).hollowed).not.toContain('6-4');
  });

  test('a non-contiguous hollow names the blocks to add or remove', () => {
    expect(() => cutFromHollowedIds(sd21, ['3-3', '5-1', '5-2'])).toThrow(
      'hollow 3-3 5-1 5-2 is not a valid cut: a hollow must be one contiguous run of blocks around the mid block, ' +
        'symmetric across the skip connections; to keep every block you listed hollowed, add 4-1 4-2 6-1 6-2 6-3 6-4 ' +
        '(hollow 3-3 .. 6-4, last kept down layer 3-2); or remove 3-3 (hollow 5-1 5-2, last kept down layer 4-2)',
    );
  });

  test('a non-symmetric hollow names the missing mirror blocks', () => {
    expect(() => cutFromHollowedIds(sd21, ['4-1', '4-2', '5-1', '5-2', '6-1'])).toThrow(
      /add 6-2 \(hollow 4-1 \.\. 6-2, last kept down layer 3-3\); or remove 4-1 \(hollow 4-2 \.\. 6-1/,
    );
    expect(() => cutFromHollowedIds(sd21, ['6-1'])).toThrow(/add 4-2 5-1 5-2 \(/);
  });

  test('unknown, unhollowable and empty hollows', () => {
    expect(() => cutFromHollowedIds(sd21, ['5-1', '5-2', '10-1'])).toThrow(/^unknown block id 10-1 \(valid ids: 1-1 1-2 .* 9-3\)$/);
    expect(() => cutFromHollowedIds(sd21, ['1-1', '5-1'])).toThrow(/1-1 can never be hollowed/);
    expect(() => cutFromHollowedIds(sdxl, [])).toThrow(/empty hollow/);
  });
});

describe('parseUNetConfig', () => {
  test.each([
    ['sd15', SD15_JSON],
    ['sd21', SD21_JSON],
    ['sdxl', SDXL_JSON],
  ] as const)('the published %s config.json parses to the family config', (family, json) => {
    expect(parseUNetConfig(json, `${family}/unet/config.json`)).toEqual(FAMILIES[family].full.config);
  });

  test('tiny configs round-trip through JSON', () => {
    for (const name of ['sd15-tiny', 'sd21-tiny', 'sdxl-tiny']) {
      const cfg = getModelVariant(name).variant.config;
      expect(parseUNetConfig(JSON.parse(JSON.stringify(cfg)), name)).toEqual(cfg);
    }
  });

  test('defaults fill missing fields; unknown and _-prefixed fields are ignored', () => {
    const cfg = parseUNetConfig({ _whatever: 1, some_future_field: 'x', dropout: 0.1 }, 'c.json');
    // diffusers' defaults are SD 1.5's layout with cross_attention_dim 1280 instead of 768: every
    // attn2.to_k/to_v grows by 512 input columns (16 transformers, inner widths summing to 12480).
    expect({ ...cfg, cross_attention_dim: 768, sample_size: 64 }).toEqual(FAMILIES.sd15.full.config);
    expect(paramCounts(layoutOf(cfg)).total).toBe(859_520_964 + 2 * 512 * 12_480);
  });

  test('unsupported values name the file, the field and the accepted values', () => {
    const bad = { ...SD15_JSON, up_block_types: ['UpBlock2D', 'AttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'] };
    expect(() => parseUNetConfig(bad, 'unet/config.json')).toThrow(
      'unet/config.json: up_block_types[1]: "AttnUpBlock2D" is not supported (expected CrossAttnUpBlock2D or UpBlock2D)',
    );
    expect(() => parseUNetConfig({ ...SD15_JSON, act_fn: 'gelu' }, 'u.json')).toThrow(
      'u.json: act_fn: "gelu" is not supported (expected silu)',
    );
    expect(() => parseUNetConfig({ ...SD15_JSON, resnet_time_scale_shift: 'scale_shift' }, 'u.json')).toThrow(
      'u.json: resnet_time_scale_shift: "scale_shift" is not supported (expected default)',
    );
    expect(() => parseUNetConfig({ ...SD15_JSON, class_embed_type: 'timestep' }, 'u.json')).toThrow(
      'u.json: class_embed_type: "timestep" is not supported (expected null)',
    );
    expect(() => parseUNetConfig({ ...SD15_JSON, _class_name: 'UNet2DModel' }, 'u.json')).toThrow(
      /_class_name: "UNet2DModel" is not supported/,
    );
  });

  test('wrong types and inconsistent lengths name the field', () => {
    expect(() => parseUNetConfig({ ...SD15_JSON, block_out_channels: 'abc' }, 'u.json')).toThrow(
      'u.json: block_out_channels: expected a non-empty array of positive integers, got "abc"',
    );
    expect(() => parseUNetConfig({ ...SD15_JSON, layers_per_block: 2.5 }, 'u.json')).toThrow(
      'u.json: layers_per_block: expected an integer >= 1, got 2.5',
    );
    expect(() => parseUNetConfig({ ...SD15_JSON, use_linear_projection: 'yes' }, 'u.json')).toThrow(
      'u.json: use_linear_projection: expected true or false, got "yes"',
    );
    expect(() => parseUNetConfig({ ...SD21_JSON, attention_head_dim: [5, 10, 20] }, 'u.json')).toThrow(
      'u.json: attention_head_dim: has 3 entries but there are 4 down blocks (expected one number or 4)',
    );
    expect(() => parseUNetConfig({ ...SD15_JSON, norm_num_groups: 48 }, 'u.json')).toThrow(
      'u.json: block_out_channels[0]: 320 is not divisible by norm_num_groups (48)',
    );
    expect(() => parseUNetConfig({ ...SDXL_JSON, projection_class_embeddings_input_dim: null }, 'u.json')).toThrow(
      /projection_class_embeddings_input_dim: is required when addition_embed_type is "text_time"/,
    );
    expect(() => parseUNetConfig([], 'u.json')).toThrow('u.json: expected a JSON object');
  });
});

describe('families', () => {
  test('training facts', () => {
    expect([FAMILIES.sd15.vaeScalingFactor, FAMILIES.sd21.vaeScalingFactor, FAMILIES.sdxl.vaeScalingFactor]).toEqual([
      0.18215, 0.18215, 0.13025,
    ]);
    expect([FAMILIES.sd15.predictionType, FAMILIES.sd21.predictionType, FAMILIES.sdxl.predictionType]).toEqual([
      'epsilon',
      'v_prediction',
      'epsilon',
    ]);
    for (const f of Object.values(FAMILIES)) {
      expect(f.noiseSchedule).toEqual({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, num_train_timesteps: 1000 });
      // encoder_hidden_states width is the config's cross_attention_dim.
      for (const v of [f.full, f.tiny]) {
        expect(v.shapes.encoder_hidden_states[2]).toBe(v.config.cross_attention_dim);
      }
    }
    expect(FAMILIES.sd15.full.shapes).toEqual({ sample: [1, 4, 64, 64], encoder_hidden_states: [1, 77, 768] });
    expect(FAMILIES.sd21.full.shapes.sample).toEqual([1, 4, 64, 64]);
    expect(FAMILIES.sdxl.full.shapes).toEqual({
      sample: [1, 4, 128, 128],
      encoder_hidden_states: [1, 77, 2048],
      text_embeds: [1, 1280],
      time_ids: [1, 6],
    });
    // text_embeds + 6 time ids * addition_time_embed_dim = projection input, for both sizes.
    for (const v of [FAMILIES.sdxl.full, FAMILIES.sdxl.tiny]) {
      expect(v.shapes.text_embeds![1] + v.shapes.time_ids![1] * v.config.addition_time_embed_dim!).toBe(
        v.config.projection_class_embeddings_input_dim,
      );
    }
    expect(FAMILIES.sd15.tiny.shapes.sample).toEqual(FIXTURE.sample_shape);
  });

  test('lookups list the valid names', () => {
    expect(getModelVariant('sdxl-tiny').family.name).toBe('sdxl');
    expect(() => getModelVariant('sd3')).toThrow(
      'unknown model "sd3" (expected one of: sd15, sd15-tiny, sd21, sd21-tiny, sdxl, sdxl-tiny)',
    );
    expect(presetsFor('sdxl').map((p) => p.name)).toEqual(['sdxl-mid']);
  });
});
