/**
 * The order training visits the store in. Epoch e is a permutation of the store's records drawn
 * from the stream `train/epoch/<e>` of the seed (Fisher-Yates); step s takes positions
 * (s-1)·B .. s·B-1 of the epochs laid end to end. The data a step sees is therefore a function of
 * (seed, step, store), which is what lets a checkpoint resume bit for bit.
 */
import { HollowcError } from '../../compiler/errors';
import { Rng } from '../../models/random';

/** Records of epoch `epoch`, shuffled by the stream `train/epoch/<epoch>` of the seed. */
export function epochPermutation(seed: number, epoch: number, records: number): Uint32Array {
  const perm = new Uint32Array(records);
  for (let i = 0; i < records; i++) perm[i] = i;
  const rng = new Rng(seed, `train/epoch/${epoch}`);
  for (let i = records - 1; i > 0; i--) {
    const j = rng.next() % (i + 1);
    const x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  return perm;
}

/** The record indices step `step` (1-based) trains on. */
export class SampleOrder {
  private cachedEpoch = -1;
  private perm: Uint32Array = new Uint32Array(0);

  constructor(
    readonly seed: number,
    readonly records: number,
    readonly batch: number,
  ) {
    if (records <= 0) throw new HollowcError('the store is empty: run hollowc precompute first');
  }

  private at(position: number): number {
    const epoch = Math.floor(position / this.records);
    if (epoch !== this.cachedEpoch) {
      this.perm = epochPermutation(this.seed, epoch, this.records);
      this.cachedEpoch = epoch;
    }
    return this.perm[position % this.records];
  }

  batchFor(step: number): number[] {
    const start = (step - 1) * this.batch;
    return Array.from({ length: this.batch }, (_, k) => this.at(start + k));
  }

  positionAfter(step: number): { epoch: number; offset: number } {
    const p = step * this.batch;
    return { epoch: Math.floor(p / this.records), offset: p % this.records };
  }
}
