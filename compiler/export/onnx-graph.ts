/**
 * The project's one ONNX writer: a graph built in code, serialised with the `onnx-proto`
 * package (protobufjs generated from onnx.proto). `moec export --format onnx` and the bench's
 * onnxruntime peer both build their graphs here. Pure: bytes out, no files.
 */
import onnxProto from "onnx-proto";

const { onnx } = onnxProto;

/** onnx.TensorProto.DataType values used here. */
export const DataType = { FLOAT: 1, INT32: 6, INT64: 7, BOOL: 9 } as const;
export type DataTypeId = (typeof DataType)[keyof typeof DataType];

export type TensorData = Float32Array | BigInt64Array | Int32Array;

/** An attribute value; build with `attr.*`. */
export type Attr =
  | { kind: "i"; value: number }
  | { kind: "f"; value: number }
  | { kind: "s"; value: string }
  | { kind: "ints"; value: readonly number[] }
  | { kind: "floats"; value: readonly number[] }
  | { kind: "t"; value: { data: TensorData; dims: readonly number[] } };

export const attr = {
  i: (value: number): Attr => ({ kind: "i", value }),
  f: (value: number): Attr => ({ kind: "f", value }),
  s: (value: string): Attr => ({ kind: "s", value }),
  ints: (value: readonly number[]): Attr => ({ kind: "ints", value }),
  floats: (value: readonly number[]): Attr => ({ kind: "floats", value }),
  tensor: (data: TensorData, dims: readonly number[]): Attr => ({
    kind: "t",
    value: { data, dims },
  }),
};

/** A dimension of a graph input or output: a size, a symbolic name, or unknown (null). */
export type OnnxDim = number | string | null;

/** What a model's header says beside its graph. */
export interface ModelHeader {
  opset: number;
  irVersion?: number;
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  metadata?: Record<string, string>;
}

/**
 * Initializers at least this large (bytes) go to the external data file when the model is
 * written with one; smaller ones stay inline (shape constants, scalars).
 */
const EXTERNAL_MIN_BYTES = 1024;

/** Where a model's large initializers go instead of the protobuf (ONNX external data). */
export interface ExternalData {
  /** The data file's name, relative to the model file (its `location`). */
  location: string;
}

function dataTypeOf(data: TensorData): DataTypeId {
  if (data instanceof Float32Array) return DataType.FLOAT;
  if (data instanceof BigInt64Array) return DataType.INT64;
  return DataType.INT32;
}

function bytesOf(data: TensorData): Uint8Array {
  // raw_data is little-endian; so is every platform onnxruntime ships for.
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function tensorProto(
  name: string,
  data: TensorData,
  dims: readonly number[],
): onnxProto.onnx.ITensorProto {
  const count = dims.reduce((a, b) => a * b, 1);
  if (count !== data.length) {
    throw new Error(
      `tensor ${name}: dims [${dims.join(", ")}] hold ${count} values, got ${data.length}`,
    );
  }
  return { name, dims: [...dims], dataType: dataTypeOf(data), rawData: bytesOf(data) };
}

function valueInfo(
  name: string,
  elemType: DataTypeId,
  dims: readonly OnnxDim[],
): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: {
          dim: dims.map((d) =>
            d === null ? {} : typeof d === "number" ? { dimValue: d } : { dimParam: d },
          ),
        },
      },
    },
  };
}

function attributeProto(name: string, a: Attr): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case "i":
      return { name, type: T.INT, i: a.value };
    case "f":
      return { name, type: T.FLOAT, f: a.value };
    case "s":
      return { name, type: T.STRING, s: new TextEncoder().encode(a.value) };
    case "ints":
      return { name, type: T.INTS, ints: [...a.value] };
    case "floats":
      return { name, type: T.FLOATS, floats: [...a.value] };
    case "t":
      return { name, type: T.TENSOR, t: tensorProto("", a.value.data, a.value.dims) };
  }
}

/**
 * Builds one ONNX graph. `node()` returns its output names (fresh ones unless given), so graphs
 * read like straight-line code:
 *   const [h] = g.node("MatMul", [x, w]);
 */
export class OnnxGraph {
  #nodes: onnxProto.onnx.INodeProto[] = [];
  #inits: { name: string; data: TensorData; dims: readonly number[] }[] = [];
  #inputs: onnxProto.onnx.IValueInfoProto[] = [];
  #outputs: onnxProto.onnx.IValueInfoProto[] = [];
  #names = new Set<string>();
  #counter = 0;

  constructor(readonly name: string) {}

  #fresh(hint: string): string {
    let n: string;
    do n = `${hint}_${this.#counter++}`;
    while (this.#names.has(n));
    this.#names.add(n);
    return n;
  }

  /** Declares a name as taken (a value the caller names itself). */
  reserve(name: string): string {
    this.#names.add(name);
    return name;
  }

  input(name: string, elemType: DataTypeId, dims: readonly OnnxDim[]): string {
    this.#names.add(name);
    this.#inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(name: string, elemType: DataTypeId, dims: readonly OnnxDim[]): string {
    this.#outputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  /** A constant (initializer) under a fresh name from `hint`, or exactly `name`. Its name. */
  init(hint: string, data: TensorData, dims: readonly number[], name?: string): string {
    const n = name === undefined ? this.#fresh(hint) : this.reserve(name);
    tensorProto(n, data, dims); // checks the element count now, where the caller is
    this.#inits.push({ name: n, data, dims });
    return n;
  }

  /** int64 constant, e.g. shapes and axes. */
  ints(hint: string, values: readonly number[], dims: readonly number[] = [values.length]): string {
    return this.init(hint, BigInt64Array.from(values.map((v) => BigInt(v))), dims);
  }

  /**
   * Adds a node. `outputs` is a count of fresh outputs (default 1) or explicit names (use ""
   * to skip an optional output). Returns the output names.
   */
  node(
    op: string,
    inputs: readonly string[],
    attrs: Record<string, Attr> = {},
    outputs: number | readonly string[] = 1,
    domain = "",
  ): string[] {
    const outs =
      typeof outputs === "number"
        ? Array.from({ length: outputs }, () => this.#fresh(op.toLowerCase()))
        : [...outputs];
    for (const o of outs) this.#names.add(o);
    this.#nodes.push({
      input: [...inputs],
      output: outs,
      name: this.#fresh(`n_${op}`),
      opType: op,
      ...(domain ? { domain } : {}),
      attribute: Object.entries(attrs).map(([key, a]) => attributeProto(key, a)),
    });
    return outs;
  }

  /** The bytes of all initializers: what decides between inline and external data. */
  get initializerBytes(): number {
    return this.#inits.reduce((a, t) => a + t.data.byteLength, 0);
  }

  /** Serializes a ModelProto holding this graph (opset of the default domain only). */
  toModel(header: ModelHeader): Uint8Array {
    return this.toModelWithData(header).model;
  }

  /**
   * Serializes the model; with `external`, initializers of 1 KiB or more go to one data file
   * (each at an offset aligned to 4 KiB, so it can be memory-mapped), returned as `data`: its
   * chunks in order, views of the tensors (one array could not hold past 4 GiB).
   */
  toModelWithData(
    header: ModelHeader,
    external?: ExternalData,
  ): { model: Uint8Array; data?: Uint8Array[] } {
    const chunks: Uint8Array[] = [];
    let offset = 0;
    const initializer = this.#inits.map(({ name, data, dims }) => {
      const t = tensorProto(name, data, dims);
      if (!external || data.byteLength < EXTERNAL_MIN_BYTES) return t;
      const pad = (4096 - (offset % 4096)) % 4096;
      if (pad) chunks.push(new Uint8Array(pad));
      offset += pad;
      const bytes = bytesOf(data);
      chunks.push(bytes);
      const entry = (key: string, value: number | string) => ({ key, value: String(value) });
      const out: onnxProto.onnx.ITensorProto = {
        name: t.name,
        dims: t.dims,
        dataType: t.dataType,
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          entry("location", external.location),
          entry("offset", offset),
          entry("length", bytes.length),
        ],
      };
      offset += bytes.length;
      return out;
    });
    const model: onnxProto.onnx.IModelProto = {
      irVersion: header.irVersion ?? 9,
      producerName: header.producerName ?? "moec",
      ...(header.producerVersion ? { producerVersion: header.producerVersion } : {}),
      ...(header.docString ? { docString: header.docString } : {}),
      opsetImport: [{ domain: "", version: header.opset }],
      graph: {
        name: this.name,
        node: this.#nodes,
        initializer,
        input: this.#inputs,
        output: this.#outputs,
      },
      metadataProps: Object.entries(header.metadata ?? {}).map(([key, value]) => ({ key, value })),
    };
    const bytes = onnx.ModelProto.encode(model).finish();
    return external ? { model: bytes, data: chunks } : { model: bytes };
  }
}
