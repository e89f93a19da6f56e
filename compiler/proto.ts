/**
 * The only module that knows protobufjs. It decodes and encodes ONNX `ModelProto`s as plain
 * objects with snake_case fields (the schema's own names) and int64 fields as JS numbers.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as protobuf from 'protobufjs';

// int64 fields (dims, ir_version) decode to `Long` objects when the `long` package is present.
// Every int64 in an ONNX graph we handle fits in 2^53, so plain numbers are simpler and safe.
(protobuf.util as { Long: unknown }).Long = undefined;
protobuf.configure();

/** The schema ships next to the compiled code and the sources alike. */
function schemaPath(): string {
  const candidates = [path.join(__dirname, 'onnx.proto'), path.join(__dirname, '..', '..', 'compiler', 'onnx.proto')];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new Error(`ONNX schema onnx.proto not found next to ${__dirname}`);
  return found;
}

let modelType: protobuf.Type | undefined;
function ModelProtoType(): protobuf.Type {
  if (!modelType) {
    const root = protobuf.parse(fs.readFileSync(schemaPath(), 'utf8'), { keepCase: true }).root;
    modelType = root.lookupType('onnx.ModelProto');
  }
  return modelType;
}

/* Plain-object views of the messages we read field by field. Optional fields may be absent. */
export interface PStringPair {
  key?: string;
  value?: string;
}
export interface PTensor {
  dims?: number[];
  data_type?: number;
  segment?: unknown;
  float_data?: number[];
  int32_data?: number[];
  string_data?: Uint8Array[];
  int64_data?: number[];
  name?: string;
  doc_string?: string;
  raw_data?: Uint8Array;
  external_data?: PStringPair[];
  data_location?: number;
  double_data?: number[];
  uint64_data?: number[];
  metadata_props?: PStringPair[];
}
export interface PDimension {
  dim_value?: number;
  dim_param?: string;
  denotation?: string;
}
export interface PType {
  tensor_type?: { elem_type?: number; shape?: { dim?: PDimension[] } };
  sequence_type?: unknown;
  map_type?: unknown;
  optional_type?: unknown;
  sparse_tensor_type?: unknown;
  denotation?: string;
}
export interface PValueInfo {
  name?: string;
  type?: PType;
  doc_string?: string;
  metadata_props?: PStringPair[];
}
export interface PAttribute {
  name?: string;
  ref_attr_name?: string;
  doc_string?: string;
  type?: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: PTensor;
  g?: unknown;
  sparse_tensor?: unknown;
  tp?: unknown;
  floats?: number[];
  ints?: number[];
  strings?: Uint8Array[];
  tensors?: PTensor[];
  graphs?: unknown[];
  sparse_tensors?: unknown[];
  type_protos?: unknown[];
}
export interface PNode {
  input?: string[];
  output?: string[];
  name?: string;
  op_type?: string;
  domain?: string;
  overload?: string;
  attribute?: PAttribute[];
  doc_string?: string;
  metadata_props?: PStringPair[];
  device_configurations?: unknown[];
}
export interface PGraph {
  node?: PNode[];
  name?: string;
  initializer?: PTensor[];
  sparse_initializer?: unknown[];
  doc_string?: string;
  input?: PValueInfo[];
  output?: PValueInfo[];
  value_info?: PValueInfo[];
  quantization_annotation?: unknown[];
  metadata_props?: PStringPair[];
}
export interface PModel {
  ir_version?: number;
  opset_import?: { domain?: string; version?: number }[];
  producer_name?: string;
  producer_version?: string;
  domain?: string;
  model_version?: number;
  doc_string?: string;
  graph?: PGraph;
  metadata_props?: PStringPair[];
  training_info?: unknown[];
  functions?: unknown[];
  configuration?: unknown[];
}

export const AttrType = {
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
  TENSORS: 9,
  GRAPHS: 10,
  SPARSE_TENSOR: 11,
  SPARSE_TENSORS: 12,
  TYPE_PROTO: 13,
  TYPE_PROTOS: 14,
} as const;

/** Decodes a ModelProto; byte fields are views into `bytes` (no copy). */
export function decodeModelProto(bytes: Uint8Array): PModel {
  const type = ModelProtoType();
  const msg = type.decode(bytes);
  return type.toObject(msg, { longs: Number, enums: Number, defaults: false }) as PModel;
}

export function encodeModelProto(model: PModel): Uint8Array {
  const type = ModelProtoType();
  return type.encode(type.fromObject(model as Record<string, unknown>)).finish();
}
