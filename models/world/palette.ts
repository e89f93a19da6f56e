/**
 * The world's colors: the eight corners of the RGB cube, pulled in a little. Few and far apart
 * (the closest two, blue and cyan, are 156 apart in 0..255 RGB), so a scorer can name a color from noisy generated
 * pixels by nearest neighbour.
 */

export const COLOR_NAMES = ['red', 'green', 'blue', 'yellow', 'magenta', 'cyan', 'white', 'black'] as const;
export type ColorName = (typeof COLOR_NAMES)[number];

export type Rgb = readonly [number, number, number];

export const PALETTE: Readonly<Record<ColorName, Rgb>> = {
  red: [220, 40, 40],
  green: [40, 180, 60],
  blue: [40, 60, 230],
  yellow: [235, 215, 40],
  magenta: [210, 50, 200],
  cyan: [30, 215, 215],
  white: [240, 240, 240],
  black: [25, 25, 25],
};

const RGBS: readonly Rgb[] = COLOR_NAMES.map((n) => PALETTE[n]);

export function isColorName(word: string): word is ColorName {
  return (COLOR_NAMES as readonly string[]).includes(word);
}

export function colorDistance(a: Rgb, b: Rgb): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/** Index into COLOR_NAMES of the palette color nearest to (r, g, b), skipping `exclude` (-1: none). */
export function nearestColorIndex(r: number, g: number, b: number, exclude = -1): number {
  let best = -1;
  let bestD = Number.MAX_VALUE;
  for (let i = 0; i < RGBS.length; i++) {
    if (i === exclude) continue;
    const c = RGBS[i];
    const d = (r - c[0]) ** 2 + (g - c[1]) ** 2 + (b - c[2]) ** 2;
    if (d < bestD) {
      bestD = d;
      best = i;
    }
  }
  return best;
}

export function nearestColor(rgb: Rgb): ColorName {
  return COLOR_NAMES[nearestColorIndex(rgb[0], rgb[1], rgb[2])];
}

/** Distance from `color` to the nearest other palette color. */
export function separationOf(color: ColorName): number {
  return Math.min(...COLOR_NAMES.filter((n) => n !== color).map((n) => colorDistance(PALETTE[n], PALETTE[color])));
}
