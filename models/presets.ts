// The paper's hollow presets (Appendix B for SD; Appendix E for SDXL) as data.

import { FAMILIES, FAMILY_NAMES, FamilyName } from './families';
import { Cut, UNetLayout, buildLayout, cutFromHollowedIds } from './layout';

export interface Preset {
  /** '39.2%': the paper's name (its fraction of SD 2.1 parameters, ~0.2 pt above the exact count) */
  readonly name: string;
  readonly families: readonly FamilyName[];
  readonly lastKeptDown: string;
  readonly hollowed: readonly string[];
  readonly note?: string;
}

const SD: readonly FamilyName[] = ['sd15', 'sd21'];

export const PRESETS: readonly Preset[] = [
  { name: '11.5%', families: SD, lastKeptDown: '4-2', hollowed: ['5-1', '5-2'] },
  { name: '20.8%', families: SD, lastKeptDown: '4-1', hollowed: ['4-2', '5-1', '5-2', '6-1'] },
  { name: '30.1%', families: SD, lastKeptDown: '3-3', hollowed: ['4-1', '4-2', '5-1', '5-2', '6-1', '6-2'] },
  {
    name: '39.2%',
    families: SD,
    lastKeptDown: '3-2',
    hollowed: ['3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4'],
    note: "the paper's main result",
  },
  {
    name: '56.6%',
    families: SD,
    lastKeptDown: '3-1',
    hollowed: ['3-2', '3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4', '7-1'],
  },
  {
    name: '73.3%',
    families: SD,
    lastKeptDown: '2-3',
    hollowed: ['3-1', '3-2', '3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4', '7-1', '7-2'],
  },
  {
    name: '84.3%',
    families: SD,
    lastKeptDown: '2-2',
    hollowed: ['2-3', '3-1', '3-2', '3-3', '4-1', '4-2', '5-1', '5-2', '6-1', '6-2', '6-3', '6-4', '7-1', '7-2', '7-3', '7-4'],
  },
  {
    name: 'sdxl-mid',
    families: ['sdxl'],
    lastKeptDown: '3-2',
    hollowed: ['4-1', '4-2'],
    note: "the whole mid_block (~410M parameters), as in the paper's SDXL experiments",
  },
];

export function presetsFor(family: FamilyName): Preset[] {
  return PRESETS.filter((p) => p.families.includes(family));
}

/**
 * Finds a preset by name for a family. Accepts the exact name ('39.2%'), the name without '%'
 * ('39.2') and a family-prefixed name ('sd15-39.2%', as in the sd15-tiny fixture manifest).
 */
export function findPreset(family: FamilyName, name: string): Preset {
  if (!FAMILY_NAMES.includes(family)) {
    throw new Error(`unknown model family "${family}" (expected one of: ${FAMILY_NAMES.join(', ')})`);
  }
  const candidates = [name, name.startsWith(`${family}-`) ? name.slice(family.length + 1) : name];
  const available = presetsFor(family);
  for (const c of candidates) {
    const hit = available.find((p) => p.name === c || p.name === `${c}%`);
    if (hit) return hit;
  }
  const elsewhere = PRESETS.find((p) => candidates.some((c) => p.name === c || p.name === `${c}%`));
  const hint = elsewhere ? ` ("${elsewhere.name}" is a preset for ${elsewhere.families.join('/')})` : '';
  const valid = available.map((p) => p.name).join(', ');
  throw new Error(`unknown hollow preset "${name}" for ${family}${hint}; valid presets for ${family}: ${valid}`);
}

/**
 * The cut of `layout` a preset names. `layout` defaults to the family's full-size layout; tiny
 * variants share its block ids, so their layouts give the same hollowed ids.
 */
export function presetCut(family: FamilyName, name: string, layout: UNetLayout = buildLayout(FAMILIES[family].full.config)): Cut {
  const preset = findPreset(family, name);
  let cut: Cut;
  try {
    cut = cutFromHollowedIds(layout, preset.hollowed);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new Error(`preset "${preset.name}" does not fit this UNet's layout: ${msg}`);
  }
  if (cut.lastKeptDown !== preset.lastKeptDown) {
    throw new Error(
      `preset "${preset.name}": its hollow keeps down layers up to ${cut.lastKeptDown}, ` + `not ${preset.lastKeptDown} as recorded`,
    );
  }
  return cut;
}
