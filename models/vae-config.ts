// The SD VAE as a diffusers `AutoencoderKL` config (snake_case: this is vae/config.json), the
// full-size one from the public Hub configs (SD 1.5, 2.1 and SDXL share the architecture and
// differ in sample_size, scaling_factor and force_upcast), a tiny one with the same structure,
// and exact parameter counts from the config alone.

export interface VaeConfig {
  readonly _class_name: 'AutoencoderKL';
  readonly in_channels: number;
  readonly out_channels: number;
  readonly down_block_types: readonly 'DownEncoderBlock2D'[];
  readonly up_block_types: readonly 'UpDecoderBlock2D'[];
  readonly block_out_channels: readonly number[];
  readonly layers_per_block: number;
  readonly act_fn: 'silu';
  readonly latent_channels: number;
  readonly norm_num_groups: number;
  readonly sample_size: number;
  /** latents = vae.encode(image).sample() * scaling_factor */
  readonly scaling_factor: number;
  readonly force_upcast: boolean;
}

/** Every norm of the VAE uses eps 1e-6 (diffusers Encoder/Decoder, resnets and attention alike). */
export const VAE_NORM_EPS = 1e-6;

function vae(
  fields: Pick<
    VaeConfig,
    'block_out_channels' | 'layers_per_block' | 'norm_num_groups' | 'sample_size' | 'scaling_factor' | 'force_upcast'
  >,
): VaeConfig {
  const n = fields.block_out_channels.length;
  return {
    _class_name: 'AutoencoderKL',
    in_channels: 3,
    out_channels: 3,
    down_block_types: new Array(n).fill('DownEncoderBlock2D'),
    up_block_types: new Array(n).fill('UpDecoderBlock2D'),
    act_fn: 'silu',
    latent_channels: 4,
    ...fields,
  };
}

const SD_VAE = { block_out_channels: [128, 256, 512, 512], layers_per_block: 2, norm_num_groups: 32 } as const;
// Four blocks like the real one, so the image-to-latent factor stays 8 (2^(blocks - 1)).
const TINY_VAE = { block_out_channels: [8, 16, 16, 16], layers_per_block: 1, norm_num_groups: 4 } as const;

export const VAE_SD15 = vae({ ...SD_VAE, sample_size: 512, scaling_factor: 0.18215, force_upcast: true });
export const VAE_SD21 = vae({ ...SD_VAE, sample_size: 768, scaling_factor: 0.18215, force_upcast: true });
export const VAE_SDXL = vae({ ...SD_VAE, sample_size: 1024, scaling_factor: 0.13025, force_upcast: true });
export const VAE_SD15_TINY = vae({ ...TINY_VAE, sample_size: 128, scaling_factor: 0.18215, force_upcast: true });
export const VAE_SD21_TINY = vae({ ...TINY_VAE, sample_size: 128, scaling_factor: 0.18215, force_upcast: true });
export const VAE_SDXL_TINY = vae({ ...TINY_VAE, sample_size: 128, scaling_factor: 0.13025, force_upcast: true });

/** Image side / latent side: one stride-2 downsampler per block but the last. */
export function vaeScaleFactor(c: VaeConfig): number {
  return 2 ** (c.block_out_channels.length - 1);
}

const conv = (i: number, o: number, k: number) => i * o * k * k + o;
const norm = (c: number) => 2 * c;
/** ResnetBlock2D without time embedding: norm1, conv1, norm2, conv2, 1x1 shortcut when widths differ. */
const resnet = (i: number, o: number) => norm(i) + conv(i, o, 3) + norm(o) + conv(o, o, 3) + (i !== o ? conv(i, o, 1) : 0);
/** Single-head Attention with group_norm, to_q/k/v and to_out.0, all with bias. */
const attention = (c: number) => norm(c) + 4 * (c * c + c);
const midBlock = (c: number) => 2 * resnet(c, c) + attention(c);

/** diffusers Encoder + quant_conv (what `vae_encoder` holds). */
export function vaeEncoderParameterCount(c: VaeConfig): number {
  const ch = c.block_out_channels;
  let n = conv(c.in_channels, ch[0], 3);
  let prev = ch[0];
  ch.forEach((out, i) => {
    for (let j = 0; j < c.layers_per_block; j++) {
      n += resnet(j === 0 ? prev : out, out);
    }
    if (i < ch.length - 1) n += conv(out, out, 3);
    prev = out;
  });
  const top = ch[ch.length - 1];
  n += midBlock(top) + norm(top) + conv(top, 2 * c.latent_channels, 3);
  return n + conv(2 * c.latent_channels, 2 * c.latent_channels, 1);
}

/** post_quant_conv + diffusers Decoder (what `vae_decoder` holds). */
export function vaeDecoderParameterCount(c: VaeConfig): number {
  const rev = [...c.block_out_channels].reverse();
  let n = conv(c.latent_channels, c.latent_channels, 1) + conv(c.latent_channels, rev[0], 3) + midBlock(rev[0]);
  let prev = rev[0];
  rev.forEach((out, i) => {
    for (let j = 0; j <= c.layers_per_block; j++) n += resnet(j === 0 ? prev : out, out);
    if (i < rev.length - 1) n += conv(out, out, 3);
    prev = out;
  });
  const last = rev[rev.length - 1];
  return n + norm(last) + conv(last, c.out_channels, 3);
}

export function vaeParameterCount(c: VaeConfig): number {
  return vaeEncoderParameterCount(c) + vaeDecoderParameterCount(c);
}
