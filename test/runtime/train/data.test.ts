// Training data files: validation against the input ports (each error by its message), seeded
// batch order, every example once per epoch, and resuming from a cursor.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { type TensorToWrite, writeSafetensorsFile } from "../../../runtime/safetensors.js";
import { type DataCursor, type DataPort, TrainData } from "../../../runtime/train/data.js";
import { prng } from "../gpu-harness.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-data-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const B = 8;
const N = 37;
const PORTS: DataPort[] = [
  { name: "x", dtype: "f32", shape: [B, 3] },
  { name: "id", dtype: "i32", shape: [B] },
];

let files = 0;
function write(tensors: Record<string, TensorToWrite>): string {
  const file = path.join(dir, `d${files++}.safetensors`);
  writeSafetensorsFile(file, new Map(Object.entries(tensors)));
  return file;
}

/** x: random rows; id: each example's index, so a batch shows which examples it holds. */
function goodTensors(n = N): Record<string, TensorToWrite> {
  const rand = prng(n);
  return {
    x: {
      dtype: "F32",
      shape: [n, 3],
      data: Float32Array.from({ length: n * 3 }, () => rand() - 0.5),
    },
    id: { dtype: "I32", shape: [n], data: Int32Array.from({ length: n }, (_, i) => i) },
  };
}

function ids(
  data: TrainData,
  cursor: DataCursor,
  batches: number,
): { ids: number[][]; cursor: DataCursor } {
  const out: number[][] = [];
  for (let i = 0; i < batches; i++) {
    const b = data.batch(cursor);
    out.push([...(b.inputs.get("id") as Int32Array)]);
    cursor = b.cursor;
  }
  return { ids: out, cursor };
}

describe("TrainData", () => {
  const file = write(goodTensors());
  const start = { epoch: 0, position: 0 };

  it("batches rows consistently across ports and visits every example once per epoch", () => {
    const t = goodTensors();
    const data = TrainData.open(file, PORTS, { seed: 1 });
    expect(data.examples).toBe(N);
    expect(data.batchesPerEpoch).toBe(4);
    const b = data.batch(start);
    const x = b.inputs.get("x") as Float32Array;
    (b.inputs.get("id") as Int32Array).forEach((id, r) =>
      expect([...x.subarray(r * 3, r * 3 + 3)]).toEqual([
        ...(t.x.data as Float32Array).subarray(id * 3, id * 3 + 3),
      ]),
    );
    const epoch = ids(data, start, 4);
    const seen = epoch.ids.flat();
    expect(new Set(seen).size).toBe(32); // 37 examples: the last 5 of the order are dropped
    expect(epoch.cursor).toEqual({ epoch: 0, position: 32 });
    // The next batch starts epoch 1, in a different order.
    const next = data.batch(epoch.cursor);
    expect(next.cursor).toEqual({ epoch: 1, position: B });
    expect([...data.order(1)]).not.toEqual([...data.order(0)]);
    expect([...data.order(0)].sort((a, b) => a - b)).toEqual(
      Array.from({ length: N }, (_, i) => i),
    );
  });

  it("gives the same order for the same seed and another for another seed", () => {
    const a = ids(TrainData.open(file, PORTS, { seed: 42 }), start, 9).ids;
    const b = ids(TrainData.open(file, PORTS, { seed: 42 }), start, 9).ids;
    const c = ids(TrainData.open(file, PORTS, { seed: 43 }), start, 9).ids;
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
    const plain = ids(TrainData.open(file, PORTS, { seed: 42, shuffle: false }), start, 1).ids;
    expect(plain[0]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it("continues the same order from a resumed cursor", () => {
    const whole = ids(TrainData.open(file, PORTS, { seed: 7 }), start, 11).ids;
    const first = ids(TrainData.open(file, PORTS, { seed: 7 }), start, 6);
    // A fresh reader, as after a restart, given only the saved cursor.
    const rest = ids(
      TrainData.open(file, PORTS, { seed: 7 }),
      JSON.parse(JSON.stringify(first.cursor)),
      5,
    );
    expect([...first.ids, ...rest.ids]).toEqual(whole);
    expect(first.cursor.epoch).toBe(1);
  });

  it("rejects files that do not fit the ports, naming the tensor", () => {
    const g = goodTensors();
    const open = (t: Record<string, TensorToWrite>) => () =>
      TrainData.open(write(t), PORTS, { seed: 0 });
    const f = (i: number) => path.join(dir, `d${i}.safetensors`);
    expect(open({ x: g.x! })).toThrow(`${f(files)}: no tensor for input id (i32 [N])`);
    expect(TrainData.open(write({ ...g, extra: g.id! }), PORTS, { seed: 0 }).unused).toEqual([
      "extra",
    ]);
    expect(
      open({ ...g, id: { dtype: "F32", shape: [N], data: new Float32Array(N).fill(1) } }),
    ).toThrow(`${f(files)}: tensor id is F32, its input is i32 (store I32 or I64)`);
    expect(
      open({ ...g, x: { dtype: "F32", shape: [N, 4], data: new Float32Array(N * 4).fill(0.5) } }),
    ).toThrow(`${f(files)}: tensor x has shape [37, 4], its input needs [N, 3]`);
    expect(open({ ...g, x: { dtype: "F32", shape: [N * 3], data: g.x!.data } })).toThrow(
      `${f(files)}: tensor x has shape [111], its input needs [N, 3]`,
    );
    expect(
      open({
        ...g,
        id: { dtype: "I32", shape: [N - 1], data: Int32Array.from({ length: N - 1 }, (_, i) => i) },
      }),
    ).toThrow(`${f(files)}: tensor id has 36 examples, x has 37`);
    expect(open(goodTensors(5))).toThrow(`${f(files)}: 5 examples are fewer than one batch of 8`);
    const broken = path.join(dir, "broken.safetensors");
    fs.writeFileSync(broken, Buffer.from([1, 2, 3]));
    expect(() => TrainData.open(broken, PORTS, { seed: 0 })).toThrow(
      `${broken}: too short: 3 bytes`,
    );
    expect(() => TrainData.open(broken, PORTS, { seed: 0 })).toThrow(
      expect.objectContaining({ name: "DataError" }),
    );
  });

  it("accepts I64 and F16 data for i32 and f32 ports", () => {
    const g = goodTensors();
    const file64 = write({
      x: { dtype: "F16", shape: [N, 3], data: g.x!.data as Float32Array },
      id: {
        dtype: "I64",
        shape: [N],
        data: BigInt64Array.from({ length: N }, (_, i) => BigInt(i)),
      },
    });
    const b = TrainData.open(file64, PORTS, { seed: 3 }).batch(start);
    expect(b.inputs.get("id")).toBeInstanceOf(Int32Array);
    expect(b.inputs.get("x")).toBeInstanceOf(Float32Array);
  });
});
