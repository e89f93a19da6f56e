// LoRA target globs.
//
// A glob matches a module path when the path *ends with* the glob, starting on a `.` boundary;
// `*` matches any run of characters, dots included (as in shell globs on plain strings), and
// `**` is accepted as a synonym. So "attn1.to_q" matches
// "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" but not "...attn1.to_qx" or
// "...xattn1.to_q"; "attn2.*" matches attn2.to_q/to_k/to_v and attn2.to_out.0 (the four
// projections, as users write it); "resnets.*.conv*" matches every resnet's conv1, conv2 and
// conv_shortcut.

const SEGMENT = /^(?:\*\*|[A-Za-z0-9_*-]+)$/;

/** Why `glob` is malformed, or undefined when it is fine. */
export function globProblem(glob: string): string | undefined {
  if (glob === '') return 'it is empty';
  if (!/^[A-Za-z0-9_.*-]+$/.test(glob)) return 'a glob may only contain letters, digits, "_", "-", "*" and "."';
  const segments = glob.split('.');
  if (segments.some((s) => s === '')) return 'it has an empty path segment (a leading, trailing or doubled ".")';
  if (!segments.every((s) => SEGMENT.test(s) && (s === '**' || !s.includes('**')))) {
    return '"**" must be a whole segment, as in "attn2.**"';
  }
  return undefined;
}

function segmentRegex(seg: string): string {
  if (seg === '**') return '.+';
  return seg
    .split('*')
    .map((lit) => lit.replace(/[-]/g, '\\-'))
    .join('.*');
}

const cache = new Map<string, RegExp>();

/** Compiles a (well-formed, see globProblem) glob to a RegExp anchored at the path's end. */
export function globRegex(glob: string): RegExp {
  let re = cache.get(glob);
  if (re === undefined) {
    re = new RegExp('(?:^|\\.)' + glob.split('.').map(segmentRegex).join('\\.') + '$');
    cache.set(glob, re);
  }
  return re;
}

export function matchesGlob(glob: string, modulePath: string): boolean {
  return globRegex(glob).test(modulePath);
}
