/**
 * Analysis of full-size graphs, built without weights (describeUNet): the parameter totals and
 * The paper's SD 2.1 preset rows (Appendix B, as exact counts) must come out exactly from the graph's initializer shapes.
 */
import { describeUNet } from '../models/builder';
import { FAMILIES } from '../models/families';
import { presetsFor } from '../models/presets';
import { analyzeUNet } from '../passes/lib/analyze-unet';

const SD21_PRESET_ROWS: Record<string, number> = {
  '11.5%': 97_693_440,
  '20.8%': 177_996_800,
  '30.1%': 258_300_160,
  '39.2%': 336_958_720,
  '56.6%': 488_094_720,
  '73.3%': 632_677_120,
  '84.3%': 727_498_880,
};

test('full SD 2.1: 865,910,724 parameters and every preset row of the paper (exact counts)', () => {
  const a = analyzeUNet(describeUNet(FAMILIES.sd21.full.config).model.graph, 'sd21-full');
  expect(a.family).toBe('sd21');
  expect(a.totalParams).toBe(865_910_724);
  expect(a.skips).toHaveLength(12);
  const rows = Object.fromEntries(
    presetsFor('sd21').map((p) => [p.name, a.cuts.find((c) => c.lastKeptDown === p.lastKeptDown)!.removedParams]),
  );
  expect(rows).toEqual(SD21_PRESET_ROWS);
});

test('full SD 1.5 and SDXL totals; SDXL has 9 skips and its mid-block preset', () => {
  const sd15 = analyzeUNet(describeUNet(FAMILIES.sd15.full.config).model.graph, 'sd15-full');
  expect([sd15.family, sd15.totalParams]).toEqual(['sd15', 859_520_964]);
  const xl = analyzeUNet(describeUNet(FAMILIES.sdxl.full.config).model.graph, 'sdxl-full');
  expect([xl.family, xl.totalParams, xl.skips.length]).toEqual(['sdxl', 2_567_463_684, 9]);
  const mid = xl.cuts.find((c) => c.hollowed.join(' ') === '4-1 4-2')!;
  expect(mid.lastKeptDown).toBe('3-2');
  expect(mid.removedParams).toBe(413_117_440);
  expect(mid.firstKeptUp).toBe('5-1');
  expect(mid.activation.shape).toEqual(['batch', 1280, 'height/4', 'width/4']);
});
