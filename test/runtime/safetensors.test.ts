// The safetensors reader and writer against byte layouts worked out by hand (the reference
// implementation's own test vectors), every corruption the reader must name, and the atomic
// writers' promise that a failed write leaves the old content and no temporary behind.
import {
  chmodSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { freemem, tmpdir } from "node:os";
import path from "node:path";

import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { type FileData, writeDirAtomic, writeFileAtomic } from "../../runtime/atomic-write.js";
import {
  type TensorToWrite,
  WeightsError,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  readSafetensors,
  readSafetensorsFile,
  writeSafetensors,
  writeSafetensorsFile,
} from "../../runtime/safetensors.js";

const enc = new TextEncoder();

/** A file by hand: little-endian length, the header text as given, then the data bytes. */
function fileBytes(header: string, data: ArrayLike<number> = [], length?: number): Uint8Array {
  const h = enc.encode(header);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(length ?? h.length), true);
  out.set(h, 8);
  out.set(Array.from(data), 8 + h.length);
  return out;
}

function f32Bytes(values: number[]): number[] {
  return [...new Uint8Array(Float32Array.from(values).buffer)];
}

/** The message of the WeightsError `f` throws, checked to be one line naming the file. */
function failure(f: () => unknown): { code: string; message: string } {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(WeightsError);
    const err = e as WeightsError;
    expect(err.message).not.toContain("\n");
    expect(err.message.startsWith(`${err.file}: `)).toBe(true);
    return { code: err.code, message: err.message };
  }
  throw new Error("expected a WeightsError");
}

const read = (bytes: Uint8Array) => () => readSafetensors(bytes, "w.safetensors").names();
const entry = (dtype: string, shape: number[], begin: number, end: number) =>
  JSON.stringify({ dtype, shape, data_offsets: [begin, end] });

describe("writeSafetensors: the reference implementation's bytes", () => {
  it("writes one F32 tensor exactly (header needs no padding)", () => {
    const tensors = new Map<string, TensorToWrite>([
      ["attn.0", { dtype: "F32", shape: [1, 2, 3], data: [0, 1, 2, 3, 4, 5] }],
    ]);
    const header = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    expect(header.length).toBe(64);
    const expected = [
      64,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      ...enc.encode(header),
      ...f32Bytes([0, 1, 2, 3, 4, 5]),
    ];
    // The last float, 5.0, is 0x40a00000: spelled out so the fixture does not rest on our own encoder.
    expect(expected.slice(-4)).toEqual([0, 0, 160, 64]);
    expect([...writeSafetensors(tensors)]).toEqual(expected);
  });

  it("pads the header with spaces to a multiple of 8", () => {
    const tensors = new Map<string, TensorToWrite>([
      ["attn0", { dtype: "F32", shape: [1, 1, 2, 3], data: [0, 1, 2, 3, 4, 5] }],
    ]);
    const header =
      '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}' + " ".repeat(7);
    expect(header.length).toBe(72);
    expect([...writeSafetensors(tensors)]).toEqual([
      72,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      ...enc.encode(header),
      ...f32Bytes([0, 1, 2, 3, 4, 5]),
    ]);
  });

  it("writes an empty file and metadata like the reference", () => {
    expect([...writeSafetensors(new Map())]).toEqual([
      8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32,
    ]);
    const withMeta = writeSafetensors(new Map(), { framework: "pt" });
    expect([...withMeta]).toEqual([
      40,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      ...enc.encode('{"__metadata__":{"framework":"pt"}}     '),
    ]);
    expect(readSafetensors(withMeta, "m.safetensors").metadata).toEqual(
      new Map([["framework", "pt"]]),
    );
  });

  it("orders tensors by descending alignment, then by name", () => {
    const t = (dtype: TensorToWrite["dtype"]): TensorToWrite => ({ dtype, shape: [1], data: [1] });
    const bytes = writeSafetensors(
      new Map<string, TensorToWrite>([
        ["b", t("BOOL")],
        ["h", t("F16")],
        ["z", t("F32")],
        ["a", t("F32")],
        ["i", t("I32")],
        ["l", t("I64")],
        ["bf", t("BF16")],
      ]),
    );
    const file = readSafetensors(bytes, "o.safetensors");
    expect(file.names()).toEqual(["l", "a", "z", "i", "bf", "h", "b"]);
    expect([...file.tensors.values()].map((e) => [e.begin, e.end])).toEqual([
      [0, 8],
      [8, 12],
      [12, 16],
      [16, 20],
      [20, 22],
      [22, 24],
      [24, 25],
    ]);
    // Every tensor starts aligned to its element size within the 8-aligned data section.
    expect(file.dataStart % 8).toBe(0);
  });
});

describe("safetensors dtypes", () => {
  it("converts f32 to f16 bits, rounding to nearest even", () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [-2, 0xc000],
      [0.1, 0x2e66],
      [1 / 3, 0x3555],
      [65504, 0x7bff],
      [65520, 0x7c00], // halfway to the next binade: rounds to even, which is infinity
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // tie with zero: even
      [1.5 * 2 ** -25, 0x0001],
      [2 ** -14, 0x0400], // smallest normal
      [1 + 2 ** -11, 0x3c00], // tie between 0x3c00 and 0x3c01: even
      [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02: even
      [-0, 0x8000],
      [1e-9, 0x0000],
    ];
    for (const [x, bits] of cases) expect([x, f32ToF16Bits(x)]).toEqual([x, bits]);
    expect(f32ToF16Bits(NaN) & 0x7c00).toBe(0x7c00);
    expect(f32ToF16Bits(NaN) & 0x3ff).not.toBe(0);
  });

  it("converts f16 bits to values", () => {
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(f16BitsToF32(0xc000)).toBe(-2);
    expect(f16BitsToF32(0x7bff)).toBe(65504);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x0400)).toBe(2 ** -14);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
    expect(f16BitsToF32(0xfc00)).toBe(-Infinity);
    expect(f16BitsToF32(0x7e00)).toBeNaN();
    expect(Object.is(f16BitsToF32(0x8000), -0)).toBe(true);
  });

  it("converts f32 to bf16 bits, rounding to nearest even", () => {
    const f32 = (bits: number) => new Float32Array(new Uint32Array([bits]).buffer)[0]!;
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    expect(f32ToBf16Bits(-2)).toBe(0xc000);
    expect(f32ToBf16Bits(0.1)).toBe(0x3dcd); // 0x3dcccccd rounds up
    expect(f32ToBf16Bits(3.140625)).toBe(0x4049); // exact
    expect(f32ToBf16Bits(f32(0x3f808000))).toBe(0x3f80); // tie, even stays
    expect(f32ToBf16Bits(f32(0x3f818000))).toBe(0x3f82); // tie, odd rounds up
    expect(f32ToBf16Bits(f32(0x7f7fffff))).toBe(0x7f80); // largest f32 rounds to infinity
    expect(f32ToBf16Bits(NaN)).toBe(0x7fc0);
  });

  it("round-trips every dtype, with the stored bytes checked", () => {
    const tensors = new Map<string, TensorToWrite>([
      ["f32", { dtype: "F32", shape: [2, 2], data: Float32Array.from([1.5, -2, 3.25, 1e-30]) }],
      ["f16", { dtype: "F16", shape: [4], data: [1, -2, 65504, 0.1] }],
      ["bf16", { dtype: "BF16", shape: [3], data: [1, -2, 0.1] }],
      ["i32", { dtype: "I32", shape: [3], data: Int32Array.from([-(2 ** 31), 2 ** 31 - 1, 7]) }],
      ["i64", { dtype: "I64", shape: [3], data: [-5, 2 ** 31 - 1, -(2 ** 31)] }],
      ["i64big", { dtype: "I64", shape: [1], data: new BigInt64Array([12n]) }],
      ["mask", { dtype: "BOOL", shape: [3], data: [1, 0, 1] }],
      ["empty", { dtype: "F32", shape: [0, 3], data: [] }],
      ["scalar", { dtype: "F32", shape: [], data: [42] }],
    ]);
    const bytes = writeSafetensors(
      tensors,
      new Map([
        ["format", "pt"],
        ["note", 'a "quoted"\nline'],
      ]),
    );
    const file = readSafetensors(bytes, "all.safetensors");
    expect(file.metadata).toEqual(
      new Map([
        ["format", "pt"],
        ["note", 'a "quoted"\nline'],
      ]),
    );

    expect([...file.readBytes("f16")]).toEqual([0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x66, 0x2e]);
    expect([...file.readBytes("bf16")]).toEqual([0x80, 0x3f, 0x00, 0xc0, 0xcd, 0x3d]);
    expect([...file.readBytes("i64")]).toEqual([
      0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0,
      0x80, 0xff, 0xff, 0xff, 0xff,
    ]);
    expect([...file.readBytes("mask")]).toEqual([1, 0, 1]);

    const f32 = file.read("f32");
    expect(f32.data).toBeInstanceOf(Float32Array);
    expect([...f32.data]).toEqual([...Float32Array.from([1.5, -2, 3.25, 1e-30])]);
    expect(f32.shape).toEqual([2, 2]);
    const f16 = file.read("f16");
    expect(f16.data).toBeInstanceOf(Float32Array);
    expect([...f16.data]).toEqual([1, -2, 65504, f16BitsToF32(0x2e66)]);
    expect(f16.dtype).toBe("F16");
    const bf16 = file.read("bf16");
    expect([...bf16.data]).toEqual([
      1,
      -2,
      new Float32Array(new Uint32Array([0x3dcd0000]).buffer)[0],
    ]);
    expect(file.read("i32").data).toEqual(Int32Array.from([-(2 ** 31), 2 ** 31 - 1, 7]));
    const i64 = file.read("i64");
    expect(i64.data).toEqual(Int32Array.from([-5, 2 ** 31 - 1, -(2 ** 31)]));
    expect(i64.dtype).toBe("I64");
    expect([...file.read("i64big").data]).toEqual([12]);
    expect(file.read("mask").data).toEqual(Uint8Array.from([1, 0, 1]));
    const empty = file.read("empty");
    expect([empty.shape, empty.data.length]).toEqual([[0, 3], 0]);
    const scalar = file.read("scalar");
    expect([scalar.shape, [...scalar.data]]).toEqual([[], [42]]);
  });

  it("reads lazily: tensors are views until converted, conversions are fresh copies", () => {
    const bytes = writeSafetensors(
      new Map([["w", { dtype: "F32", shape: [2], data: [1, 2] } as TensorToWrite]]),
    );
    const file = readSafetensors(bytes, "lazy.safetensors");
    expect(file.readBytes("w").buffer).toBe(bytes.buffer);
    const t = file.read("w");
    t.data[0] = 99;
    expect(file.read("w").data[0]).toBe(1);
  });

  it("reads a file that was not padded, from an unaligned buffer", () => {
    const header = `{"w":${entry("F32", [2], 0, 8)}}`;
    const inner = fileBytes(header, f32Bytes([3, -4]));
    const shifted = new Uint8Array(inner.length + 1);
    shifted.set(inner, 1);
    const file = readSafetensors(shifted.subarray(1), "odd.safetensors");
    expect([...file.read("w").data]).toEqual([3, -4]);
  });

  it("reads any non-zero BOOL byte as true (1), as the reference does", () => {
    const file = readSafetensors(
      fileBytes(`{"m":${entry("BOOL", [3], 0, 3)}}`, [2, 0, 255]),
      "b.safetensors",
    );
    expect([...file.read("m").data]).toEqual([1, 0, 1]);
  });

  it("rejects values the dtype cannot hold when writing", () => {
    const w = (t: TensorToWrite) => () => writeSafetensors(new Map([["t", t]]));
    expect(w({ dtype: "I32", shape: [1], data: [2 ** 31] })).toThrow(
      'tensor "t": value 2147483648 at index 0 is not a 32-bit integer',
    );
    expect(w({ dtype: "I64", shape: [1], data: [0.5] })).toThrow("is not an integer");
    expect(w({ dtype: "BOOL", shape: [1], data: [2] })).toThrow("is not a boolean");
    expect(w({ dtype: "F32", shape: [2, 2], data: [1] })).toThrow(
      'tensor "t": shape [2, 2] has 4 elements, data has 1',
    );
  });
});

describe("readSafetensors: corruptions", () => {
  const ok = `{"a":${entry("F32", [2], 0, 8)},"b":${entry("F32", [2], 8, 16)}}`;
  const data16 = new Array<number>(16).fill(0);

  it("accepts the well-formed base case the corruptions start from", () => {
    expect(read(fileBytes(ok, data16))()).toEqual(["a", "b"]);
  });

  const cases: [string, string, () => Uint8Array, string][] = [
    ["empty", "empty file", () => new Uint8Array(0), "w.safetensors: empty file (0 bytes)"],
    [
      "too-short",
      "shorter than 8 bytes",
      () => new Uint8Array(5),
      "w.safetensors: too short: 5 bytes, but a safetensors file starts with an 8-byte header length",
    ],
    [
      "header-too-large",
      "absurd header length",
      () => fileBytes("{}", [], 200_000_000),
      "w.safetensors: header length 200000000 is absurd (limit 100000000 bytes); not a safetensors file?",
    ],
    [
      "truncated",
      "header longer than the file",
      () => fileBytes(ok.slice(0, 92 - 8), [], 4096),
      "w.safetensors: truncated: header says 4096 bytes, file has 92",
    ],
    [
      "header-not-utf8",
      "header not UTF-8",
      () => {
        const b = fileBytes('{"\u00e9":1}');
        b[10] = 0xff;
        return b;
      },
      "w.safetensors: header is not valid UTF-8",
    ],
    [
      "header-not-json",
      "header not JSON",
      () => fileBytes('{"a": '),
      "w.safetensors: header is not valid JSON (",
    ],
    [
      "header-not-object",
      "header JSON not an object",
      () => fileBytes("[1, 2]"),
      "w.safetensors: header is a JSON array, not an object",
    ],
    [
      "duplicate-key",
      "duplicate tensor names",
      () => fileBytes(`{"a":${entry("F32", [2], 0, 8)},"a":${entry("F32", [2], 8, 16)}}`, data16),
      'w.safetensors: duplicate tensor name "a" in the header',
    ],
    [
      "bad-entry",
      "entry not an object",
      () => fileBytes('{"a":[0, 8]}'),
      'w.safetensors: tensor "a": expected {dtype, shape, data_offsets}, found [0,8]',
    ],
    [
      "missing-field",
      "entry missing fields",
      () => fileBytes('{"a":{"shape":[2],"data_offsets":[0,8]}}', new Array(8).fill(0)),
      'w.safetensors: tensor "a": missing "dtype"',
    ],
    [
      "unknown-dtype",
      "unknown dtype",
      () => fileBytes(`{"a":${entry("Q4", [2], 0, 8)}}`, new Array(8).fill(0)),
      'w.safetensors: tensor "a": unknown dtype "Q4"',
    ],
    [
      "unsupported-dtype",
      "valid but unsupported dtype",
      () => fileBytes(`{"a":${entry("F64", [1], 0, 8)}}`, new Array(8).fill(0)),
      'w.safetensors: tensor "a": dtype F64 is not supported (moec reads F32, F16, BF16, I32, I64, BOOL)',
    ],
    [
      "bad-shape",
      "negative dimension",
      () => fileBytes(`{"a":${entry("F32", [2, -1], 0, 8)}}`, new Array(8).fill(0)),
      'w.safetensors: tensor "a": shape must be a list of non-negative integers, found [2,-1]',
    ],
    [
      "bad-offsets",
      "data_offsets of the wrong length",
      () => fileBytes('{"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}}', new Array(8).fill(0)),
      'w.safetensors: tensor "a": data_offsets must be [begin, end], two non-negative integers, found [8]',
    ],
    [
      "bad-offsets",
      "data_offsets begin after end",
      () => fileBytes(`{"a":${entry("F32", [0], 8, 0)}}`, new Array(8).fill(0)),
      'w.safetensors: tensor "a": data_offsets begin 8 is after end 0',
    ],
    [
      "size-mismatch",
      "byte length not numel × dtype size",
      () => fileBytes(`{"a":${entry("F32", [2, 3], 0, 20)}}`, new Array(20).fill(0)),
      'w.safetensors: tensor "a": F32 [2, 3] needs 24 bytes, data_offsets [0, 20] hold 20',
    ],
    [
      "out-of-bounds",
      "offsets outside the buffer",
      () => fileBytes(`{"a":${entry("F32", [4], 0, 16)}}`, new Array(8).fill(0)),
      'w.safetensors: tensor "a": data_offsets [0, 16] run past the end of the data (8 bytes)',
    ],
    [
      "overlap",
      "overlapping tensors",
      () =>
        fileBytes(
          `{"a":${entry("F32", [4], 0, 16)},"b":${entry("F32", [4], 8, 24)}}`,
          new Array(24).fill(0),
        ),
      'w.safetensors: tensors "a" [0, 16] and "b" [8, 24] overlap',
    ],
    [
      "gap",
      "bytes between tensors",
      () =>
        fileBytes(
          `{"a":${entry("F32", [2], 0, 8)},"b":${entry("F32", [2], 12, 20)}}`,
          new Array(20).fill(0),
        ),
      'w.safetensors: bytes [8, 12) of the data belong to no tensor (between "a" and "b")',
    ],
    [
      "trailing-bytes",
      "bytes after the last tensor",
      () => fileBytes(`{"a":${entry("F32", [2], 0, 8)}}`, new Array(12).fill(0)),
      "w.safetensors: 4 bytes after the last tensor belong to no tensor (data is 12 bytes, tensors end at 8)",
    ],
    [
      "bad-metadata",
      "metadata not a string map",
      () => fileBytes('{"__metadata__":{"epoch":3}}'),
      'w.safetensors: __metadata__ must map strings to strings; "epoch" is 3',
    ],
  ];

  for (const [code, what, make, message] of cases) {
    it(`${what}: ${code}`, () => {
      const got = failure(read(make()));
      expect(got.code).toBe(code);
      if (message.endsWith("(")) expect(got.message.startsWith(message)).toBe(true);
      else expect(got.message).toBe(message);
    });
  }

  it("gives every corruption its own message", () => {
    const messages = cases.map(([, , make]) => failure(read(make())).message);
    expect(new Set(messages).size).toBe(cases.length);
    expect(cases.length).toBeGreaterThanOrEqual(12);
  });

  it("names other duplicate keys by where they are", () => {
    // Repeated metadata keys are not: the reference keeps the last, and so do we.
    const meta = readSafetensors(fileBytes('{"__metadata__":{"k":"1","k":"2"}}'), "m.safetensors");
    expect(meta.metadata).toEqual(new Map([["k", "2"]]));
    expect(
      failure(
        read(
          fileBytes(
            '{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
            new Array(8).fill(0),
          ),
        ),
      ).message,
    ).toBe('w.safetensors: tensor "a": duplicate field "dtype"');
    // An escaped spelling of the same key is the same key.
    expect(
      failure(
        read(fileBytes(`{"a":${entry("F32", [0], 0, 0)},"\\u0061":${entry("F32", [0], 0, 0)}}`)),
      ).message,
    ).toBe('w.safetensors: duplicate tensor name "a" in the header');
  });

  it("accepts a header padded with spaces, names with escapes, and a reordered header", () => {
    const header = `{"b":${entry("F32", [1], 4, 8)},"a \\"x\\"":${entry("F32", [1], 0, 4)}}   `;
    const file = readSafetensors(fileBytes(header, f32Bytes([1, 2])), "p.safetensors");
    expect(file.names()).toEqual(['a "x"', "b"]);
    expect([...file.read("b").data]).toEqual([2]);
  });

  it("rejects an I64 value outside i32 when converting it", () => {
    const bytes = writeSafetensors(
      new Map([["ids", { dtype: "I64", shape: [3], data: [1, 2 ** 31, 3] } as TensorToWrite]]),
    );
    const file = readSafetensors(bytes, "ids.safetensors");
    expect(file.readBytes("ids").length).toBe(24); // the raw bytes are still available
    const got = failure(() => file.read("ids"));
    expect(got).toEqual({
      code: "out-of-range",
      message: 'ids.safetensors: tensor "ids": I64 value 2147483648 at index 1 does not fit in i32',
    });
    const negative = readSafetensors(
      writeSafetensors(
        new Map([["n", { dtype: "I64", shape: [1], data: [-(2 ** 31) - 1] } as TensorToWrite]]),
      ),
      "n.safetensors",
    );
    expect(failure(() => negative.read("n")).message).toBe(
      'n.safetensors: tensor "n": I64 value -2147483649 at index 0 does not fit in i32',
    );
  });

  it("names a 100,000-deep shape or offset list without overflowing the stack", () => {
    const deep = "[".repeat(100_000) + "]".repeat(100_000);
    const shape = failure(
      read(fileBytes(`{"a":{"dtype":"F32","shape":${deep},"data_offsets":[0,0]}}`)),
    );
    expect(shape.code).toBe("bad-shape");
    expect(shape.message).toMatch(/found \[\[\[+…$/);
    expect(shape.message.length).toBeLessThan(200);
    const offsets = failure(
      read(fileBytes(`{"a":{"dtype":"F32","shape":[],"data_offsets":${deep}}}`)),
    );
    expect(offsets.code).toBe("bad-offsets");
    expect(failure(read(fileBytes(`{"a":${deep}}`))).code).toBe("bad-entry");
    expect(failure(read(fileBytes(`{"__metadata__":{"k":${deep}}}`))).code).toBe("bad-metadata");
    // Short values still print whole, objects included.
    expect(
      failure(
        read(fileBytes(`{"a":{"dtype":"F32","shape":[1,{"x":[2,"y"]}],"data_offsets":[0,4]}}`)),
      ).message,
    ).toContain('found [1,{"x":[2,"y"]}]');
  });

  it("reports a tensor that is not there", () => {
    const file = readSafetensors(fileBytes(ok, data16), "w.safetensors");
    expect(failure(() => file.read("c"))).toEqual({
      code: "not-found",
      message: 'w.safetensors: no tensor "c" in this file',
    });
  });

  it("keeps names with newlines on one line", () => {
    const got = failure(read(fileBytes(`{"a\\nb":${entry("Q4", [0], 0, 0)}}`)));
    expect(got.message).toBe('w.safetensors: tensor "a\\nb": unknown dtype "Q4"');
  });
});

describe("files on disk", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), "moec-st-"));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const sample = new Map<string, TensorToWrite>([
    ["w", { dtype: "F32", shape: [2, 2], data: [1, 2, 3, 4] }],
    ["ids", { dtype: "I64", shape: [2], data: [5, 6] }],
  ]);

  it("writes, then reads the header only and each tensor on request", () => {
    const file = path.join(dir, "model.safetensors");
    writeSafetensorsFile(file, sample, { format: "pt" });
    expect(readdirSync(dir)).toEqual(["model.safetensors"]);
    expect(readFileSync(file)).toEqual(Buffer.from(writeSafetensors(sample, { format: "pt" })));
    const st = readSafetensorsFile(file);
    expect(st.names()).toEqual(["ids", "w"]);
    expect(st.metadata?.get("format")).toBe("pt");
    expect([...st.read("w").data]).toEqual([1, 2, 3, 4]);
    expect([...st.read("ids").data]).toEqual([5, 6]);
    // A file changed under us is reported, not misread.
    truncateSync(file, statSync(file).size - 4);
    expect(failure(() => st.read("w")).code).toBe("changed");
    expect(failure(() => readSafetensorsFile(file)).message).toMatch(/trailing|past the end/);
  });

  it("reports a missing file and a truncated file by path", () => {
    const missing = path.join(dir, "nope.safetensors");
    const got = failure(() => readSafetensorsFile(missing));
    expect(got.code).toBe("io");
    expect(got.message).toContain(`${missing}: cannot read: ENOENT`);
    const short = path.join(dir, "short.safetensors");
    writeFileSync(short, fileBytes("{}", new Array(90).fill(0), 4096));
    expect(failure(() => readSafetensorsFile(short)).message).toBe(
      `${short}: truncated: header says 4096 bytes, file has 100`,
    );
  });

  it("reads a tensor of 2 GiB or more: the header alone, a range, and (memory allowing) whole", () => {
    // A sparse file: the header declares a 2.5 GiB F32 tensor, ftruncate makes the size, and
    // only its last element and the small tensor after it are written.
    const file = path.join(dir, "big.safetensors");
    const big = 5 * 2 ** 27; // elements: 2.5 GiB
    const bigBytes = 4 * big;
    const header = `{"big":${entry("F32", [big], 0, bigBytes)},"w":${entry("F32", [2], bigBytes, bigBytes + 8)}}`;
    writeFileSync(file, fileBytes(header));
    const dataStart = 8 + enc.encode(header).length;
    truncateSync(file, dataStart + bigBytes + 8);
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.from(f32Bytes([7.5])), 0, 4, dataStart + bigBytes - 4);
    writeSync(fd, Buffer.from(f32Bytes([1.5, -2])), 0, 8, dataStart + bigBytes);
    closeSync(fd);

    const t0 = performance.now();
    const st = readSafetensorsFile(file);
    expect(st.info("big").shape).toEqual([big]);
    // Past 2 GiB into the file: the small tensor, and a range at the big one's end.
    expect([...st.read("w").data]).toEqual([1.5, -2]);
    const tail = st.readByteRange("big", bigBytes - 8, 8);
    expect([...new Float32Array(tail.buffer, tail.byteOffset, 2)]).toEqual([0, 7.5]);
    expect(performance.now() - t0).toBeLessThan(2000); // nothing read whole
    expect(failure(() => st.readByteRange("big", bigBytes - 4, 8)).code).toBe("out-of-range");
    // The whole tensor needs its 2.5 GiB in memory (the data is shared, not copied).
    if (freemem() < 8 * 2 ** 30) return;
    const whole = st.read("big").data;
    expect(whole.length).toBe(big);
    expect(whole[big - 1]).toBe(7.5);
    expect(whole[big - 2]).toBe(0);
  }, 60_000);

  it("rejects invalid tensors before touching the disk", () => {
    const file = path.join(dir, "model.safetensors");
    writeFileSync(file, "old");
    expect(() =>
      writeSafetensorsFile(file, new Map([["x", { dtype: "F32", shape: [3], data: [1] }]])),
    ).toThrow("has 3 elements, data has 1");
    expect(readFileSync(file, "utf8")).toBe("old");
    expect(readdirSync(dir)).toEqual(["model.safetensors"]);
  });
});

describe("atomic writes", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), "moec-atomic-"));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it("writes text, bytes and chunks, leaving no temporary file", () => {
    const file = path.join(dir, "out.txt");
    writeFileAtomic(file, "héllo");
    expect(readFileSync(file, "utf8")).toBe("héllo");
    writeFileAtomic(file, new Uint8Array([1, 2]));
    expect([...readFileSync(file)]).toEqual([1, 2]);
    writeFileAtomic(file, [new Uint8Array([3]), new Uint8Array([4, 5])]);
    expect([...readFileSync(file)]).toEqual([3, 4, 5]);
    expect(readdirSync(dir)).toEqual(["out.txt"]);
  });

  it("keeps the old file when the data fails midway", () => {
    const file = path.join(dir, "model.safetensors");
    writeFileSync(file, "old contents");
    function* failing(): Generator<Uint8Array> {
      yield new Uint8Array(1024).fill(7);
      throw new Error("disk full (simulated)");
    }
    expect(() => writeFileAtomic(file, failing)).toThrow("disk full (simulated)");
    expect(readFileSync(file, "utf8")).toBe("old contents");
    expect(readdirSync(dir)).toEqual(["model.safetensors"]);
  });

  it("fails cleanly when the target is a directory", () => {
    const target = path.join(dir, "model.safetensors");
    mkdirSync(target);
    writeFileSync(path.join(target, "keep"), "x");
    expect(() => writeSafetensorsFile(target, sample())).toThrow();
    expect(readdirSync(dir)).toEqual(["model.safetensors"]);
    expect(readFileSync(path.join(target, "keep"), "utf8")).toBe("x");
  });

  it("keeps the mode of a file it replaces", () => {
    const file = path.join(dir, "secret.bin");
    writeFileSync(file, "a");
    chmodSync(file, 0o600);
    writeFileAtomic(file, "b");
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it("writes a directory, then replaces it whole", () => {
    const out = path.join(dir, "bundle");
    writeDirAtomic(
      out,
      new Map<string, FileData>([
        ["model.wgsl", "// v1"],
        ["weights/model.safetensors", writeSafetensors(sample())],
        ["stale.txt", "only in v1"],
      ]),
    );
    expect(readdirSync(out).sort()).toEqual(["model.wgsl", "stale.txt", "weights"]);
    expect(readSafetensorsFile(path.join(out, "weights/model.safetensors")).names()).toEqual(["w"]);

    writeDirAtomic(out, new Map([["model.wgsl", "// v2"]]));
    expect(readdirSync(out)).toEqual(["model.wgsl"]);
    expect(readFileSync(path.join(out, "model.wgsl"), "utf8")).toBe("// v2");
    expect(readdirSync(dir)).toEqual(["bundle"]);
  });

  it("keeps the old directory when writing the new one fails", () => {
    const out = path.join(dir, "bundle");
    writeDirAtomic(out, new Map([["a.txt", "v1"]]));
    const failing = () => {
      throw new Error("encoder crashed (simulated)");
    };
    expect(() =>
      writeDirAtomic(
        out,
        new Map<string, FileData>([
          ["a.txt", "v2"],
          ["b.bin", failing],
        ]),
      ),
    ).toThrow("encoder crashed (simulated)");
    expect(readdirSync(out)).toEqual(["a.txt"]);
    expect(readFileSync(path.join(out, "a.txt"), "utf8")).toBe("v1");
    expect(readdirSync(dir)).toEqual(["bundle"]);
  });

  it("refuses paths outside the bundle, a file in the way, and a vetoed replacement", () => {
    const out = path.join(dir, "bundle");
    for (const bad of ["../escape.txt", "/abs.txt", "a/../b.txt", "", "a//b"]) {
      expect(() => writeDirAtomic(out, new Map([[bad, "x"]]))).toThrow("invalid file name");
    }
    expect(readdirSync(dir)).toEqual([]);
    const file = path.join(dir, "file");
    writeFileSync(file, "keep");
    expect(() => writeDirAtomic(file, new Map([["a", "x"]]))).toThrow("is not a directory");
    expect(readFileSync(file, "utf8")).toBe("keep");
    writeDirAtomic(out, new Map([["a", "1"]]));
    expect(() => writeDirAtomic(out, new Map([["a", "2"]]), { mayReplace: () => false })).toThrow(
      "not replacing it",
    );
    expect(readFileSync(path.join(out, "a"), "utf8")).toBe("1");
    expect(readdirSync(dir).sort()).toEqual(["bundle", "file"]);
  });

  function sample(): Map<string, TensorToWrite> {
    return new Map([["w", { dtype: "F32", shape: [1], data: [1] }]]);
  }
});
