/**
 * The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of
 * JSON header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {..}}`,
 * then the tensors' bytes, row-major little-endian, offsets relative to the end of the header.
 *
 * Reading validates the whole header as strictly as the reference implementation (offsets
 * must tile the data exactly, sizes must match shapes) before any tensor is touched, and
 * reads tensors one at a time on request, so opening a multi-gigabyte checkpoint costs one
 * header read. Every problem is a `WeightsError` whose message is one line naming the file.
 * Writing produces the bytes the reference implementation writes for the same tensors.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

import { type FileData, writeFileAtomic } from "./atomic-write.js";

/** The element types moec reads and writes, by their safetensors names. */
export type SafetensorsDtype = "F32" | "F16" | "BF16" | "I32" | "I64" | "BOOL";

const DTYPE_SIZE: Record<SafetensorsDtype, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  I32: 4,
  I64: 8,
  BOOL: 1,
};

/**
 * The reference writer's order: by descending alignment (its dtype enum order), then name, so
 * every tensor starts aligned for its element size.
 */
const DTYPE_RANK: Record<SafetensorsDtype, number> = {
  BOOL: 0,
  F16: 7,
  BF16: 8,
  I32: 9,
  F32: 11,
  I64: 13,
};

/** Valid safetensors dtypes that moec does not convert; named apart from unknown strings. */
const OTHER_DTYPES = new Set([
  "U8",
  "I8",
  "I16",
  "U16",
  "U32",
  "U64",
  "F64",
  "F8_E5M2",
  "F8_E4M3",
  "F8_E8M0",
  "F6_E2M3",
  "F6_E3M2",
  "F4",
  "E8M0",
  "C64",
]);

/** The reference implementation's limit; a longer header is corruption, not a model. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Why a weights or safetensors file was rejected. */
export type WeightsErrorCode =
  | "io"
  | "empty"
  | "too-short"
  | "header-too-large"
  | "truncated"
  | "header-not-utf8"
  | "header-not-json"
  | "header-not-object"
  | "duplicate-key"
  | "bad-entry"
  | "missing-field"
  | "unknown-dtype"
  | "unsupported-dtype"
  | "bad-shape"
  | "bad-offsets"
  | "size-mismatch"
  | "out-of-bounds"
  | "overlap"
  | "gap"
  | "trailing-bytes"
  | "bad-metadata"
  | "out-of-range"
  | "not-found"
  | "changed"
  | "mismatch";

/**
 * A file that cannot be used as weights. The message's first line is `<file>: <problem>`;
 * `problems` lists each problem when one error reports several (see `loadWeights`).
 */
export class WeightsError extends Error {
  override readonly name = "WeightsError";

  constructor(
    readonly code: WeightsErrorCode,
    readonly file: string,
    message: string,
    readonly problems: readonly string[] = [],
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One tensor's header entry; `begin`/`end` are byte offsets into the data section. */
export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  begin: number;
  end: number;
}

/** Host storage after conversion: floats widen to f32, I64 narrows (checked) to i32. */
export type TensorArray = Float32Array | Int32Array | Uint8Array;

/** A tensor read from a file, converted to its host array. */
export interface ReadTensor {
  name: string;
  /** The dtype stored in the file (the array may be wider or narrower, see `TensorArray`). */
  dtype: SafetensorsDtype;
  shape: number[];
  data: TensorArray;
}

/** A tensor to write: values are converted to `dtype` (F16/BF16 round to nearest even). */
export interface TensorToWrite {
  dtype: SafetensorsDtype;
  shape: readonly number[];
  data: ArrayLike<number> | BigInt64Array;
}

/** Where a file's bytes come from: a buffer already in memory, or a file read on demand. */
export interface ByteSource {
  read(offset: number, length: number): Uint8Array;
  /** True when `read` returns a new array the caller may keep (no copy needed). */
  fresh: boolean;
}

/** A parsed safetensors file: its validated header, with tensor data read on request. */
export class SafetensorsFile {
  /** Tensors in file order (by offset). */
  readonly tensors: ReadonlyMap<string, TensorInfo>;

  constructor(
    readonly fileName: string,
    /** The `__metadata__` map, when the file has one. */
    readonly metadata: ReadonlyMap<string, string> | undefined,
    tensors: readonly TensorInfo[],
    /** Where the data section starts in the file: 8 + header length. */
    readonly dataStart: number,
    private readonly source: ByteSource,
  ) {
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw this.error("not-found", `no tensor ${q(name)} in this file`);
    return t;
  }

  /**
   * The tensor's stored bytes. For a file read from memory this is a view into that buffer
   * (no copy): do not modify it.
   */
  readBytes(name: string): Uint8Array {
    const t = this.info(name);
    return this.source.read(this.dataStart + t.begin, t.end - t.begin);
  }

  /**
   * `length` bytes of the tensor's stored data from byte `offset` within it: part of a tensor
   * too large to read whole, without reading the rest. Same aliasing as `readBytes`.
   */
  readByteRange(name: string, offset: number, length: number): Uint8Array {
    const t = this.info(name);
    const size = t.end - t.begin;
    if (!isCount(offset) || !isCount(length) || offset + length > size) {
      throw this.error(
        "out-of-range",
        `tensor ${q(name)}: bytes [${offset}, ${offset + length}) are outside its ${size} bytes`,
      );
    }
    return this.source.read(this.dataStart + t.begin + offset, length);
  }

  /** Reads and converts one tensor into a fresh array. */
  read(name: string): ReadTensor {
    const t = this.info(name);
    return {
      name,
      dtype: t.dtype,
      shape: [...t.shape],
      data: this.decode(t, this.readBytes(name)),
    };
  }

  private decode(t: TensorInfo, bytes: Uint8Array): TensorArray {
    const n = (t.end - t.begin) / DTYPE_SIZE[t.dtype];
    // A buffer of our own: aligned for typed-array views, never aliasing the caller's bytes.
    let own = bytes;
    if (!this.source.fresh || bytes.byteOffset !== 0) {
      own = new Uint8Array(bytes.length);
      own.set(bytes);
    }
    switch (t.dtype) {
      case "F32":
        return fromLittleEndian(new Float32Array(own.buffer, 0, n));
      case "I32":
        return fromLittleEndian(new Int32Array(own.buffer, 0, n));
      case "BOOL":
        // Any non-zero byte is true, as in the reference; store it as 1.
        for (let i = 0; i < n; i++) own[i] = own[i] === 0 ? 0 : 1;
        return own;
      case "F16": {
        const table = f16Table();
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = table[own[2 * i]! | (own[2 * i + 1]! << 8)]!;
        return out;
      }
      case "BF16": {
        // bf16 is the top half of an f32: shift the bits into place, NaN payloads included.
        const out = new Float32Array(n);
        const bits = new Uint32Array(out.buffer);
        for (let i = 0; i < n; i++) bits[i] = ((own[2 * i]! | (own[2 * i + 1]! << 8)) << 16) >>> 0;
        return out;
      }
      case "I64": {
        const view = new DataView(own.buffer);
        const out = new Int32Array(n);
        for (let i = 0; i < n; i++) {
          const lo = view.getUint32(8 * i, true);
          const hi = view.getInt32(8 * i + 4, true);
          // Fits in i32 exactly when the high word is the sign extension of the low word.
          if (hi !== (lo | 0) >> 31) {
            const value = (BigInt(hi) << 32n) | BigInt(lo);
            throw this.error(
              "out-of-range",
              `tensor ${q(t.name)}: I64 value ${value} at index ${i} does not fit in i32`,
            );
          }
          out[i] = lo | 0;
        }
        return out;
      }
    }
  }

  private error(code: WeightsErrorCode, problem: string): WeightsError {
    return new WeightsError(code, this.fileName, `${this.fileName}: ${problem}`);
  }
}

/** Parses a safetensors file held in memory; tensor data stays in `bytes` until read. */
export function readSafetensors(bytes: Uint8Array, fileName: string): SafetensorsFile {
  const n = readHeaderLength(bytes.subarray(0, 8), bytes.length, fileName);
  const { metadata, tensors } = parseHeader(
    bytes.subarray(8, 8 + n),
    bytes.length - 8 - n,
    fileName,
  );
  return new SafetensorsFile(fileName, metadata, tensors, 8 + n, {
    read: (offset, length) => bytes.subarray(offset, offset + length),
    fresh: false,
  });
}

/**
 * Opens a safetensors file on disk, reading only its header; each tensor is read from disk
 * when asked for (the file is opened per read, so nothing needs closing).
 */
export function readSafetensorsFile(path: string): SafetensorsFile {
  const io = (e: unknown): WeightsError =>
    new WeightsError("io", path, `${path}: cannot read: ${oneLine(errorText(e))}`, [], {
      cause: e,
    });
  let size: number;
  let header: Uint8Array;
  let n: number;
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw io(e);
  }
  try {
    size = fstatSync(fd).size;
    const prefix = readAt(fd, 0, Math.min(8, size));
    n = readHeaderLength(prefix, size, path);
    header = readAt(fd, 8, n);
  } catch (e) {
    throw e instanceof WeightsError ? e : io(e);
  } finally {
    closeSync(fd);
  }
  const { metadata, tensors } = parseHeader(header, size - 8 - n, path);
  return new SafetensorsFile(path, metadata, tensors, 8 + n, {
    fresh: true,
    read(offset, length) {
      let f: number;
      try {
        f = openSync(path, "r");
      } catch (e) {
        throw io(e);
      }
      try {
        // The header was validated against this size; a different size means another writer.
        const now = fstatSync(f).size;
        if (now !== size) {
          throw new WeightsError(
            "changed",
            path,
            `${path}: changed on disk since its header was read (${size} bytes, now ${now})`,
          );
        }
        return readAt(f, offset, length);
      } catch (e) {
        throw e instanceof WeightsError ? e : io(e);
      } finally {
        closeSync(f);
      }
    },
  });
}

/** The most one read asks for: Node refuses lengths of 2 GiB and more ("out of range"). */
const READ_CHUNK = 2 ** 30;

function readAt(fd: number, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const got = readSync(fd, out, done, Math.min(length - done, READ_CHUNK), offset + done);
    if (got === 0) throw new Error(`unexpected end of file at byte ${offset + done}`);
    done += got;
  }
  return out;
}

/** Checks the 8-byte length prefix against the file size; returns the header length. */
function readHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  const fail = (code: WeightsErrorCode, problem: string): never => {
    throw new WeightsError(code, file, `${file}: ${problem}`);
  };
  if (fileSize === 0) fail("empty", "empty file (0 bytes)");
  if (fileSize < 8) {
    fail(
      "too-short",
      `too short: ${fileSize} bytes, but a safetensors file starts with an 8-byte header length`,
    );
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    fail(
      "header-too-large",
      `header length ${n} is absurd (limit ${MAX_HEADER_BYTES} bytes); not a safetensors file?`,
    );
  }
  if (8n + n > BigInt(fileSize)) {
    fail("truncated", `truncated: header says ${n} bytes, file has ${fileSize}`);
  }
  return Number(n);
}

/** Validates the JSON header against a data section of `dataLength` bytes. */
function parseHeader(
  headerBytes: Uint8Array,
  dataLength: number,
  file: string,
): { metadata: Map<string, string> | undefined; tensors: TensorInfo[] } {
  const fail = (code: WeightsErrorCode, problem: string): never => {
    throw new WeightsError(code, file, `${file}: ${problem}`);
  };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    return fail("header-not-utf8", "header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(
      "header-not-json",
      `header is not valid JSON (${clip(oneLine(errorText(e)), 100)})`,
    );
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    fail("header-not-object", `header is a JSON ${jsonKind(json)}, not an object`);
  }
  const header = json as Record<string, unknown>;
  // JSON.parse keeps the last of duplicate keys silently; the reference rejects them.
  const dup = findDuplicateKey(text);
  if (dup) {
    const { depth, parent, key } = dup;
    fail(
      "duplicate-key",
      depth === 1
        ? key === "__metadata__"
          ? `header has "__metadata__" twice`
          : `duplicate tensor name ${q(key)} in the header`
        : depth === 2 && parent !== undefined
          ? `tensor ${q(parent)}: duplicate field ${q(key)}`
          : `duplicate key ${q(key)} in the header`,
    );
  }

  let metadata: Map<string, string> | undefined;
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = parseMetadata(entry, fail);
      continue;
    }
    const t = q(name);
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      fail("bad-entry", `tensor ${t}: expected {dtype, shape, data_offsets}, found ${show(entry)}`);
    }
    const e = entry as Record<string, unknown>;
    const missing = ["dtype", "shape", "data_offsets"].filter((k) => !Object.hasOwn(e, k));
    if (missing.length > 0) {
      fail("missing-field", `tensor ${t}: missing ${missing.map((k) => `"${k}"`).join(", ")}`);
    }
    const dtype = e.dtype;
    if (typeof dtype !== "string" || !Object.hasOwn(DTYPE_SIZE, dtype)) {
      if (typeof dtype === "string" && OTHER_DTYPES.has(dtype)) {
        fail(
          "unsupported-dtype",
          `tensor ${t}: dtype ${dtype} is not supported (moec reads ${Object.keys(DTYPE_SIZE).join(", ")})`,
        );
      }
      fail("unknown-dtype", `tensor ${t}: unknown dtype ${show(dtype)}`);
    }
    const dt = dtype as SafetensorsDtype;
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      fail(
        "bad-shape",
        `tensor ${t}: shape must be a list of non-negative integers, found ${show(shape)}`,
      );
    }
    const dims = shape as number[];
    const offsets = e.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      fail(
        "bad-offsets",
        `tensor ${t}: data_offsets must be [begin, end], two non-negative integers, found ${show(offsets)}`,
      );
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) {
      fail("bad-offsets", `tensor ${t}: data_offsets begin ${begin} is after end ${end}`);
    }
    const numel = dims.reduce((a, b) => a * b, 1);
    const nbytes = numel * DTYPE_SIZE[dt];
    if (!Number.isSafeInteger(nbytes)) {
      fail("size-mismatch", `tensor ${t}: shape ${showShape(dims)} is impossibly large`);
    }
    if (end - begin !== nbytes) {
      fail(
        "size-mismatch",
        `tensor ${t}: ${dt} ${showShape(dims)} needs ${nbytes} bytes, data_offsets [${begin}, ${end}] hold ${end - begin}`,
      );
    }
    if (end > dataLength) {
      fail(
        "out-of-bounds",
        `tensor ${t}: data_offsets [${begin}, ${end}] run past the end of the data (${dataLength} bytes)`,
      );
    }
    tensors.push({ name, dtype: dt, shape: dims, begin, end });
  }

  // The reference requires the tensors to tile the data exactly: no overlap, no gap, no tail.
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let prev: TensorInfo | undefined;
  for (const t of tensors) {
    if (prev && t.begin < covered) {
      fail(
        "overlap",
        `tensors ${q(prev.name)} [${prev.begin}, ${prev.end}] and ${q(t.name)} [${t.begin}, ${t.end}] overlap`,
      );
    }
    if (t.begin > covered) {
      fail(
        "gap",
        `bytes [${covered}, ${t.begin}) of the data belong to no tensor (${prev ? `between ${q(prev.name)} and ${q(t.name)}` : `before ${q(t.name)}`})`,
      );
    }
    covered = t.end;
    prev = t;
  }
  if (covered !== dataLength) {
    fail(
      "trailing-bytes",
      `${dataLength - covered} bytes after the last tensor belong to no tensor (data is ${dataLength} bytes, tensors end at ${covered})`,
    );
  }
  return { metadata, tensors };
}

function parseMetadata(
  entry: unknown,
  fail: (code: WeightsErrorCode, problem: string) => never,
): Map<string, string> {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    fail("bad-metadata", `__metadata__ must map strings to strings, found ${show(entry)}`);
  }
  const out = new Map<string, string>();
  for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
    if (typeof v !== "string") {
      fail("bad-metadata", `__metadata__ must map strings to strings; ${q(k)} is ${show(v)}`);
    }
    out.set(k, v as string);
  }
  return out;
}

/**
 * The first repeated key of any object in a JSON text already known to be valid: the key, the
 * object's nesting depth (1 = the header itself) and the object's own key in its parent.
 * `__metadata__` is exempt: the reference keeps the last of repeated metadata keys, as
 * JSON.parse does, and a free-form note is no reason to refuse a checkpoint.
 */
function findDuplicateKey(
  text: string,
): { depth: number; parent: string | undefined; key: string } | undefined {
  interface Frame {
    object: boolean;
    keys: Set<string>;
    expectKey: boolean;
    /** This container's key in its parent object; undefined at top level or in arrays. */
    ownKey: string | undefined;
    lastKey: string | undefined;
  }
  const stack: Frame[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      while (text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c /* \ */ ? 2 : 1;
      const top = stack[stack.length - 1];
      if (top?.object && top.expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        const exempt = stack.length === 2 && top.ownKey === "__metadata__";
        if (top.keys.has(key) && !exempt) return { depth: stack.length, parent: top.ownKey, key };
        top.keys.add(key);
        top.lastKey = key;
        top.expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      const parent = stack[stack.length - 1];
      stack.push({
        object: c === 0x7b,
        keys: new Set(),
        expectKey: c === 0x7b,
        ownKey: parent?.object ? parent.lastKey : undefined,
        lastKey: undefined,
      });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top?.object) top.expectKey = true;
    }
  }
  return undefined;
}

/** Serialises tensors exactly as the reference implementation does (see `DTYPE_RANK`). */
export function writeSafetensors(
  tensors: ReadonlyMap<string, TensorToWrite>,
  metadata?: ReadonlyMap<string, string> | Readonly<Record<string, string>>,
): Uint8Array {
  const chunks = [...encodeSafetensors(tensors, metadata)()];
  const out = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Writes a safetensors file atomically (see `writeFileAtomic`), encoding one tensor at a time.
 * Invalid tensors are rejected before the disk is touched.
 */
export function writeSafetensorsFile(
  path: string,
  tensors: ReadonlyMap<string, TensorToWrite>,
  metadata?: ReadonlyMap<string, string> | Readonly<Record<string, string>>,
): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

/**
 * Checks the tensors and builds the header now; returns the file as chunks (length prefix,
 * header, then each tensor's bytes, encoded as they are consumed).
 */
function encodeSafetensors(
  tensors: ReadonlyMap<string, TensorToWrite>,
  metadata?: ReadonlyMap<string, string> | Readonly<Record<string, string>>,
): () => Generator<Uint8Array> {
  const encoder = new TextEncoder();
  const order = [...tensors.entries()].map(([name, t]) => {
    checkTensorToWrite(name, t);
    return { name, t, key: encoder.encode(name) };
  });
  // Descending alignment, then name by UTF-8 bytes (Rust's string order).
  order.sort((a, b) => DTYPE_RANK[b.t.dtype] - DTYPE_RANK[a.t.dtype] || compareBytes(a.key, b.key));

  const fields: string[] = [];
  if (metadata !== undefined) {
    const entries = metadata instanceof Map ? [...metadata] : Object.entries(metadata);
    for (const [k, v] of entries) {
      if (typeof k !== "string" || typeof v !== "string") {
        throw new TypeError(`metadata must map strings to strings; ${show(k)} is ${show(v)}`);
      }
    }
    // The reference iterates a hash map here; sorting makes our output reproducible.
    entries.sort(([a], [b]) => compareBytes(encoder.encode(a), encoder.encode(b)));
    const body = entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",");
    fields.push(`"__metadata__":{${body}}`);
  }
  let offset = 0;
  for (const { name, t } of order) {
    const nbytes = t.data.length * DTYPE_SIZE[t.dtype];
    const shape = t.shape.join(",");
    fields.push(
      `${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${shape}],"data_offsets":[${offset},${offset + nbytes}]}`,
    );
    offset += nbytes;
  }
  const json = encoder.encode(`{${fields.join(",")}}`);
  // Pad with spaces so the data section starts 8-byte aligned.
  const header = new Uint8Array(json.length + ((8 - (json.length % 8)) % 8)).fill(0x20);
  header.set(json);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(header.length), true);
  return function* () {
    yield prefix;
    yield header;
    for (const { name, t } of order) yield encodeTensor(name, t);
  };
}

function checkTensorToWrite(name: string, t: TensorToWrite): void {
  if (name === "__metadata__") throw new TypeError(`"__metadata__" cannot name a tensor`);
  if (!Object.hasOwn(DTYPE_SIZE, t.dtype)) {
    throw new TypeError(`tensor ${q(name)}: cannot write dtype ${show(t.dtype)}`);
  }
  if (!t.shape.every(isCount)) {
    throw new TypeError(
      `tensor ${q(name)}: shape ${show(t.shape)} is not a list of non-negative integers`,
    );
  }
  const numel = t.shape.reduce((a, b) => a * b, 1);
  if (t.data.length !== numel) {
    throw new RangeError(
      `tensor ${q(name)}: shape ${showShape(t.shape)} has ${numel} elements, data has ${t.data.length}`,
    );
  }
}

function encodeTensor(name: string, t: TensorToWrite): Uint8Array {
  const n = t.data.length;
  const out = new Uint8Array(n * DTYPE_SIZE[t.dtype]);
  const view = new DataView(out.buffer);
  const bad = (i: number, what: string): never => {
    throw new RangeError(`tensor ${q(name)}: value ${String(t.data[i])} at index ${i} ${what}`);
  };
  const num = (i: number): number => {
    const v = t.data[i]!;
    return typeof v === "bigint" ? Number(v) : v;
  };
  // Same layout already (on little-endian hosts): copy the bytes in one go.
  if (
    LITTLE_ENDIAN &&
    ((t.dtype === "F32" && t.data instanceof Float32Array) ||
      (t.dtype === "I32" && t.data instanceof Int32Array))
  ) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    return out;
  }
  switch (t.dtype) {
    case "F32":
      for (let i = 0; i < n; i++) view.setFloat32(4 * i, num(i), true);
      break;
    case "F16":
      for (let i = 0; i < n; i++) view.setUint16(2 * i, f32ToF16Bits(num(i)), true);
      break;
    case "BF16":
      for (let i = 0; i < n; i++) view.setUint16(2 * i, f32ToBf16Bits(num(i)), true);
      break;
    case "I32":
      for (let i = 0; i < n; i++) {
        const v = t.data[i]!;
        if (typeof v === "bigint" ? BigInt.asIntN(32, v) !== v : (v | 0) !== v) {
          bad(i, "is not a 32-bit integer");
        }
        view.setInt32(4 * i, Number(v), true);
      }
      break;
    case "I64":
      for (let i = 0; i < n; i++) {
        const v = t.data[i]!;
        if (typeof v === "bigint") {
          if (BigInt.asIntN(64, v) !== v) bad(i, "is not a 64-bit integer");
          view.setBigInt64(8 * i, v, true);
        } else {
          if (!Number.isSafeInteger(v)) bad(i, "is not an integer");
          view.setBigInt64(8 * i, BigInt(v), true);
        }
      }
      break;
    case "BOOL":
      for (let i = 0; i < n; i++) {
        const v = num(i);
        if (v !== 0 && v !== 1) bad(i, "is not a boolean (0 or 1)");
        out[i] = v;
      }
      break;
  }
  return out;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits of `x` rounded to nearest, ties to even; NaN stays NaN. */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal in f16 (or zero): shift the full significand down, rounding half to even.
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rem = full & ((1 << shift) - 1);
    let r = full >>> shift;
    if (rem > half || (rem === half && (r & 1) === 1)) r++;
    return sign | r;
  }
  // A carry out of the mantissa bumps the exponent, up to infinity: both are correct.
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1) === 1)) r++;
  return sign | r;
}

/** bfloat16 bits of `x` rounded to nearest, ties to even; NaN becomes the quiet NaN 0x7fc0. */
export function f32ToBf16Bits(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0]!;
  if (Number.isNaN(f32Scratch[0])) return ((b >>> 16) & 0x8000) | 0x7fc0;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The f32 value of IEEE binary16 bits. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant !== 0 ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

let F16_TABLE: Float32Array | undefined;

/** All 65536 binary16 values, built once: decoding a checkpoint becomes a table lookup. */
function f16Table(): Float32Array {
  if (!F16_TABLE) {
    F16_TABLE = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) F16_TABLE[h] = f16BitsToF32(h);
  }
  return F16_TABLE;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Typed arrays use the host's byte order; the format is little-endian. */
function fromLittleEndian<T extends Float32Array | Int32Array>(a: T): T {
  if (!LITTLE_ENDIAN) {
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    for (let i = 0; i < bytes.length; i += 4) {
      bytes.subarray(i, i + 4).reverse();
    }
  }
  return a;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

function isCount(v: unknown): boolean {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** A name quoted as JSON: control characters escaped, so messages stay on one line. */
function q(name: string): string {
  return JSON.stringify(name);
}

export function showShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function show(v: unknown): string {
  if (v === undefined) return "nothing";
  return clip(showJson(v, 60), 60);
}

/**
 * JSON text of `v`, cut after about `max` characters: iterative and bounded, so a hostile
 * header's 100,000-deep array or a megabyte of shape costs what the message shows (the
 * recursive JSON.stringify would overflow the stack on the first).
 */
function showJson(v: unknown, max: number): string {
  let out = "";
  // Values still to print, last first; a Literal is punctuation between them.
  const pending: unknown[] = [v];
  while (pending.length > 0 && out.length <= max) {
    const x = pending.pop();
    if (x instanceof Literal) out += x.text;
    else if (Array.isArray(x)) {
      out += "[";
      pending.push(new Literal("]"));
      for (let i = x.length - 1; i >= 0; i--) {
        pending.push(x[i]);
        if (i > 0) pending.push(new Literal(","));
      }
    } else if (typeof x === "object" && x !== null) {
      const entries = Object.entries(x);
      out += "{";
      pending.push(new Literal("}"));
      for (let i = entries.length - 1; i >= 0; i--) {
        pending.push(entries[i]![1], new Literal(`${JSON.stringify(entries[i]![0])}:`));
        if (i > 0) pending.push(new Literal(","));
      }
    } else out += JSON.stringify(x) ?? String(x);
  }
  return pending.length > 0 ? `${out}…` : out;
}

class Literal {
  constructor(readonly text: string) {}
}

function jsonKind(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, " ").trim();
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
