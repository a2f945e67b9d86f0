// How sizes are fitted to the free dims from lowerings at 5, 7 (per dim) and 6 (all): products
// with a rational constant, constants, and the sizes no product fits.
import { describe, expect, it } from "vitest";
import { IrBuilder } from "../../compiler/ir/builder.js";
import { NotSymbolicError, SymbolicSizes, showSize } from "../../compiler/export/onnx-dims.js";

/** A graph whose reshape target and slice size are computed from B and T by `sizes`. */
function graph(
  B: number,
  T: number,
  sizes: (B: number, T: number) => { rows: number; keep: number },
) {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [B, T, 4]);
  const { rows, keep } = sizes(B, T);
  const flat = b.reshape(x, [rows, (B * T * 4) / rows]);
  b.output("y", b.slice(flat, 0, 0, keep));
  return b.finish();
}

function fit(sizes: (B: number, T: number) => { rows: number; keep: number }) {
  const s = new SymbolicSizes(graph(5, 5, sizes), {
    baseSize: 5,
    probeSize: 7,
    perDim: new Map([
      ["B", graph(7, 5, sizes)],
      ["T", graph(5, 7, sizes)],
    ]),
    checkSize: 6,
    check: graph(6, 6, sizes),
  });
  return {
    rows: () => showSize(s.size(1, "shape", 0, "rows")),
    keep: () => showSize(s.size(2, "size", undefined, "keep")),
    cols: () => showSize(s.size(1, "shape", 1, "cols")),
  };
}

describe("symbolic sizes", () => {
  it("fits products of the dims with a constant, and constants", () => {
    const f = fit((B, T) => ({ rows: B * T, keep: 2 * T }));
    expect(f.rows()).toBe("B*T");
    expect(f.cols()).toBe("4");
    expect(f.keep()).toBe("2*T");
    const g = fit((B, T) => ({ rows: B * T * 2, keep: B }));
    expect(g.rows()).toBe("2*B*T");
    expect(g.cols()).toBe("2");
    expect(g.keep()).toBe("B");
  });

  it("refuses a size no product fits, naming the dims that move it", () => {
    // A count rounded up from B·T (capacity): ceil(B·T / 3).
    const f = fit((B, T) => ({ rows: B * T, keep: Math.ceil((B * T) / 3) }));
    expect(f.rows()).toBe("B*T");
    expect(f.keep).toThrow(NotSymbolicError);
    try {
      f.keep();
    } catch (err) {
      expect((err as NotSymbolicError).dims).toEqual(["B", "T"]);
      expect((err as NotSymbolicError).reason).toBe("keep is no product of the free dims");
    }
    // Moved by neither dim alone, only by both together: 1 at (5, 5), (7, 5), (5, 7), 2 at (6, 6).
    const g = fit((B, T) => ({ rows: B * T, keep: (B - 5) * (T - 5) + 1 }));
    expect(g.keep).toThrow(/^keep is no product of the free dims$/);
  });
});
