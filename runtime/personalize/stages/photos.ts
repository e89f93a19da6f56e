/** photos: decoded, centre-cropped, optionally mirrored, VAE-encoded -> run/data/latents/. */
import * as fs from 'fs';
import * as path from 'path';
import { writeLatents } from '../../store/training-data';
import { photoBatch } from '../../text-to-image/image-latents';
import { encodeImages } from '../../text-to-image/vae';
import { Stage, killPoint } from '../stage-runner';
import { StageContext, countFiles } from './context';

export function photosStage(ctx: StageContext): Stage {
  const { s, dirs } = ctx;
  const latents = path.join(dirs.data, 'latents');
  return {
    name: 'photos',
    key: ctx.keys.photos,
    valid: () => countFiles(latents, '.npy') === s.instanceCount,
    clean: () => fs.rmSync(latents, { recursive: true, force: true }),
    run: async () => {
      const batch = photoBatch(s.photos, s.flip);
      const z = await encodeImages(s.folder, batch, { session: s.session, seed: s.seed });
      writeLatents(latents, z);
      killPoint('photos');
      return {
        summary: `VAE-encoded ${s.photos.length} photo(s)${s.flip ? ' and their mirror images' : ''} at ${s.resolution}x${s.resolution} into ${z.shape[0]} latents [${z.shape.slice(1).join(', ')}]`,
      };
    },
  };
}
