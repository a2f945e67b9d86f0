// Every kernel template on the real device against the float64 reference interpreter: fresh
// seeded random inputs (never zeros), intermediate and output buffers poisoned with NaN, shapes
// that are not multiples of any tile (1, 7, 33, 127, 67), relative L2 error < 1e-5. Fails, never
// skips, without a WebGPU adapter (run scripts/setup.sh).
import { describe, expect, it } from "vitest";

import { compileGraph } from "../../compiler/kernels/compile-graph.js";
import { IrBuilder } from "../../compiler/ir/builder.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import {
  DEFAULT_TUNING,
  ELEMENTWISE_VARIANTS,
  MATMUL_VARIANTS,
  type MatmulVariant,
  type Tuning,
  withMatmulVariant,
} from "../../compiler/kernels/wgsl/variants.js";
import { type LeafSpec, checkGraph, useDevice } from "./gpu-harness.js";
import { attention, layerNorm, linear, transformerBlockGraph } from "./model-graphs.js";

const TOL = 1e-5;

const gpu = useDevice();

let seed = 100;

/** Runs `graph` on the device and expects every output within TOL of the reference. */
async function expectMatches(
  graph: IrGraph,
  opts: {
    tuning?: Tuning;
    specs?: Record<string, LeafSpec>;
    kernels?: number;
    limits?: Record<string, number>;
  } = {},
) {
  const r = await checkGraph(gpu(), graph, { seed: seed++, ...opts });
  for (const [name, err] of Object.entries(r.errors)) {
    expect(err, `output ${name}: relative L2 error`).toBeLessThan(TOL);
  }
  if (opts.kernels !== undefined) expect(r.program.kernels.length).toBe(opts.kernels);
  return r;
}

function graph(build: (b: IrBuilder) => void): IrGraph {
  const b = new IrBuilder();
  build(b);
  return b.finish();
}

const withVariant = (v: MatmulVariant): Tuning => withMatmulVariant(DEFAULT_TUNING, v);

describe("matmul template", () => {
  const shapes: [number, number, number][] = [
    [1, 7, 33],
    [7, 33, 1],
    [33, 127, 7],
    [127, 1, 67],
    [67, 67, 127],
    [64, 128, 64],
  ];
  // The big blocks take lavapipe ~30 s per kernel to compile: they get the shapes that cover
  // their paths (vec4 along k or scalar; partial row and column blocks) rather than all.
  const bigShapes: [number, number, number][] = [
    [67, 68, 127],
    [33, 7, 40],
  ];
  for (const v of MATMUL_VARIANTS) {
    const big = v.tm * v.tn > 256;
    const title = big ? "m,k,n 67,68,127 and 33,7,40" : "m,k,n over 1, 7, 33, 127, 67";
    it(
      `${v.name}: plain and transposed-B, ${title}`,
      { timeout: big ? 300_000 : 60_000 },
      async () => {
        for (const [m, k, n] of big ? bigShapes : shapes) {
          await expectMatches(
            graph((b) => {
              const x = b.input("a", "f32", [m, k]);
              b.output("nn", b.matmul(x, b.input("b", "f32", [k, n])));
              // Linear: x @ transpose(weight), weight a parameter [n, k].
              const w = b.param("w", [n, k], true, "normal");
              b.output("nt", b.matmul(x, b.permute(w, [1, 0])));
            }),
            { tuning: withVariant(v) },
          );
        }
      },
    );
  }

  it("batched with broadcast batch dims and a shared 2-D right side", async () => {
    for (const v of [MATMUL_VARIANTS[0]!, MATMUL_VARIANTS[1]!, MATMUL_VARIANTS[5]!]) {
      await expectMatches(
        graph((b) => {
          const a = b.input("a", "f32", [2, 3, 7, 33]);
          b.output("bcast", b.matmul(a, b.input("b", "f32", [1, 3, 33, 67])));
          b.output("shared", b.matmul(a, b.input("w", "f32", [33, 5])));
          b.output(
            "left",
            b.matmul(b.input("l", "f32", [7, 33]), b.input("r", "f32", [2, 1, 33, 4])),
          );
        }),
        { tuning: withVariant(v) },
      );
    }
  });

  it("Linear + bias + GELU + residual is one kernel", async () => {
    const g = graph((b) => {
      const x = b.input("x", "f32", [2, 33, 67]);
      const y = b.unary("gelu", linear(b, x, 67, 67, "fc"));
      b.output("y", b.binary("add", y, x));
    });
    await expectMatches(g, { kernels: 1 });
  });

  it("epilogue with scaling, a per-row operand and an activation per variant", async () => {
    for (const v of MATMUL_VARIANTS.filter((x) => x.tm * x.tn <= 256)) {
      await expectMatches(
        graph((b) => {
          const x = b.input("x", "f32", [7, 33]);
          let y = linear(b, x, 33, 127, "fc");
          y = b.binary("mul", y, b.constant(0.125));
          y = b.binary("add", y, b.input("rowbias", "f32", [7, 1]));
          b.output("y", b.unary("gelu_tanh", y));
        }),
        { tuning: withVariant(v), kernels: 1 },
      );
    }
  });
});

describe("LoRA in one pass", () => {
  it.each([
    [1, 5, 3, 1],
    [7, 33, 67, 3],
    [40, 64, 20, 16],
  ])(
    "rows %i, in %i, out %i, rank %i: x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ in the base matmul's epilogue",
    async (rows, inF, outF, r) => {
      const g = graph((b) => {
        const x = b.input("x", "f32", [rows, inF]);
        const base = linear(b, x, inF, outF, "q");
        const A = b.param("q.lora_A.weight", [r, inF], true, "normal");
        const B = b.param("q.lora_B.weight", [outF, r], true, "normal");
        const delta = b.matmul(b.matmul(x, b.permute(A, [1, 0])), b.permute(B, [1, 0]));
        b.output("y", b.binary("add", base, b.binary("mul", delta, b.constant(2 / r))));
      });
      // The small x·Aᵀ, then the base matmul with the rank-r expand and the add in its epilogue.
      await expectMatches(g, { kernels: 2 });
    },
  );
});

describe("elementwise map template", () => {
  it("fuses a unary/binary chain with broadcasting into one kernel", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [3, 7, 33]);
        const y = b.input("y", "f32", [7, 1]);
        const z = b.input("z", "f32", [33]);
        let t = b.binary("add", x, y);
        t = b.binary("mul", t, z);
        t = b.unary("tanh", t);
        t = b.binary("sub", t, b.unary("sigmoid", x));
        t = b.binary("max", t, b.binary("min", z, y));
        b.output("o", b.binary("div", t, b.binary("add", b.unary("abs", z), b.constant(1))));
      }),
      { kernels: 1 },
    );
  });

  it("every unary function", async () => {
    const fns = [
      "neg",
      "relu",
      "gelu",
      "gelu_tanh",
      "silu",
      "tanh",
      "sigmoid",
      "exp",
      "abs",
      "step",
    ] as const;
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [127, 33]);
        for (const fn of fns) b.output(fn, b.unary(fn, x));
        const pos = b.input("pos", "f32", [127, 33]);
        for (const fn of ["log", "sqrt", "rsqrt"] as const) b.output(fn, b.unary(fn, pos));
      }),
      { specs: { x: { lo: -6, hi: 6 }, pos: { lo: 0.01, hi: 10 } } },
    );
  });

  it("GELU (erf) and tanh hold 1e-5 on small values too", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [4096]);
        b.output("gelu", b.unary("gelu", x));
        b.output("tanh", b.unary("tanh", x));
        b.output("gelu_tanh", b.unary("gelu_tanh", x));
        b.output("silu", b.unary("silu", x));
      }),
      { specs: { x: { lo: -1e-3, hi: 1e-3 } } },
    );
  });

  it("pow with constant and variable exponents, negative bases", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [7, 33]);
        b.output("sq", b.binary("pow", x, b.constant(2)));
        b.output("cube", b.binary("pow", x, b.constant(3)));
        const p = b.input("p", "f32", [7, 33]);
        b.output("gen", b.binary("pow", b.unary("abs", x), p));
      }),
      { specs: { p: { lo: -1.5, hi: 1.5 } } },
    );
  });

  it("cast, iota and i32 arithmetic", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [7, 33]);
        const i = b.cast(x, "i32");
        b.output("cast", i);
        b.output("iota", b.iota(x));
        b.output("int_ops", b.binary("add", b.binary("mul", i, b.iota(x)), b.constant(3, "i32")));
        b.output("back", b.binary("mul", b.cast(b.iota(x), "f32"), x));
        // A function with no i32 form runs in f32 and truncates, in the kernel and the
        // reference (sqrt: exact at the perfect squares, where truncation could amplify f32's
        // rounding into a whole unit).
        b.output("int_sqrt", b.unary("sqrt", b.unary("abs", i)));
      }),
      { specs: { x: { lo: -50, hi: 50 } } },
    );
  });

  it("random: bit-identical to the reference at awkward shapes, fused into a dropout", async () => {
    for (const shape of [[1], [7], [3, 5, 7], [33, 67]]) {
      const r = await expectMatches(
        graph((b) => {
          const key = b.input("key", "f32", [1]);
          const u = b.random(key, shape, 11);
          b.output("u", u);
          // Dropout at p = 0.3: x · [u ≥ 0.3] / 0.7, the mask computed inside the map kernel.
          const x = b.input("x", "f32", shape);
          const keep = b.unary("step", b.binary("sub", u, b.constant(0.3)));
          b.output("dropped", b.binary("div", b.binary("mul", x, keep), b.constant(0.7)));
          b.output("other", b.random(key, shape, 12));
        }),
        { specs: { key: { lo: 0, hi: 2 ** 24 } } },
      );
      // Exact, not within a tolerance: the kernel and the reference hash the same bits.
      expect(r.errors.u).toBe(0);
      const dropped = r.gpu.get("dropped") as Float32Array;
      const refDropped = r.ref.get("dropped")!.data;
      expect(dropped.map((v) => +(v === 0))).toEqual(
        Float32Array.from(refDropped, (v) => +(v === 0)),
      );
      const u = r.gpu.get("u") as Float32Array;
      expect(u.every((v) => v >= 0 && v < 1)).toBe(true);
      if (u.length > 1000) {
        const mean = u.reduce((a, v) => a + v, 0) / u.length;
        expect(Math.abs(mean - 0.5)).toBeLessThan(0.03);
        const other = r.gpu.get("other") as Float32Array;
        expect(u.filter((v, i) => v === other[i]!).length).toBeLessThan(5);
      }
    }
  });

  it("a const output fills its buffer", async () => {
    await expectMatches(
      graph((b) => {
        b.output("c", b.constant(1.5, "f32", [7, 33]));
        b.output("x", b.binary("add", b.input("x", "f32", [7, 33]), b.constant(2, "f32", [7, 33])));
      }),
    );
  });
});

describe("elementwise and row kernel shapes (Tuning.mapThreads, mapItems, rowsPerWorkgroup)", () => {
  // Maps and reductions with several elements per invocation and a ragged last workgroup;
  // row kernels with one invocation per row (rows not a multiple of the workgroup) and with
  // rows shared among invocations; a fully masked softmax row either way.
  const mixed = graph((b) => {
    const x = b.input("x", "f32", [7, 1031]);
    b.output("map", b.unary("tanh", b.binary("mul", x, b.input("s", "f32", [1031]))));
    b.output("colsum", b.reduce("sum", b.input("c", "f32", [127, 33, 41]), 0, false));
    b.output("ln", layerNorm(b, b.input("r", "f32", [3, 67, 33]), 33, "ln"));
    // Row 0 keeps only column 0 under the mask: without it, that row is all -inf.
    const masked = b.causalMask(b.input("y", "f32", [1, 150, 9]));
    b.output("sm", b.softmax(b.slice(masked, 2, 1, 8)));
    b.output("rowmax", b.reduce("max", b.input("m", "f32", [131, 5]), -1, false));
  });

  it("every candidate shape matches the reference", async () => {
    for (const shape of ELEMENTWISE_VARIANTS) {
      const { program } = await expectMatches(mixed, {
        tuning: { ...DEFAULT_TUNING, ...shape },
        specs: { r: { lo: -3, hi: 5 } },
      });
      const launches = program.plan.launches;
      const byKind = (kind: string) =>
        program.fused.kernels.flatMap((k, i) => (k.kind === kind ? [launches[i]!] : []));
      // The shapes asked for are the shapes run: loops over items, rows owned by one invocation.
      expect(byKind("map").some((l) => (l.items ?? 1) > 1)).toBe(shape.mapItems > 1);
      expect(byKind("reduce").some((l) => (l.items ?? 1) > 1)).toBe(shape.mapItems > 1);
      const rows = byKind("rows");
      expect(rows.length).toBeGreaterThanOrEqual(3);
      expect(
        rows.every((l) => (l.rowsPerWorkgroup !== undefined) === shape.rowsPerWorkgroup > 0),
      ).toBe(true);
    }
  });

  it("few rows stay shared among invocations even when rows may be owned", async () => {
    const { program } = await expectMatches(
      graph((b) => b.output("ln", layerNorm(b, b.input("x", "f32", [2, 5, 300]), 300, "ln"))),
      { kernels: 1, specs: { x: { lo: -3, hi: 5 } } },
    );
    expect(program.plan.launches[0]!.rowsPerWorkgroup).toBeUndefined();
    expect(program.plan.launches[0]!.rowThreads).toBeGreaterThan(1);
  });
});

describe("row-reduction template", () => {
  it("softmax with scale and causal mask is one kernel", async () => {
    for (const [t, s] of [
      [1, 1],
      [7, 7],
      [33, 33],
      [127, 127],
      [5, 67],
    ] as const) {
      await expectMatches(
        graph((b) => {
          const x = b.input("x", "f32", [2, t, s]);
          b.output("p", b.softmax(b.causalMask(b.binary("mul", x, b.constant(0.125)))));
        }),
        { kernels: 1, specs: { x: { lo: -20, hi: 20 } } },
      );
    }
  });

  it("plain softmax on long rows, and a fully masked row gives zeros", async () => {
    await expectMatches(
      graph((b) => {
        b.output("p", b.softmax(b.input("x", "f32", [3, 1000])));
        b.output("mask", b.causalMask(b.input("s", "f32", [2, 5, 7]))); // stores -inf
        const x = b.input("y", "f32", [2, 3, 4]);
        // Shift the mask up one row: row 0 of the first matrix becomes all -inf.
        const masked = b.causalMask(b.slice(b.concat([x, x], 1), 1, 1, 4));
        b.output("m", b.softmax(b.slice(masked, 2, 0, 3)));
      }),
    );
  });

  it("LayerNorm (as std.nn lowers it) is one kernel", async () => {
    for (const d of [1, 7, 33, 127, 67]) {
      await expectMatches(
        graph((b) => b.output("y", layerNorm(b, b.input("x", "f32", [3, 5, d]), d, "ln"))),
        { kernels: 1, specs: { x: { lo: -3, hi: 5 } } },
      );
    }
  });

  it("RMSNorm and a variance written as E[x²] − E[x]² are one kernel each", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [7, 67]);
        const ms = b.reduce("mean", b.binary("mul", x, x), -1, true);
        const w = b.param("w", [67], true, "ones");
        b.output(
          "rms",
          b.binary(
            "mul",
            b.binary("mul", x, b.unary("rsqrt", b.binary("add", ms, b.constant(1e-6)))),
            w,
          ),
        );
      }),
      { kernels: 1 },
    );
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [7, 33]);
        const m = b.reduce("mean", x, -1, true);
        const v = b.binary(
          "sub",
          b.reduce("mean", b.binary("mul", x, x), -1, true),
          b.binary("mul", m, m),
        );
        b.output(
          "y",
          b.binary(
            "div",
            b.binary("sub", x, m),
            b.unary("sqrt", b.binary("add", v, b.constant(1e-5))),
          ),
        );
      }),
      { kernels: 1 },
    );
  });
});

describe("reductions", () => {
  it("sum, mean and max along every axis, keepdim or not", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [7, 33, 5]);
        for (const fn of ["sum", "mean", "max"] as const)
          for (const axis of [0, 1, 2]) b.output(`${fn}${axis}`, b.reduce(fn, x, axis, axis === 1));
      }),
    );
  });

  it("a non-last-axis reduction takes an epilogue", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [127, 33]);
        b.output(
          "y",
          b.unary("exp", b.binary("mul", b.reduce("mean", x, 0, true), b.constant(0.5))),
        );
      }),
      { kernels: 1 },
    );
  });
});

describe("gather, scatter and copies", () => {
  it("gather with i32 ids, fused with a positional add", async () => {
    await expectMatches(
      graph((b) => {
        const table = b.param("wte", [127, 33], true, "normal");
        const ids = b.input("ids", "i32", [3, 7]);
        const pos = b.param("wpe", [7, 33], true, "normal");
        b.output("h", b.binary("add", b.gather(table, ids), pos));
      }),
      { kernels: 1, specs: { ids: { ints: 127 } } },
    );
  });

  it("scatter_add accumulates repeated ids", async () => {
    await expectMatches(
      graph((b) => {
        const src = b.input("src", "f32", [3, 33, 7]);
        const ids = b.input("ids", "i32", [3, 33]);
        b.output("grad", b.scatterAdd(src, ids, 5));
      }),
      { specs: { ids: { ints: 5 } } },
    );
  });

  it("permute outputs are copies; permutes feeding elementwise ops are strided reads", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [2, 7, 33, 5]);
        b.output("p", b.permute(x, [2, 0, 3, 1]));
        b.output("t", b.permute(x, [0, 1, 3, 2]));
        b.output("e", b.binary("add", b.permute(x, [3, 1, 2, 0]), b.constant(1)));
        // reshape of a permute needs the copy; reshape of a contiguous value is free.
        b.output("r", b.reshape(b.permute(x, [1, 0, 2, 3]), [14, 165]));
      }),
    );
  });

  it("concat, slice and iota", async () => {
    await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [7, 33]);
        const y = b.input("y", "f32", [7, 5]);
        const z = b.input("z", "f32", [7, 1]);
        b.output("cat", b.concat([x, y, z], 1));
        b.output("cat0", b.concat([x, b.slice(x, 0, 2, 3)], 0));
        b.output("sl", b.slice(x, 1, 4, 20));
        b.output("sl_add", b.binary("add", b.slice(x, 1, 3, 5), y));
        b.output("iota", b.iota(y));
      }),
    );
  });
});

describe("concatenations written in place", () => {
  it("parts are stored at their offsets by their own kernels; others are copied", async () => {
    let cat = 0;
    const r = await expectMatches(
      graph((b) => {
        const x = b.input("x", "f32", [7, 5]);
        const y = b.input("y", "f32", [3, 5]);
        const w = b.param("w", [5, 5], true, "normal");
        const flat = (id: number) => b.reshape(id, [b.shape(id).reduce((a, d) => a * d, 1)]);
        const shared = b.unary("tanh", x); // also read by another kernel
        const repeated = b.unary("exp", y); // a part twice: copied both times
        const twice = b.unary("sigmoid", b.binary("mul", x, b.constant(2)));
        const parts = [
          flat(b.unary("relu", x)),
          flat(shared),
          flat(repeated),
          flat(w), // a parameter: copied
          flat(x), // an input: copied
          flat(b.matmul(x, w)), // an anchor kernel's value
          flat(b.permute(b.binary("mul", y, y), [1, 0])), // a permuted store
          flat(repeated),
          flat(b.reduce("sum", x, 1, true)), // seven elements: odd offsets follow
          // Nested: its parts are placed in it, and it, written by two kernels, is copied.
          b.concat([flat(b.unary("sigmoid", y)), flat(b.unary("neg", x))], 0),
          flat(b.binary("add", x, b.constant(1))),
          flat(twice),
          // Its one part reads `twice`, placed here too: so it is copied, not placed.
          b.concat([flat(b.binary("mul", twice, twice))], 0),
        ];
        cat = b.concat(parts, 0);
        b.output("cat", b.binary("mul", cat, b.constant(3)));
        b.output("sum", b.reduce("sum", b.reshape(cat, [1, b.shape(cat)[0]!]), 1, false));
        b.output("shared_twice", b.binary("mul", shared, b.constant(2)));
      }),
    );
    const kernels = r.program.fused.kernels;
    // No kernel binds all the parts, and the concatenation is never a pass of its own.
    expect(Math.max(...kernels.map((k) => Object.keys(k.loads).length))).toBeLessThan(8);
    const copies = kernels.filter((k) => k.root === cat && k.members.length === 0);
    // w, x, the repeated part twice and the two nested concatenations.
    expect(copies).toHaveLength(6);
    expect(kernels.some((k) => k.root === cat && k.members.length > 0)).toBe(false);
  });
});

describe("attention", () => {
  it("scaled causal attention end to end is one kernel after the projections", async () => {
    for (const [B, T, d, heads] of [
      [1, 1, 8, 2],
      [2, 7, 16, 2],
      [1, 33, 24, 3],
      [1, 5, 18, 3], // head_dim 6: the scalar (non-vec4) path
      [3, 127, 32, 2], // query rows in groups of 8: a partial last group per batch
      [2, 6, 16, 4],
    ] as const) {
      const r = await expectMatches(
        graph((b) =>
          b.output("y", attention(b, b.input("x", "f32", [B, T, d]), B, T, d, heads, "attn")),
        ),
      );
      // q, k, v projections, the attention kernel, the output projection.
      expect(r.program.kernels.map((k) => k.kind)).toEqual([
        "matmul",
        "matmul",
        "matmul",
        "attention",
        "matmul",
      ]);
    }
  });

  it("without fusion it is scores, softmax and P·V, each right", async () => {
    const g = graph((b) => {
      const q = b.input("q", "f32", [2, 3, 33, 8]);
      const k = b.input("k", "f32", [2, 3, 33, 8]);
      const v = b.input("v", "f32", [2, 3, 33, 8]);
      const s = b.binary("mul", b.matmul(q, b.permute(k, [0, 1, 3, 2])), b.constant(0.35));
      const p = b.softmax(b.causalMask(s));
      b.output("o", b.matmul(p, v));
      b.output("p", p); // the probabilities are an output: no fused attention
    });
    const r = await expectMatches(g);
    expect(r.program.kernels.map((k) => k.kind)).toEqual(["matmul", "rows", "matmul"]);
  });

  it("a transformer block matches the reference", async () => {
    await expectMatches(transformerBlockGraph(2, 7, 16, 2, 24), { kernels: 9 });
  });
});

describe("program-level behaviour", () => {
  it("reuses buffers across a multi-kernel graph and still computes the right values", async () => {
    const g = graph((b) => {
      let h = b.input("x", "f32", [33, 64]);
      for (let i = 0; i < 6; i++) {
        h = b.unary("relu", linear(b, layerNorm(b, h, 64, `l${i}.ln`), 64, 64, `l${i}.fc`));
      }
      b.output("y", h);
    });
    const r = await expectMatches(g);
    const pools = r.program.buffers.filter((x) => x.role === "pool");
    expect(r.program.kernels.length).toBe(12);
    expect(pools.length).toBeLessThan(12); // 12 stored values share fewer buffers
    expect(r.program.memory.peakBytes).toBeLessThan(r.program.memory.totalBytes);
  });

  it("falls back to scalar loads when vec4 bindings would exceed the binding limit", async () => {
    const g = graph((b) => {
      const x = b.input("x", "f32", [8, 16]);
      b.output("y", b.binary("add", linear(b, x, 16, 16, "fc"), x)); // x read as vec4 and f32
    });
    // A vec4 variant (the lavapipe default loads scalars: see compiler/kernels/wgsl/variants.ts).
    const tuning = withVariant(MATMUL_VARIANTS.find((v) => v.name === "reg4x4-cols-8x8")!);
    const r = await expectMatches(g, {
      limits: { maxStorageBuffersPerShaderStage: 4 },
      kernels: 1,
      tuning,
    });
    expect(r.program.kernels[0]!.bindings.length).toBe(4);
    expect(r.program.kernels[0]!.wgsl).not.toContain("vec4");
    const wide = await expectMatches(g, { kernels: 1, tuning });
    expect(wide.program.kernels[0]!.bindings.length).toBe(5);
  });

  it("reads and writes tensors larger than one binding through windows", async () => {
    // 16 KiB windows: most tensors below span several bindings.
    const limits = { maxStorageBufferBindingSize: 16384, maxStorageBuffersPerShaderStage: 16 };
    const g = graph((b) => {
      const table = b.param("wte", [300, 16], true, "normal");
      const ids = b.input("ids", "i32", [2, 40]);
      const h = b.binary("add", b.gather(table, ids), b.param("wpe", [40, 16], true, "normal"));
      const n = layerNorm(b, h, 16, "ln");
      b.output("logits", b.matmul(n, b.permute(table, [1, 0])));
      b.output("nn", b.matmul(b.input("a", "f32", [70, 64]), b.input("w", "f32", [64, 20])));
      b.output("grad", b.scatterAdd(h, ids, 300));
      b.output("big", b.unary("exp", b.input("x", "f32", [6000])));
    });
    const r = await expectMatches(g, { limits, specs: { ids: { ints: 300 } } });
    expect(r.program.kernels.some((k) => k.bindings.some((x) => x.byteOffset > 0))).toBe(true);
    const att = graph((b) =>
      b.output("y", attention(b, b.input("x", "f32", [1, 80, 64]), 1, 80, 64, 2, "a")),
    );
    await expectMatches(att, { limits });
  });

  it("dispatches more than 65535 workgroups in one dimension through a 2-D grid", async () => {
    const n = 64 * 70_000 + 5;
    const g = graph((b) =>
      b.output("y", b.binary("mul", b.unary("neg", b.input("x", "f32", [n])), b.constant(3))),
    );
    // One element per invocation, so the workgroups outnumber one grid dimension.
    const tuning = { ...DEFAULT_TUNING, mapItems: 1 };
    const program = compileGraph(
      g,
      { ...gpu().limits, maxComputeWorkgroupsPerDimension: 65_535 },
      { tuning },
    );
    expect(program.kernels[0]!.grid[1]).toBeGreaterThan(1);
    expect(program.kernels[0]!.grid[0]).toBeLessThanOrEqual(65_535);
    await expectMatches(g, { tuning, limits: { maxComputeWorkgroupsPerDimension: 65_535 } });
  });
});
