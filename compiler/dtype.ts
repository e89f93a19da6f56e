/** ONNX TensorProto.DataType codes and their element sizes. */
export const DataType = {
  UNDEFINED: 0,
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  COMPLEX128: 15,
  BFLOAT16: 16,
} as const;
export type DataTypeCode = number;

const BYTES: Record<number, number> = {
  1: 4,
  2: 1,
  3: 1,
  4: 2,
  5: 2,
  6: 4,
  7: 8,
  9: 1,
  10: 2,
  11: 8,
  12: 4,
  13: 8,
  14: 8,
  15: 16,
  16: 2,
  17: 1,
  18: 1,
  19: 1,
  20: 1,
  24: 1,
};

const NAMES: Record<number, string> = Object.fromEntries(Object.entries(DataType).map(([k, v]) => [v, k.toLowerCase()]));

export function dataTypeName(code: number): string {
  return NAMES[code] ?? `dtype${code}`;
}

/** Bytes per element, or undefined for strings and sub-byte types. */
export function elementSize(code: number): number | undefined {
  return BYTES[code];
}

/** onnxruntime-node's name for an ONNX element type. */
export function ortTypeName(code: number): string {
  const map: Record<number, string> = {
    1: 'float32',
    2: 'uint8',
    3: 'int8',
    4: 'uint16',
    5: 'int16',
    6: 'int32',
    7: 'int64',
    8: 'string',
    9: 'bool',
    10: 'float16',
    11: 'float64',
    12: 'uint32',
    13: 'uint64',
  };
  const name = map[code];
  if (!name) throw new Error(`ONNX data type ${dataTypeName(code)} has no onnxruntime-node tensor type`);
  return name;
}
