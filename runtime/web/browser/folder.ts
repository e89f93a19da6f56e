/**
 * A compiled folder (and its store) read over HTTP: everything the page needs is a file, so
 * any static host serves it. The layout is the one `hollowc compile` and `hollowc precompute`
 * write; names come from the artifact contract (compiler/manifest) and the store modules.
 */
import { ArtifactName, CompileManifest, MANIFEST_FILE, MANIFEST_FORMAT } from '../../../compiler/manifest';

import { LORA_INIT_FILE, loraValuesForManifest } from '../../formats/lora-format';
import { parseSafetensors } from '../../formats/safetensors-format';
import type { StoreHeader, StoreRecord } from '../../store/store';
import type { Conditioning } from '../../sampling/conditioning';
import { CONDITIONING_FILE, HEADER_FILE, RECORDS_FILE, STORE_DIR, conditioningOf, decodeRecord } from '../../store/store-format';

/** Where `hollowc precompute` puts the store by default. */

export async function fetchBytes(url: string): Promise<Uint8Array> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function fetchJson<T>(url: string): Promise<T> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${r.statusText}`);
  return (await r.json()) as T;
}

export class WebStore {
  private constructor(
    readonly header: StoreHeader,
    private readonly records: Uint8Array,
    private readonly conds: Map<number, Conditioning>,
  ) {}

  static async load(base: string): Promise<WebStore> {
    const dir = `${base}${STORE_DIR}/`;
    const header = await fetchJson<StoreHeader>(dir + HEADER_FILE);
    const [records, condBytes] = await Promise.all([fetchBytes(dir + RECORDS_FILE), fetchBytes(dir + CONDITIONING_FILE)]);
    const cond = parseSafetensors(condBytes, CONDITIONING_FILE);
    const conds = new Map<number, Conditioning>();
    for (const c of header.conditionings) {
      const found = conditioningOf(cond.tensors, c.id);
      if (!found) throw new Error(`${CONDITIONING_FILE}: conditioning ${c.id} (${c.role}) is missing`);
      conds.set(c.id, found);
    }
    const store = new WebStore(header, records, conds);
    // As `hollowc train` does before its first step: every record's checksum.
    for (let i = 0; i < store.count; i++) decodeRecord(records, header, i);
    return store;
  }

  get count(): number {
    return Math.floor(this.records.byteLength / this.header.recordBytes);
  }

  read(index: number): StoreRecord {
    return decodeRecord(this.records, this.header, index);
  }

  conditioning(id: number): Conditioning {
    const c = this.conds.get(id);
    if (!c) throw new Error(`the store has no conditioning ${id}`);
    return c;
  }

  conditioningFor(role: 'instance' | 'class'): Conditioning {
    const c = this.header.conditionings.find((x) => x.role === role);
    if (!c) throw new Error(`the store has no ${role} conditioning`);
    return this.conditioning(c.id);
  }
}

export interface WebFolder {
  base: string;
  manifest: CompileManifest;
  store: WebStore;
  /** lora-init.safetensors by train.onnx input name. */
  initialLora: Map<string, Float32Array>;
  /** The external weight files (manifest.weights) by name, fetched once for every session. */
  weights: { path: string; data: Uint8Array }[];
  artifact(name: ArtifactName): Promise<Uint8Array>;
}

export async function loadFolder(base: string, onProgress: (what: string) => void = () => {}): Promise<WebFolder> {
  if (!base.endsWith('/')) base += '/';
  onProgress(MANIFEST_FILE);
  const manifest = await fetchJson<CompileManifest>(base + MANIFEST_FILE);
  if (manifest.hollowc !== MANIFEST_FORMAT)
    throw new Error(
      `${MANIFEST_FILE}: format ${JSON.stringify(manifest.hollowc)}, this page reads format ${MANIFEST_FORMAT}: compile again`,
    );
  onProgress('store');
  const store = await WebStore.load(base);
  onProgress(LORA_INIT_FILE);
  const initialLora = loraValuesForManifest(
    parseSafetensors(await fetchBytes(base + LORA_INIT_FILE), LORA_INIT_FILE),
    LORA_INIT_FILE,
    manifest,
  );
  const weights: WebFolder['weights'] = [];
  for (const w of manifest.weights) {
    onProgress(w);
    weights.push({ path: w, data: await fetchBytes(base + w) });
  }
  return {
    base,
    manifest,
    store,
    initialLora,
    weights,
    artifact: async (name) => {
      const a = manifest.artifacts[name];
      if (!a) throw new Error(`this folder has no ${name}.onnx (add \`${name}\` to the spec's emit line and compile again)`);
      return fetchBytes(base + a.file);
    },
  };
}
