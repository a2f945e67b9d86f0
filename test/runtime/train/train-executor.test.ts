// The train executor on the device: a hand-differentiated softmax regression trained for 200
// steps (with a frozen parameter whose bytes must not change), state read back and uploaded
// into a second executor (resume), and outputs that alias parameters and inputs.
import { describe, expect, it } from "vitest";

import { IrBuilder } from "../../../compiler/ir/builder.js";
import { compileGraph } from "../../../compiler/kernels/compile-graph.js";
import { interpret } from "../../../runtime/reference/interpret.js";
import { TrainExecutor } from "../../../runtime/train/train-executor.js";
import { prng, useDevice } from "../gpu-harness.js";
import { dataset, feeds, initialState, softmaxRegression } from "./softmax-regression.js";

const gpu = useDevice();

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe("TrainExecutor", () => {
  it("trains a softmax regression for 200 steps; the frozen parameter keeps its bytes", async () => {
    const ctx = gpu();
    const graph = softmaxRegression();
    const data = dataset(5);
    const init = initialState(6);
    const exe = await TrainExecutor.create(ctx, compileGraph(graph, ctx.limits));
    try {
      expect(exe.setState(init)).toEqual([]);
      exe.poison();
      const losses: number[] = [];
      const pending = [];
      for (let t = 1; t <= 200; t++) {
        pending.push((await exe.submit(feeds(data, t))).result);
        // Keep at most a few promises around, as a training loop would.
        if (pending.length > 4) losses.push((await pending.shift()!).scalars.get("loss")![0]!);
      }
      for (const p of pending) losses.push((await p).scalars.get("loss")![0]!);
      expect(losses).toHaveLength(200);
      expect(losses.every(Number.isFinite)).toBe(true);

      // Step 1's loss is the forward pass at the initial parameters.
      const leaves = new Map(
        [...init, ...feeds(data, 1)].map(([k, v]) => [
          k,
          {
            shape: graph.nodes.find((n) => "name" in n && n.name === k)!.shape,
            data: Float64Array.from(v),
          },
        ]),
      );
      const ref = interpret(graph, leaves).outputs;
      expect(losses[0]).toBeCloseTo(ref.get("loss")!.data[0]!, 4);
      expect(losses[0]).toBeGreaterThan(0.5);
      expect(losses[199]).toBeLessThan(0.15);
      expect(losses[199]).toBeLessThan(losses[0]! / 5);

      const state = await exe.readState();
      expect(bytes(state.get("temp") as Float32Array).equals(bytes(init.get("temp")!))).toBe(true);
      expect(bytes(state.get("w") as Float32Array).equals(bytes(init.get("w")!))).toBe(false);
    } finally {
      exe.destroy();
    }
  });

  it("continues identically in a second executor from the state read back (resume)", async () => {
    const ctx = gpu();
    const program = compileGraph(softmaxRegression(), ctx.limits);
    const data = dataset(7);
    const a = await TrainExecutor.create(ctx, program);
    const b = await TrainExecutor.create(ctx, program);
    try {
      a.setState(initialState(8));
      for (let t = 1; t <= 5; t++) await a.step(feeds(data, t));
      const saved = await a.readState();
      expect(b.setState(new Map([...saved, ["not.a.param", new Float32Array(1)]]))).toEqual([
        "not.a.param",
      ]);
      b.poison();
      for (let t = 6; t <= 8; t++) {
        const ra = await a.step(feeds(data, t));
        const rb = await b.step(feeds(data, t));
        expect(rb.scalars).toEqual(ra.scalars);
      }
      const [sa, sb] = [await a.readState(), await b.readState()];
      for (const [name, v] of sa)
        expect(bytes(sb.get(name) as Float32Array).equals(bytes(v as Float32Array))).toBe(true);
    } finally {
      a.destroy();
      b.destroy();
    }
  });

  it("handles outputs that are parameters or inputs (swaps go through scratch)", async () => {
    const ctx = gpu();
    const b = new IrBuilder();
    const x = b.input("x", "f32", [3]);
    const pa = b.param("a", [4], true, "normal");
    const pb = b.param("b", [4], true, "normal");
    const pc = b.param("c", [4], true, "normal");
    b.output("x_out", x);
    b.output("update:a", pb); // a ← b
    b.output("update:b", pa); // b ← a: both must read the values before the step
    b.output("update:c", pc); // unchanged: no copy at all
    b.output("sum_a", b.reduce("sum", b.reshape(pa, [1, 4]), 1, false));
    const exe = await TrainExecutor.create(ctx, compileGraph(b.finish(), ctx.limits));
    try {
      const rand = prng(3);
      const init = new Map(
        ["a", "b", "c"].map((n) => [n, Float32Array.from({ length: 4 }, () => rand() - 0.5)]),
      );
      exe.setState(init);
      exe.poison();
      const xs = Float32Array.of(rand(), rand(), rand());
      const sums: number[] = [];
      for (let t = 1; t <= 3; t++) {
        const r = await exe.step(new Map([["x", xs]]));
        expect(r.scalars.get("x_out")).toEqual(xs);
        sums.push(r.scalars.get("sum_a")![0]!);
      }
      const sumOf = (v: Float32Array) => v.reduce((s, e) => s + e, 0);
      expect(sums[0]).toBeCloseTo(sumOf(init.get("a")!), 5);
      expect(sums[1]).toBeCloseTo(sumOf(init.get("b")!), 5);
      const s = await exe.readState();
      expect(s.get("a")).toEqual(init.get("b"));
      expect(s.get("b")).toEqual(init.get("a"));
      expect(s.get("c")).toEqual(init.get("c"));
    } finally {
      exe.destroy();
    }
  });

  it("recomputes values of parameters alone (static kernels) every step", async () => {
    const ctx = gpu();
    const b = new IrBuilder();
    const x = b.input("x", "f32", [3, 4]);
    const w = b.param("w", [4, 4], true, "normal");
    // w·2 + 1 depends on the parameter alone: the back end computes it in a static kernel.
    const scaled = b.binary("add", b.binary("mul", w, b.constant(2)), b.constant(1));
    b.output("y", b.matmul(x, b.permute(scaled, [1, 0])));
    b.output("update:w", b.binary("add", w, b.constant(0.5)));
    const program = compileGraph(b.finish(), ctx.limits);
    expect(program.kernels.some((k) => k.static)).toBe(true);
    const exe = await TrainExecutor.create(ctx, program);
    try {
      const rand = prng(12);
      const w0 = Float32Array.from({ length: 16 }, () => rand() - 0.5);
      const xs = Float32Array.from({ length: 12 }, () => rand() - 0.5);
      exe.setState(new Map([["w", w0]]));
      exe.poison();
      for (let t = 1; t <= 3; t++) {
        const y = (await exe.step(new Map([["x", xs]]))).scalars.get("y")!;
        for (let i = 0; i < 3; i++)
          for (let j = 0; j < 4; j++) {
            let want = 0;
            for (let k = 0; k < 4; k++)
              want += xs[i * 4 + k]! * (2 * (w0[j * 4 + k]! + 0.5 * (t - 1)) + 1);
            expect(y[i * 4 + j]).toBeCloseTo(want, 4);
          }
      }
    } finally {
      exe.destroy();
    }
  });

  it("rejects unset parameters, missing inputs, and updates of unknown parameters", async () => {
    const ctx = gpu();
    const exe = await TrainExecutor.create(ctx, compileGraph(softmaxRegression(), ctx.limits));
    try {
      await expect(exe.submit(new Map())).rejects.toThrow(/parameter \S+ was never set/);
      exe.setState(initialState(1));
      await expect(exe.submit(new Map())).rejects.toThrow(/missing input/);
    } finally {
      exe.destroy();
    }
    const b = new IrBuilder();
    b.output("update:ghost", b.param("w", [2], true, "zeros"));
    await expect(TrainExecutor.create(ctx, compileGraph(b.finish(), ctx.limits))).rejects.toThrow(
      "output update:ghost updates ghost, which the program does not read",
    );
  });
});
