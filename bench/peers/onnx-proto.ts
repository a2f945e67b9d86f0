/**
 * A tiny ONNX model writer: just enough of the protobuf wire format and of onnx.proto
 * (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto) to build
 * inference graphs in code for onnxruntime-node. Field numbers follow onnx/onnx.proto (IR
 * version 9). Large tensors are written as raw_data and kept as chunks until the final
 * concatenation, so a model with hundreds of MB of weights is copied only once.
 */

/** onnx.TensorProto.DataType values used here. */
export const DataType = { FLOAT: 1, INT32: 6, INT64: 7, BOOL: 9 } as const;
export type DataTypeId = (typeof DataType)[keyof typeof DataType];

const WIRE_VARINT = 0;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

const textEncoder = new TextEncoder();

/** A protobuf message under construction: a list of byte chunks. */
export class ProtoWriter {
  readonly chunks: Uint8Array[] = [];
  length = 0;

  #push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.chunks.push(bytes);
    this.length += bytes.length;
  }

  #key(field: number, wire: number): void {
    this.#varint(BigInt((field << 3) | wire));
  }

  #varint(value: bigint): void {
    // Negative int64 values are written as their 64-bit two's complement (10 bytes).
    let v = BigInt.asUintN(64, value);
    const out: number[] = [];
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) byte |= 0x80;
      out.push(byte);
    } while (v !== 0n);
    this.#push(Uint8Array.from(out));
  }

  /** int32 / int64 / enum / bool field. */
  int(field: number, value: number | bigint): this {
    this.#key(field, WIRE_VARINT);
    this.#varint(BigInt(value));
    return this;
  }

  float(field: number, value: number): this {
    this.#key(field, WIRE_FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.#push(b);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.#key(field, WIRE_LEN);
    this.#varint(BigInt(value.length));
    this.#push(value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, textEncoder.encode(value));
  }

  message(field: number, child: ProtoWriter): this {
    this.#key(field, WIRE_LEN);
    this.#varint(BigInt(child.length));
    for (const c of child.chunks) this.#push(c);
    return this;
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let off = 0;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}

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

// onnx.AttributeProto.AttributeType
const ATTR_TYPE = { f: 1, i: 2, s: 3, t: 4, floats: 6, ints: 7 } as const;

function dataTypeOf(data: TensorData): DataTypeId {
  if (data instanceof Float32Array) return DataType.FLOAT;
  if (data instanceof BigInt64Array) return DataType.INT64;
  return DataType.INT32;
}

function tensorProto(name: string, data: TensorData, dims: readonly number[]): ProtoWriter {
  const count = dims.reduce((a, b) => a * b, 1);
  if (count !== data.length) {
    throw new Error(
      `tensor ${name}: dims [${dims.join(", ")}] hold ${count} values, got ${data.length}`,
    );
  }
  const t = new ProtoWriter();
  for (const d of dims) t.int(1, d);
  t.int(2, dataTypeOf(data));
  if (name) t.string(8, name);
  // raw_data is little-endian; so is every platform onnxruntime-node ships for.
  t.bytes(9, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return t;
}

function valueInfo(
  name: string,
  elemType: DataTypeId,
  dims: readonly (number | string)[],
): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of dims) {
    const dim = new ProtoWriter();
    if (typeof d === "number") dim.int(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter().int(1, elemType).message(2, shape);
  const type = new ProtoWriter().message(1, tensorType);
  return new ProtoWriter().string(1, name).message(2, type);
}

/**
 * Builds one ONNX graph. `node()` returns its output names (fresh ones unless given), so graphs
 * read like straight-line code:
 *   const [h] = g.node("MatMul", [x, w]);
 */
export class OnnxGraph {
  #nodes: ProtoWriter[] = [];
  #inits: ProtoWriter[] = [];
  #inputs: ProtoWriter[] = [];
  #outputs: ProtoWriter[] = [];
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

  input(name: string, elemType: DataTypeId, dims: readonly (number | string)[]): string {
    this.#names.add(name);
    this.#inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(name: string, elemType: DataTypeId, dims: readonly (number | string)[]): string {
    this.#outputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  /** A constant (initializer). Returns its name. */
  init(hint: string, data: TensorData, dims: readonly number[]): string {
    const name = this.#fresh(hint);
    this.#inits.push(tensorProto(name, data, dims));
    return name;
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
    const n = new ProtoWriter();
    for (const i of inputs) n.string(1, i);
    for (const o of outs) n.string(2, o);
    n.string(3, this.#fresh(`n_${op}`));
    n.string(4, op);
    if (domain) n.string(7, domain);
    for (const [key, a] of Object.entries(attrs)) n.message(5, attributeProto(key, a));
    this.#nodes.push(n);
    return outs;
  }

  /** Serializes a ModelProto holding this graph. */
  toModel(opts: { opset: number; irVersion?: number; producer?: string }): Uint8Array {
    const graph = new ProtoWriter();
    for (const n of this.#nodes) graph.message(1, n);
    graph.string(2, this.name);
    for (const t of this.#inits) graph.message(5, t);
    for (const v of this.#inputs) graph.message(11, v);
    for (const v of this.#outputs) graph.message(12, v);
    const opset = new ProtoWriter().string(1, "").int(2, opts.opset);
    return new ProtoWriter()
      .int(1, opts.irVersion ?? 9)
      .string(2, opts.producer ?? "moec-bench")
      .message(7, graph)
      .message(8, opset)
      .finish();
  }
}

function attributeProto(name: string, a: Attr): ProtoWriter {
  const p = new ProtoWriter().string(1, name);
  switch (a.kind) {
    case "i":
      p.int(3, a.value);
      break;
    case "f":
      p.float(2, a.value);
      break;
    case "s":
      p.string(4, a.value);
      break;
    case "ints":
      for (const v of a.value) p.int(8, v);
      break;
    case "floats":
      for (const v of a.value) p.float(7, v);
      break;
    case "t":
      p.message(5, tensorProto("", a.value.data, a.value.dims));
      break;
  }
  p.int(20, ATTR_TYPE[a.kind]);
  return p;
}
