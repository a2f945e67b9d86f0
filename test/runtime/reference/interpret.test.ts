// The reference interpreter is the oracle; these pin its semantics against independent facts.
import { describe, expect, it } from "vitest";
import { IrBuilder } from "../../../compiler/ir/builder.js";
import { verifyGraph } from "../../../compiler/ir/verify.js";
import { type HostTensor, erf, interpret } from "../../../runtime/reference/interpret.js";

const t = (shape: number[], values: number[]): HostTensor => ({
  shape,
  data: Float64Array.from(values),
});

describe("reference interpreter", () => {
  it("erf matches tabulated values to 1e-15", () => {
    // Abramowitz & Stegun table 7.1 / high-precision values.
    expect(erf(0)).toBe(0);
    expect(Math.abs(erf(0.5) - 0.5204998778130465)).toBeLessThan(1e-15);
    expect(Math.abs(erf(1) - 0.8427007929497149)).toBeLessThan(1e-15);
    expect(Math.abs(erf(-2) + 0.9953222650189527)).toBeLessThan(1e-15);
    expect(Math.abs(erf(3) - 0.9999779095030014)).toBeLessThan(1e-15);
  });

  it("computes a batched matmul with a shared right side, broadcasting add and softmax", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2, 1, 3]);
    const w = b.param("w", [3, 2], true, "normal");
    const bias = b.param("b", [2], true, "zeros");
    const y = b.softmax(b.binary("add", b.matmul(x, w), bias));
    b.output("y", y);
    const g = b.finish();
    expect(verifyGraph(g)).toEqual([]);
    const out = interpret(
      g,
      new Map([
        ["x", t([2, 1, 3], [1, 2, 3, -1, 0, 1])],
        ["w", t([3, 2], [1, 0, 0, 1, 1, 1])],
        ["b", t([2], [0.5, -0.5])],
      ]),
    ).outputs.get("y")!;
    // rows: [1+3+0.5, 2+3-0.5] = [4.5, 4.5]; [-1+1+0.5, 0+1-0.5] = [0.5, 0.5]
    expect([...out.data]).toEqual([0.5, 0.5, 0.5, 0.5]);
    expect(out.shape).toEqual([2, 1, 2]);
  });

  it("permutes, reduces, masks and gathers", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2, 3]);
    const ids = b.input("ids", "i32", [2]);
    b.output("xt", b.permute(x, [1, 0]));
    b.output("rowmax", b.reduce("max", x, -1, false));
    b.output("colmean", b.reduce("mean", x, 0, true));
    b.output("masked", b.causalMask(b.reshape(x, [1, 2, 3])));
    b.output("rows", b.gather(x, ids));
    const g = b.finish();
    expect(verifyGraph(g)).toEqual([]);
    const o = interpret(
      g,
      new Map([
        ["x", t([2, 3], [1, 5, 2, 4, 0, 6])],
        ["ids", t([2], [1, 1])],
      ]),
    ).outputs;
    expect([...o.get("xt")!.data]).toEqual([1, 4, 5, 0, 2, 6]);
    expect([...o.get("rowmax")!.data]).toEqual([5, 6]);
    expect([...o.get("colmean")!.data]).toEqual([2.5, 2.5, 4]);
    expect([...o.get("masked")!.data]).toEqual([1, -Infinity, -Infinity, 4, 0, -Infinity]);
    expect([...o.get("rows")!.data]).toEqual([4, 0, 6, 4, 0, 6]);
  });

  it("rejects out-of-range gather ids", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2, 1]);
    b.output("y", b.gather(x, b.input("ids", "i32", [1])));
    expect(() =>
      interpret(
        b.finish(),
        new Map([
          ["x", t([2, 1], [1, 2])],
          ["ids", t([1], [2])],
        ]),
      ),
    ).toThrow(/outside/);
  });

  it("the verifier catches a wrong shape", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2, 3]);
    b.output("y", b.unary("relu", x));
    const g = b.finish();
    g.nodes[1]!.shape = [3, 2];
    expect(verifyGraph(g)).toEqual(["node 1 (unary): shape [3,2], expected [2,3]"]);
  });
});
