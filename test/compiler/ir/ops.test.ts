// The op table (compiler/ir/ops.ts): every op and function has a complete row, the builder,
// verifier, printer, interpreter and code generator all read it, and the recipe at the top
// of ops.ts holds: a new function or a new elementwise op is one row.
import { afterEach, describe, expect, it } from "vitest";

import { IrBuilder } from "../../../compiler/ir/builder.js";
import { type IrGraph, type IrNode, type IrOpName, inputsOf } from "../../../compiler/ir/graph.js";
import {
  BINARY_FUNCTION_ROWS,
  BINARY_OPS,
  type BinaryFunctionRow,
  OPS,
  type OpRow,
  REDUCE_FUNCTION_ROWS,
  REDUCE_OPS,
  UNARY_FUNCTION_ROWS,
  UNARY_OPS,
  type UnaryFunctionRow,
  type WgslEnv,
  fusionOf,
  isAnchorKernel,
  opRow,
} from "../../../compiler/ir/ops.js";
import { printGraph } from "../../../compiler/ir/print.js";
import { verifyGraph } from "../../../compiler/ir/verify.js";
import { compileGraph } from "../../../compiler/kernels/compile-graph.js";
import { type FusedKernel, fuseKernels } from "../../../compiler/kernels/fuse-kernels.js";
import { KernelWriter } from "../../../compiler/kernels/wgsl/kernel-writer.js";
import {
  BINARY_FUNCTIONS,
  type HostTensor,
  UNARY_FUNCTIONS,
  interpret,
} from "../../../runtime/reference/interpret.js";

/** Every member of the IrNode union: TypeScript rejects this object when one is missing. */
const ALL_OPS: Record<IrOpName, true> = {
  input: true,
  param: true,
  const: true,
  unary: true,
  binary: true,
  matmul: true,
  reduce: true,
  softmax: true,
  causal_mask: true,
  gather: true,
  scatter_add: true,
  permute: true,
  reshape: true,
  iota: true,
  random: true,
  concat: true,
  slice: true,
  cast: true,
  cumsum: true,
  topk: true,
  group_rows: true,
  expert_matmul: true,
  expert_matmul_wgrad: true,
};

/** A graph with one node of every op, every node an output. */
function everyOp(): IrGraph {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [2, 3, 4]);
  const w = b.param("w", [4, 5], true, "normal");
  const table = b.param("table", [3, 4], false, "normal");
  const ids = b.input("ids", "i32", [6]);
  const we = b.param("we", [3, 4, 5], true, "normal");
  const rows = b.reshape(x, [6, 4]);
  const nodes = [
    b.unary("gelu", x),
    b.binary("pow", x, b.constant(2)),
    b.matmul(x, w),
    b.reduce("mean", x, 1, true),
    b.reduce("max", x, -1, true),
    b.softmax(x),
    b.causalMask(x),
    b.scatterAdd(b.gather(table, ids), ids, 3),
    b.permute(x, [2, 0, 1]),
    b.iota(x),
    b.random(b.input("key", "f32", [1]), [2, 3], 7),
    b.concat([x, x], 1),
    b.slice(x, 2, 1, 2),
    b.cast(x, "i32"),
    b.cumsum(x, 1),
    b.topk(x, 2),
    b.expertMatmul(rows, we, ids, b.groupRows(ids, 3, 4)),
    b.expertMatmulWgrad(rows, b.reshape(b.cast(x, "f32"), [6, 4]), ids, b.groupRows(ids, 3, 4), 3),
  ];
  nodes.forEach((n, i) => b.output(`y${i}`, n));
  return b.finish();
}

const leaves = (g: IrGraph): Map<string, HostTensor> => {
  const out = new Map<string, HostTensor>();
  for (const n of g.nodes) {
    if (n.op !== "input" && n.op !== "param") continue;
    const data = Float64Array.from({ length: n.shape.reduce((a, b) => a * b, 1) }, (_, i) =>
      n.dtype === "i32" ? (i * 7) % 3 : Math.sin(i + 1),
    );
    out.set(n.name, { shape: n.shape, data });
  }
  return out;
};

/** A WGSL environment that records the helpers asked for. */
function env(dtype: "f32" | "i32", constant?: number): WgslEnv & { used: string[] } {
  const used: string[] = [];
  return {
    used,
    dtype,
    use: (h) => (used.push(h), h),
    constant: (i) => (i === 1 ? constant : undefined),
    coord: (a) => `c${a}`,
    f32: (v) => `f32(${v})`,
  };
}

describe("the op table", () => {
  it("has one row per op of the IrNode union, and nothing else", () => {
    expect(Object.keys(OPS).sort()).toEqual(Object.keys(ALL_OPS).sort());
  });

  it("gives every row a dtype, shape and fusion rule; leaves alone lack a reference", () => {
    const g = everyOp();
    for (const n of g.nodes) {
      const row = opRow(n.op);
      const f = fusionOf(n);
      expect(typeof row.dtype).toBe("function");
      expect(typeof row.shape).toBe("function");
      expect(row.reference === undefined).toBe(f.kernel === "leaf");
      // Elementwise ops read inline are emitted from their row's snippet; the structural ones
      // (gather and concat read buffers; anchors, rows and views have templates) have none.
      const generic = f.kernel === "map" && f.operands !== "stored";
      expect(row.wgsl !== undefined, n.op).toBe(generic);
      if (f.epilogue) expect(isAnchorKernel(f.kernel)).toBe(true);
    }
  });

  it("the builder, the verifier and the printer agree on a graph of every op", () => {
    const g = everyOp();
    expect(new Set(g.nodes.map((n) => n.op))).toEqual(new Set(Object.keys(OPS)));
    expect(verifyGraph(g)).toEqual([]);
    const text = printGraph(g);
    expect(text).toContain(`= reduce mean axis=1, %0 : f32[2, 1, 4]`);
    expect(text).toContain(`= permute [2, 0, 1], %0 : f32[4, 2, 3]`);
    expect(text).toContain(`= group_rows experts=3 align=4, %3 : i32[20]`);
    expect(text).toContain(`= param "table" frozen init=normal : f32[3, 4]`);
  });

  it("the interpreter runs every row's reference and the back end compiles every op", () => {
    const g = everyOp();
    const { outputs } = interpret(g, leaves(g));
    expect(outputs.size).toBe(g.outputs.length);
    // iota: the last-axis position.
    const iota = g.outputs.find((o) => g.nodes[o.node]!.op === "iota")!;
    expect([...outputs.get(iota.name)!.data.slice(0, 5)]).toEqual([0, 1, 2, 3, 0]);
    const program = compileGraph(g);
    expect(program.kernels.length).toBeGreaterThan(0);
  });

  it("the verifier checks dtypes by the rows' rules", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2]);
    b.output("y", b.topk(x, 1));
    const g = b.finish();
    g.nodes[1]!.dtype = "f32";
    expect(verifyGraph(g)).toEqual(["node 1 (topk): dtype f32, expected i32"]);
  });

  it("the builder rejects what the rows reject", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2, 3]);
    expect(() => b.matmul(x, x)).toThrow(/inner dims 3 vs 2/);
    expect(() => b.reshape(x, [4])).toThrow(/reshape/);
    expect(() => b.slice(x, 1, 2, 2)).toThrow(/slice/);
    expect(() => b.topk(x, 4)).toThrow(/top 4/);
    expect(() => b.permute(x, [0, 0])).toThrow(/permute/);
  });

  it('fills every gradient slot: a rule for each input, or "none" where no gradient flows', () => {
    const slots = (n: IrNode) => opRow(n.op).vjp?.(n);
    const g = everyOp();
    const byOp = (op: string) => g.nodes.find((n) => n.op === op)!;
    const kinds = (n: IrNode) => slots(n)?.map((s) => (s === "none" ? s : typeof s));
    expect(kinds(byOp("gather"))).toEqual(["function", "none"]);
    expect(kinds(byOp("scatter_add"))).toEqual(["function", "none"]);
    expect(kinds(byOp("topk"))).toEqual(["none"]);
    expect(kinds(byOp("iota"))).toEqual(["none"]);
    expect(kinds(byOp("random"))).toEqual(["none"]);
    expect(kinds(byOp("group_rows"))).toEqual(["none"]);
    expect(kinds(byOp("expert_matmul"))).toEqual(["function", "function", "none", "none"]);
    expect(kinds(byOp("expert_matmul_wgrad"))).toEqual(["function", "function", "none", "none"]);
    expect(kinds(byOp("cast"))).toEqual(["none"]); // to i32
    expect(BINARY_FUNCTION_ROWS.eq.vjp).toEqual(["none", "none"]);
    expect(BINARY_FUNCTION_ROWS.lt.vjp).toEqual(["none", "none"]);
    expect(UNARY_FUNCTION_ROWS.step.vjp).toEqual(["none"]);
    // Every node of every op (leaves have no inputs), and every function's row.
    for (const n of g.nodes) {
      const s = slots(n) ?? [];
      expect(s.length, n.op).toBe(inputsOf(n).length);
      for (const rule of s) expect(rule === "none" || typeof rule === "function", n.op).toBe(true);
    }
    const functionRows: [string, readonly unknown[] | undefined, number][] = [
      ...Object.entries(UNARY_FUNCTION_ROWS).map(
        ([name, r]): [string, readonly unknown[] | undefined, number] => [
          name,
          (r as UnaryFunctionRow).vjp,
          1,
        ],
      ),
      ...Object.entries(BINARY_FUNCTION_ROWS).map(
        ([name, r]): [string, readonly unknown[] | undefined, number] => [
          name,
          (r as BinaryFunctionRow).vjp,
          2,
        ],
      ),
    ];
    for (const [name, vjp, arity] of functionRows) {
      expect(vjp?.length, name).toBe(arity);
      for (const rule of vjp ?? [])
        expect(rule === "none" || typeof rule === "function", name).toBe(true);
    }
  });
});

describe("the function rows", () => {
  it("name the functions, in the table's order, and feed the interpreter's maps", () => {
    expect(UNARY_OPS).toEqual(Object.keys(UNARY_FUNCTION_ROWS));
    expect(BINARY_OPS).toEqual(Object.keys(BINARY_FUNCTION_ROWS));
    expect(REDUCE_OPS).toEqual(["sum", "mean", "max"]);
    expect(Object.keys(UNARY_FUNCTIONS)).toEqual([...UNARY_OPS]);
    expect(Object.keys(BINARY_FUNCTIONS)).toEqual([...BINARY_OPS]);
  });

  it("every WGSL snippet uses its operands and asks only for helpers the writer has", () => {
    const b = new IrBuilder();
    b.output("x", b.input("x", "f32", [1]));
    const g = b.finish();
    const kernel =
      fuseKernels(g).kernels[0] ?? ({ members: [], loads: {} } as unknown as FusedKernel);
    const used = new Set<string>();
    for (const [name, r] of Object.entries(UNARY_FUNCTION_ROWS)) {
      const row: UnaryFunctionRow = r;
      for (const dtype of ["f32", "i32"] as const) {
        const e = env(dtype);
        const text = dtype === "i32" && row.wgslI32 ? row.wgslI32("xx", e) : row.wgsl("xx", e);
        expect(text, name).toContain("xx");
        e.used.forEach((h) => used.add(h));
      }
    }
    for (const [name, r] of Object.entries(BINARY_FUNCTION_ROWS)) {
      const row: BinaryFunctionRow = r;
      for (const dtype of ["f32", "i32"] as const) {
        const e = env(dtype);
        const text = row.wgsl("aa", "bb", e);
        expect(text, name).toMatch(/aa.*bb/);
        e.used.forEach((h) => used.add(h));
      }
    }
    // pow with a constant exponent: an exact, cheaper form.
    expect(BINARY_FUNCTION_ROWS.pow.wgsl("a", "b", env("f32", 2))).toBe("a * a");
    for (const row of Object.values(REDUCE_FUNCTION_ROWS)) {
      expect(row.wgsl.combine("acc", "x")).toMatch(/acc.*x/);
      expect(row.wgsl.finish("acc", 4)).toContain("acc");
    }
    expect(used.size).toBeGreaterThan(0);
    const writer = new KernelWriter(g, kernel);
    for (const h of used) writer.use(h);
    const header = writer.header();
    for (const h of used) expect(header).toContain(`fn ${h}(`);
  });

  it("reduce rows reproduce sum, mean and max", () => {
    const xs = [3, -1, 4, 1];
    const run = (fn: keyof typeof REDUCE_FUNCTION_ROWS) => {
      const row = REDUCE_FUNCTION_ROWS[fn];
      return row.finish(
        xs.reduce((acc, x) => row.combine(acc, x), row.identity),
        xs.length,
      );
    };
    expect([run("sum"), run("mean"), run("max")]).toEqual([7, 1.75, 4]);
  });
});

describe("rows added for gradients", () => {
  it("erf matches known values; expert_matmul_wgrad sums xᵀg per expert, skipping dropped rows", () => {
    expect(UNARY_FUNCTION_ROWS.erf.reference(0)).toBe(0);
    expect(UNARY_FUNCTION_ROWS.erf.reference(1)).toBeCloseTo(0.8427007929497149, 15);
    expect(UNARY_FUNCTION_ROWS.erf.reference(-0.5)).toBeCloseTo(-0.5204998778130465, 15);
    const b = new IrBuilder();
    const ids = b.input("ids", "i32", [3]);
    const x = b.input("x", "f32", [3, 2]);
    const g = b.input("g", "f32", [3, 1]);
    b.output("dw", b.expertMatmulWgrad(x, g, ids, b.groupRows(ids, 2, 1), 2));
    const graph = b.finish();
    expect(verifyGraph(graph)).toEqual([]);
    expect(printGraph(graph)).toContain("expert_matmul_wgrad experts=2");
    const t = (shape: number[], data: number[]) => ({ shape, data: Float64Array.from(data) });
    const out = interpret(
      graph,
      new Map([
        ["ids", t([3], [1, 5, 1])], // row 1 is dropped
        ["x", t([3, 2], [1, 2, 3, 4, 5, 6])],
        ["g", t([3, 1], [10, 20, 30])],
      ]),
    ).outputs.get("dw")!;
    expect(out.shape).toEqual([2, 2, 1]);
    // expert 0: no rows; expert 1: rows 0 and 2: [1, 2]·10 + [5, 6]·30
    expect([...out.data]).toEqual([0, 0, 160, 200]);
  });
});

describe("the recipe", () => {
  const added: (() => void)[] = [];
  afterEach(() => added.splice(0).forEach((undo) => undo()));

  it("a new unary function is one row: built, verified, interpreted and emitted", () => {
    const rows = UNARY_FUNCTION_ROWS as Record<string, UnaryFunctionRow>;
    rows.softsign = {
      reference: (x) => x / (1 + Math.abs(x)),
      wgsl: (x) => `${x} / (1.0 + abs(${x}))`,
      paddingSafe: true,
    };
    added.push(() => delete rows.softsign);
    const b = new IrBuilder();
    const x = b.input("x", "f32", [4]);
    b.output("y", b.unary("softsign" as "neg", x));
    const g = b.finish();
    expect(verifyGraph(g)).toEqual([]);
    const y = interpret(
      g,
      new Map([["x", { shape: [4], data: Float64Array.from([-3, 0, 1, 3]) }]]),
    );
    expect([...y.outputs.get("y")!.data]).toEqual([-0.75, 0, 0.5, 0.75]);
    const wgsl = compileGraph(g)
      .kernels.map((k) => k.wgsl)
      .join("\n");
    expect(wgsl).toMatch(/let v\d+: f32 = v\d+ \/ \(1\.0 \+ abs\(v\d+\)\);/);
  });

  it("a new elementwise op is one row (and its union member): fused into its consumer", () => {
    // clamp01: an op with no attributes, as if `{ op: "clamp01"; inputs: [number]; ... }`
    // were in the IrNode union.
    const ops = OPS as unknown as Record<string, OpRow<"unary">>;
    ops.clamp01 = {
      dtype: (_, [d]) => d!,
      shape: (_, [s]) => [...s!],
      print: () => "",
      reference(_, [x], out) {
        x!.data.forEach((v, i) => (out[i] = Math.min(1, Math.max(0, v))));
      },
      fusion: () => ({ kernel: "map", operands: "inline" }),
      wgsl: (_, [x]) => `clamp(${x}, 0.0, 1.0)`,
    };
    added.push(() => delete ops.clamp01);
    const b = new IrBuilder();
    const x = b.input("x", "f32", [4]);
    const c = b.make({ op: "clamp01", inputs: [x] } as unknown as Parameters<IrBuilder["make"]>[0]);
    b.output("y", b.binary("mul", c, b.constant(2)));
    const g = b.finish();
    expect(verifyGraph(g)).toEqual([]);
    expect(printGraph(g)).toContain("%1 = clamp01 %0 : f32[4]");
    const y = interpret(
      g,
      new Map([["x", { shape: [4], data: Float64Array.from([-1, 0.25, 0.5, 2]) }]]),
    );
    expect([...y.outputs.get("y")!.data]).toEqual([0, 0.5, 1, 2]);
    const program = compileGraph(g);
    expect(program.kernels.length).toBe(1); // fused: clamp01 and the product in one map kernel
    expect(program.kernels[0]!.wgsl).toMatch(/clamp\(v\d+, 0\.0, 1\.0\)/);
  });
});
