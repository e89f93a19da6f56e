/**
 * Model files <-> IR. Weight bytes are never decoded: external-data tensors stay file ranges,
 * inline ones stay views into the model buffer, and saving copies ranges in bounded chunks.
 */
import { writeFileAtomic } from './atomic-files';
import * as fs from 'fs';
import * as path from 'path';
import { HollowcError } from './errors';
import { decodeModelProto, encodeModelProto, PAttribute, PGraph, PModel, PNode, PStringPair, PTensor, PValueInfo, AttrType } from './proto';
import { Attribute, Dim, Graph, Model, Node, Tensor, TensorType, Value, tensorByteLength } from './ir';
import { DataType } from './dtype';
import { ExternalDataWriter, externalRangeChecker } from './external-data';

const EXTERNAL = 1;
/** protobuf refuses messages of 2 GiB and more; keep a margin for everything but the weights. */
const MAX_GRAPH_FILE_BYTES = 2 ** 31 - 64 * 2 ** 20;

export interface LoadOptions {
  /** Folder that external-data locations are relative to (default: the model's folder). */
  baseDir?: string;
}

/** The newest ONNX IR version and default-domain opset onnxruntime 1.30 runs. */
export const MAX_IR_VERSION = 13;
export const MAX_OPSET = 26;

export function loadModel(file: string, options: LoadOptions = {}): Model {
  let bytes: Buffer;
  try {
    // Refused unread: protobuf cannot decode 2 GiB, and reading it would hold it all in memory.
    const size = fs.statSync(file).size;
    if (size > MAX_GRAPH_FILE_BYTES)
      throw new HollowcError(
        `graph file is ${size} bytes, over protobuf's 2 GiB limit: export the model with external data (weights in a separate file)`,
        file,
      );
    bytes = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof HollowcError) throw e;
    throw new HollowcError(`cannot read model: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  return loadModelFromBytes(bytes, file, options.baseDir ?? path.dirname(path.resolve(file)));
}

/** `label` names the source in error messages. */
export function loadModelFromBytes(bytes: Uint8Array, label: string, baseDir: string): Model {
  let proto: PModel;
  try {
    proto = decodeModelProto(bytes);
  } catch (e) {
    throw new HollowcError(`not a valid ONNX model (protobuf decoding failed: ${(e as Error).message})`, label);
  }
  if (!proto.graph || !proto.opset_import?.length) {
    throw new HollowcError('not a valid ONNX model (no graph or no opset import)', label);
  }
  if ((proto.ir_version ?? 0) > MAX_IR_VERSION)
    throw new HollowcError(
      `ONNX IR version ${proto.ir_version} is newer than onnxruntime 1.30 reads (at most ${MAX_IR_VERSION}): export with an older onnx`,
      label,
    );
  const opset = proto.opset_import.find((o) => (o.domain ?? '') === '' || o.domain === 'ai.onnx')?.version ?? 0;
  if (opset > MAX_OPSET)
    throw new HollowcError(
      `opset ${opset} is newer than onnxruntime 1.30 supports (at most ${MAX_OPSET}): export with a lower opset`,
      label,
    );
  const model = modelFromProto(proto, label, baseDir);
  sortIfNeeded(model.graph, label);
  return model;
}

/** ONNX wants nodes in topological order; an unordered graph is sorted, a cyclic one refused. */
function sortIfNeeded(g: Graph, label: string): void {
  const seen = new Set<Node>();
  const ordered = g.nodes.every((n) => {
    const ready = n.inputs.every((v) => !v?.producer || seen.has(v.producer));
    seen.add(n);
    return ready;
  });
  if (ordered) return;
  try {
    g.topologicalSort();
  } catch (e) {
    throw new HollowcError((e as Error).message.replace(/^graph has/, 'the graph has'), label);
  }
}

function pairs(p?: PStringPair[]): { key: string; value: string }[] | undefined {
  return p?.length ? p.map((e) => ({ key: e.key ?? '', value: e.value ?? '' })) : undefined;
}

function modelFromProto(proto: PModel, label: string, baseDir: string): Model {
  const checkRange = externalRangeChecker(baseDir, label);
  const tensor = (t: PTensor): Tensor => tensorFromProto(t, checkRange, label);
  const graph = graphFromProto(proto.graph!, tensor, label);
  const model = new Model(graph);
  model.irVersion = proto.ir_version ?? 0;
  model.opsetImports = (proto.opset_import ?? []).map((o) => ({ domain: o.domain ?? '', version: o.version ?? 0 }));
  model.producerName = proto.producer_name ?? '';
  model.producerVersion = proto.producer_version ?? '';
  model.domain = proto.domain ?? '';
  model.modelVersion = proto.model_version ?? 0;
  model.docString = proto.doc_string ?? '';
  model.metadataProps = pairs(proto.metadata_props) ?? [];
  model.functions = proto.functions ?? [];
  model.trainingInfo = proto.training_info ?? [];
  model.configuration = proto.configuration ?? [];
  return model;
}

function typeFromProto(t: PValueInfo['type']): TensorType | undefined {
  const tt = t?.tensor_type;
  if (!tt) return undefined;
  const shape: Dim[] | undefined = tt.shape
    ? (tt.shape.dim ?? []).map((d) => (d.dim_value !== undefined ? d.dim_value : d.dim_param !== undefined ? d.dim_param : null))
    : undefined;
  return { elemType: tt.elem_type ?? 0, shape };
}

function graphFromProto(pg: PGraph, tensor: (t: PTensor) => Tensor, label: string): Graph {
  const g = new Graph();
  g.name = pg.name ?? '';
  g.docString = pg.doc_string;
  g.metadataProps = pairs(pg.metadata_props);
  g.sparseInitializers = pg.sparse_initializer ?? [];
  g.quantizationAnnotation = pg.quantization_annotation ?? [];
  const infoOf = (vi: PValueInfo, v: Value) => {
    v.docString = vi.doc_string || undefined;
    v.metadataProps = pairs(vi.metadata_props);
  };
  for (const vi of pg.input ?? []) {
    const v = g.createValue(vi.name ?? '', typeFromProto(vi.type));
    infoOf(vi, v);
    g.inputs.push(v);
  }
  for (const pt of pg.initializer ?? []) {
    const t = tensor(pt);
    const existing = g.tryValue(t.name);
    // Old IR versions list initializers among the inputs too; the input entry keeps its type.
    if (existing) existing.initializer = t;
    else g.addInitializer(t);
  }
  const getOrCreate = (name: string) => g.tryValue(name) ?? g.createValue(name);
  for (const pn of pg.node ?? []) {
    const node = new Node(
      pn.name ?? '',
      pn.op_type ?? '',
      pn.domain ?? '',
      (pn.attribute ?? []).map((a) => attributeFromProto(a, tensor)),
    );
    node.docString = pn.doc_string || undefined;
    node.overload = pn.overload || undefined;
    node.metadataProps = pairs(pn.metadata_props);
    node.deviceConfigurations = pn.device_configurations?.length ? pn.device_configurations : undefined;
    (pn.input ?? []).forEach((name, i) => {
      const v = name === '' ? null : getOrCreate(name);
      node._inputs.push(v);
      if (v) v._uses.push({ node, index: i });
    });
    node._outputs = (pn.output ?? []).map((name) => {
      const v = getOrCreate(name);
      const other = v.producer
        ? `node ${v.producer.name}`
        : v.initializer
          ? 'an initializer'
          : g.inputs.includes(v)
            ? 'a graph input'
            : undefined;
      if (other) throw new HollowcError(`value ${JSON.stringify(name)} is defined twice: by ${other} and by node ${node.name}`, label);
      v._producer = node;
      return v;
    });
    g._adoptNode(node);
  }
  g.outputs = (pg.output ?? []).map((vi) => {
    const v = getOrCreate(vi.name ?? '');
    if (vi.type) v.type = typeFromProto(vi.type);
    infoOf(vi, v);
    return v;
  });
  for (const vi of pg.value_info ?? []) {
    const v = getOrCreate(vi.name ?? '');
    v.type = typeFromProto(vi.type);
    v.hasValueInfo = true;
    infoOf(vi, v);
  }
  return g;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Typed-field payloads (float_data, int64_data, ...) become little-endian raw bytes. */
function typedFieldBytes(t: PTensor): Uint8Array | undefined {
  const dt = t.data_type ?? 0;
  if (t.float_data?.length) return bytesOf(Float32Array.from(t.float_data));
  if (t.double_data?.length) return bytesOf(Float64Array.from(t.double_data));
  if (t.int64_data?.length) return bytesOf(BigInt64Array.from(t.int64_data, (x) => BigInt(x)));
  if (t.uint64_data?.length) return bytesOf(BigUint64Array.from(t.uint64_data, (x) => BigInt(x)));
  if (t.int32_data?.length) {
    const d = t.int32_data;
    switch (dt) {
      case DataType.INT32:
        return bytesOf(Int32Array.from(d));
      case DataType.INT8:
        return bytesOf(Int8Array.from(d));
      case DataType.UINT8:
      case DataType.BOOL:
        return Uint8Array.from(d);
      case DataType.INT16:
        return bytesOf(Int16Array.from(d));
      case DataType.UINT16:
      case DataType.FLOAT16:
      case DataType.BFLOAT16:
        return bytesOf(Uint16Array.from(d));
      default:
        return undefined;
    }
  }
  return undefined;
}

function tensorFromProto(t: PTensor, checkRange: ReturnType<typeof externalRangeChecker>, label: string): Tensor {
  const name = t.name ?? '';
  const base = {
    name,
    dataType: t.data_type ?? 0,
    dims: t.dims ?? [],
    docString: t.doc_string || undefined,
    metadataProps: pairs(t.metadata_props),
  };
  if (t.data_location === EXTERNAL) {
    const info = Object.fromEntries((t.external_data ?? []).map((e) => [e.key ?? '', e.value ?? '']));
    if (!info.location) throw new HollowcError(`tensor ${name} is external but names no location`, label);
    const range = checkRange(name, info.location, Number(info.offset ?? 0), info.length !== undefined ? Number(info.length) : undefined);
    return { ...base, data: { kind: 'external', ...range } };
  }
  if (base.dataType === DataType.STRING) return { ...base, data: { kind: 'strings', strings: t.string_data ?? [] } };
  const bytes = t.raw_data?.byteLength ? t.raw_data : (typedFieldBytes(t) ?? new Uint8Array(0));
  return { ...base, data: { kind: 'inline', bytes } };
}

function decodeString(b: Uint8Array | undefined): string {
  return b ? Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8') : '';
}

function attributeFromProto(a: PAttribute, tensor: (t: PTensor) => Tensor): Attribute {
  const name = a.name ?? '';
  if (a.ref_attr_name || a.doc_string) return { name, type: 'opaque', value: a };
  switch (a.type) {
    case AttrType.FLOAT:
      return { name, type: 'float', value: a.f ?? 0 };
    case AttrType.INT:
      return { name, type: 'int', value: a.i ?? 0 };
    case AttrType.STRING:
      return { name, type: 'string', value: decodeString(a.s) };
    case AttrType.TENSOR:
      return { name, type: 'tensor', value: tensor(a.t ?? {}) };
    case AttrType.FLOATS:
      return { name, type: 'floats', value: a.floats ?? [] };
    case AttrType.INTS:
      return { name, type: 'ints', value: a.ints ?? [] };
    case AttrType.STRINGS:
      return { name, type: 'strings', value: (a.strings ?? []).map(decodeString) };
    case AttrType.TENSORS:
      return { name, type: 'tensors', value: (a.tensors ?? []).map(tensor) };
    default:
      return { name, type: 'opaque', value: a };
  }
}

// ---------------------------------------------------------------------------------------------
// Saving

export interface SaveOptions {
  /**
   * Where tensors of `threshold` bytes or more go: `'inline'` keeps every tensor in the graph
   * file; a file name (relative to the model's folder) writes them there; a writer shares one
   * data file between several models. Default: `<model file name>_data` when the weights are
   * external already or larger than 256 MiB, else inline.
   */
  externalData?: 'inline' | string | ExternalDataWriter;
  /** Smallest tensor, in bytes, that goes to external data (default 1024). */
  threshold?: number;
  /**
   * External tensors whose data file sits in the output folder (or below it) are referenced
   * where they are instead of copied: artifacts then share one copy of the base weights.
   */
  referenceInPlace?: boolean;
}

export function saveModel(model: Model, file: string, options: SaveOptions = {}): void {
  const dir = path.dirname(path.resolve(file));
  const threshold = options.threshold ?? 1024;
  let writer: ExternalDataWriter | undefined;
  let ownWriter = false;
  const ext = options.externalData ?? defaultExternalData(model, file);
  if (ext instanceof ExternalDataWriter) {
    writer = ext;
    if (path.resolve(writer.dir) !== dir) throw new Error(`external data ${writer.file} must sit in the model's folder ${dir}`);
  } else if (ext !== 'inline') {
    writer = new ExternalDataWriter(path.join(dir, ext));
    ownWriter = true;
  }
  try {
    const place = (t: Tensor): PTensor => {
      const inPlace = options.referenceInPlace && t.data.kind === 'external' ? relativeInside(dir, t.data.file) : undefined;
      if (inPlace !== undefined && t.data.kind === 'external')
        return externalTensorProto(t, { location: inPlace, offset: t.data.offset, length: t.data.length });
      return tensorToProto(t, writer && tensorBytes(t) >= threshold ? writer : undefined);
    };
    const proto = modelToProto(model, place);
    const bytes = encodeModelProto(proto);
    if (bytes.byteLength > MAX_GRAPH_FILE_BYTES) {
      throw new HollowcError(`graph file would be ${bytes.byteLength} bytes, over protobuf's 2 GiB limit: save with external data`, file);
    }
    if (ownWriter) writer!.commit();
    writeFileAtomic(file, bytes);
  } catch (e) {
    if (ownWriter) writer!.abort();
    throw e;
  }
}

function tensorBytes(t: Tensor): number {
  return t.data.kind === 'strings' ? 0 : tensorByteLength(t);
}

function defaultExternalData(model: Model, file: string): 'inline' | string {
  let total = 0;
  let anyExternal = false;
  for (const v of model.graph.initializers()) {
    total += tensorBytes(v.initializer!);
    anyExternal ||= v.initializer!.data.kind === 'external';
  }
  return anyExternal || total > 256 * 2 ** 20 ? `${path.basename(file)}_data` : 'inline';
}

function pairsToProto(p?: { key: string; value: string }[]): PStringPair[] | undefined {
  return p?.length ? p.map((e) => ({ key: e.key, value: e.value })) : undefined;
}

/** `file` relative to `dir` when it lies inside it, else undefined. */
function relativeInside(dir: string, file: string): string | undefined {
  const rel = path.relative(dir, file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel.split(path.sep).join('/') : undefined;
}

function externalTensorProto(t: Tensor, loc: { location: string; offset: number; length: number }): PTensor {
  const out: PTensor = { name: t.name, data_type: t.dataType, dims: t.dims, data_location: EXTERNAL };
  if (t.docString) out.doc_string = t.docString;
  if (t.metadataProps) out.metadata_props = pairsToProto(t.metadataProps);
  out.external_data = [
    { key: 'location', value: loc.location },
    { key: 'offset', value: String(loc.offset) },
    { key: 'length', value: String(loc.length) },
  ];
  return out;
}

function tensorToProto(t: Tensor, writer: ExternalDataWriter | undefined): PTensor {
  if (writer && t.data.kind !== 'strings') return externalTensorProto(t, writer.place(t));
  const out: PTensor = { name: t.name, data_type: t.dataType, dims: t.dims };
  if (t.docString) out.doc_string = t.docString;
  if (t.metadataProps) out.metadata_props = pairsToProto(t.metadataProps);
  if (t.data.kind === 'strings') {
    out.string_data = t.data.strings;
  } else {
    out.raw_data = readTensorBytes(t);
  }
  return out;
}

/** The bytes of a tensor; reads an external range. Meant for small tensors (constants, shapes). */
export function readTensorBytes(t: Tensor): Uint8Array {
  if (t.data.kind === 'inline') return t.data.bytes;
  if (t.data.kind === 'strings') throw new Error(`tensor ${t.name} holds strings, not bytes`);
  if (t.data.kind === 'computed') {
    const out = new Uint8Array(t.data.length);
    let at = 0;
    t.data.produce((chunk) => {
      out.set(chunk, at);
      at += chunk.byteLength;
    });
    return out;
  }
  const { file, offset, length } = t.data;
  const buf = Buffer.allocUnsafe(length);
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) throw new HollowcError(`external data ends before tensor ${t.name} (${offset}+${length})`, file);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return buf;
}

function typeToProto(t: TensorType | undefined): PValueInfo['type'] {
  if (!t) return undefined;
  return {
    tensor_type: {
      elem_type: t.elemType,
      shape: t.shape
        ? { dim: t.shape.map((d) => (typeof d === 'number' ? { dim_value: d } : typeof d === 'string' ? { dim_param: d } : {})) }
        : undefined,
    },
  };
}

function valueInfoToProto(v: Value): PValueInfo {
  const vi: PValueInfo = { name: v.name };
  if (v.type) vi.type = typeToProto(v.type);
  if (v.docString) vi.doc_string = v.docString;
  if (v.metadataProps) vi.metadata_props = pairsToProto(v.metadataProps);
  return vi;
}

function attributeToProto(a: Attribute, tensor: (t: Tensor) => PTensor): PAttribute {
  switch (a.type) {
    case 'float':
      return { name: a.name, type: AttrType.FLOAT, f: a.value };
    case 'int':
      return { name: a.name, type: AttrType.INT, i: a.value };
    case 'string':
      return { name: a.name, type: AttrType.STRING, s: Buffer.from(a.value, 'utf8') };
    case 'tensor':
      return { name: a.name, type: AttrType.TENSOR, t: tensor(a.value) };
    case 'floats':
      return { name: a.name, type: AttrType.FLOATS, floats: a.value };
    case 'ints':
      return { name: a.name, type: AttrType.INTS, ints: a.value };
    case 'strings':
      return { name: a.name, type: AttrType.STRINGS, strings: a.value.map((s) => Buffer.from(s, 'utf8')) };
    case 'tensors':
      return { name: a.name, type: AttrType.TENSORS, tensors: a.value.map(tensor) };
    case 'opaque':
      return a.value as PAttribute;
  }
}

function nodeToProto(n: Node): PNode {
  const out: PNode = {
    input: n.inputs.map((v) => v?.name ?? ''),
    output: n.outputs.map((v) => v.name),
    op_type: n.opType,
  };
  if (n.name) out.name = n.name;
  if (n.domain) out.domain = n.domain;
  if (n.overload) out.overload = n.overload;
  // Attribute tensors (Constant values) stay inline: they are small and ORT expects them there.
  if (n.attributes.length) out.attribute = n.attributes.map((a) => attributeToProto(a, (t) => tensorToProto(t, undefined)));
  if (n.docString) out.doc_string = n.docString;
  if (n.metadataProps) out.metadata_props = pairsToProto(n.metadataProps);
  if (n.deviceConfigurations) out.device_configurations = n.deviceConfigurations;
  return out;
}

function modelToProto(model: Model, tensor: (t: Tensor) => PTensor): PModel {
  const g = model.graph;
  const inputSet = new Set(g.inputs);
  const pg: PGraph = {
    node: g.nodes.map(nodeToProto),
    name: g.name,
    initializer: g.initializers().map((v) => tensor(v.initializer!)),
    input: g.inputs.map(valueInfoToProto),
    output: g.outputs.map(valueInfoToProto),
    value_info: [...g.values.values()].filter((v) => v.hasValueInfo && !inputSet.has(v) && !g.outputs.includes(v)).map(valueInfoToProto),
  };
  if (g.docString) pg.doc_string = g.docString;
  if (g.metadataProps) pg.metadata_props = pairsToProto(g.metadataProps);
  if (g.sparseInitializers.length) pg.sparse_initializer = g.sparseInitializers;
  if (g.quantizationAnnotation.length) pg.quantization_annotation = g.quantizationAnnotation;
  const pm: PModel = {
    ir_version: model.irVersion,
    opset_import: model.opsetImports.map((o) => ({ domain: o.domain, version: o.version })),
    producer_name: model.producerName,
    producer_version: model.producerVersion,
    domain: model.domain,
    model_version: model.modelVersion,
    doc_string: model.docString,
    graph: pg,
  };
  if (model.metadataProps.length) pm.metadata_props = pairsToProto(model.metadataProps);
  if (model.functions.length) pm.functions = model.functions;
  if (model.trainingInfo.length) pm.training_info = model.trainingInfo;
  if (model.configuration.length) pm.configuration = model.configuration;
  return pm;
}
