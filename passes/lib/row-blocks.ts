/** How the memory rewrites cut a tensor's rows into blocks (attention query rows, feed-forward tokens, convolution bands). */

/** `n` rows in as few near-equal blocks as keep each block at most `limit` rows (at least one row). */
export function rowBlocks(n: number, limit: number): number[] {
  const count = Math.ceil(n / Math.max(1, Math.floor(limit)));
  const size = Math.floor(n / count);
  return Array.from({ length: count }, (_, i) => size + (i < n % count ? 1 : 0));
}
