// "Did you mean" support: edit distance and closest-first candidate lists.

/** Optimal-string-alignment distance: Levenshtein plus adjacent transpositions, so the common
 * typo `rnak` is one edit from `rank`, not two. */
export function editDistance(a: string, b: string): number {
  const m = a.length;
  const n = b.length;
  const d: number[][] = Array.from({ length: m + 1 }, (_, i) => Array.from({ length: n + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= m; i++) {
    for (let j = 1; j <= n; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        best = Math.min(best, d[i - 2]![j - 2]! + 1);
      }
      d[i]![j] = best;
    }
  }
  return d[m]![n]!;
}

/** Candidates sorted by distance to `word` (stable: ties keep the given order), at most `max`. */
export function closestFirst(word: string, candidates: readonly string[], max = Infinity): string[] {
  const unique = [...new Set(candidates)];
  return unique
    .map((c, i) => ({ c, i, d: editDistance(word, c) }))
    .sort((x, y) => x.d - y.d || x.i - y.i)
    .slice(0, max)
    .map((x) => x.c);
}

/** The closest candidate if it is plausibly a typo of `word`, else undefined. A far-off
 * suggestion is noise, so the allowed distance grows with the word's length. */
export function didYouMean(word: string, candidates: readonly string[]): string | undefined {
  const best = closestFirst(word, candidates, 1)[0];
  if (best === undefined) return undefined;
  const limit = word.length <= 3 ? 1 : word.length <= 6 ? 2 : 3;
  return editDistance(word, best) <= limit ? best : undefined;
}

/** `a`, `a or b`, `a, b or c`. */
export function oneOf(items: readonly string[]): string {
  if (items.length <= 1) return items.join('');
  return items.slice(0, -1).join(', ') + ' or ' + items[items.length - 1];
}
