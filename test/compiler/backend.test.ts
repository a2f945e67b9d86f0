// The back end without a device: what fuseKernels groups, what planBuffers allocates and
// rejects, and that emitted WGSL is specialised per shape. GPU correctness is in
// test/runtime/kernels.test.ts.
import { describe, expect, it } from "vitest";

import { compileGraph } from "../../compiler/kernels/compile-graph.js";
import { fuseKernels, reshapeView } from "../../compiler/kernels/fuse-kernels.js";
import { IrBuilder } from "../../compiler/ir/builder.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import {
  LimitError,
  WEBGPU_DEFAULT_LIMITS,
  planBuffers,
  spreadGrid,
} from "../../compiler/kernels/plan-buffers.js";
import {
  DEFAULT_TUNING,
  matmulVariant,
  withMatmulVariant,
} from "../../compiler/kernels/wgsl/variants.js";
import { linear, transformerBlockGraph } from "../runtime/model-graphs.js";

function graph(build: (b: IrBuilder) => void): IrGraph {
  const b = new IrBuilder();
  build(b);
  return b.finish();
}

describe("fuseKernels", () => {
  it("Linear + GELU + residual is one matmul kernel that reads the weight transposed", () => {
    const g = graph((b) => {
      const x = b.input("x", "f32", [4, 16, 64]);
      const y = b.unary("gelu", linear(b, x, 64, 64, "fc"));
      b.output("y", b.binary("add", y, x));
    });
    const p = fuseKernels(g);
    expect(p.kernels.length).toBe(1);
    const k = p.kernels[0]!;
    expect(k.kind).toBe("matmul");
    // The permute of the weight is a strided view, not a kernel: B[k, n] = weight[n, k].
    const weight = g.nodes.find((n) => n.op === "param" && n.name === "fc.weight")!;
    const view = Object.values(k.loads).find((v) => v.storage === weight.id)!;
    expect(view.shape).toEqual([64, 64]);
    expect(view.strides).toEqual([1, 64]);
  });

  it("a transformer block (d=512, T=256, 8 heads) compiles to 9 kernels", () => {
    const g = transformerBlockGraph(1, 256, 512, 8, 2048);
    const p = compileGraph(g);
    expect(p.kernels.map((k) => k.kind)).toEqual([
      "rows", // ln_1
      "matmul", // q
      "matmul", // k
      "matmul", // v
      "attention", // softmax(mask(q·kᵀ·s))·v, written in [B, T, heads, hd] order
      "matmul", // o + residual
      "rows", // ln_2
      "matmul", // up + gelu
      "matmul", // down + residual
    ]);
    expect(p.memory.peakBytes).toBeLessThan(p.memory.totalBytes);
  });

  it("folds the head merge permute into the attention kernel's store", () => {
    const p = fuseKernels(transformerBlockGraph(1, 8, 16, 2, 32));
    const att = p.kernels.find((k) => k.kind === "attention")!;
    // [B, heads, T, hd] written with strides of [B, T, heads, hd].
    expect(att.shape).toEqual([1, 2, 8, 8]);
    expect(att.out.strides).toEqual([128, 8, 16, 1]);
  });

  it("keeps three kernels for attention when asked", () => {
    const p = compileGraph(transformerBlockGraph(1, 8, 16, 2, 32), WEBGPU_DEFAULT_LIMITS, {
      fuseAttention: false,
    });
    expect(p.kernels.map((k) => k.kind).filter((k) => k !== "matmul")).toEqual([
      "rows",
      "rows",
      "rows",
    ]);
    expect(p.kernels.length).toBe(11);
  });

  it("reshape aliases its input; a reshape of a permute copies once", () => {
    const g = graph((b) => {
      const x = b.input("x", "f32", [4, 6]);
      const y = b.unary("exp", x);
      b.output("r", b.reshape(y, [2, 12]));
      b.output("rp", b.reshape(b.permute(y, [1, 0]), [24]));
    });
    const p = fuseKernels(g);
    expect(p.kernels.map((k) => k.kind)).toEqual(["map", "map"]);
    expect(p.outputs[0]!.view.storage).toBe(p.kernels[0]!.root);
  });

  it("stops fusing before a kernel would bind too many storage buffers", () => {
    const g = graph((b) => {
      let acc = b.input("x0", "f32", [8]);
      for (let i = 1; i < 12; i++) acc = b.binary("add", acc, b.input(`x${i}`, "f32", [8]));
      b.output("y", acc);
    });
    const p = fuseKernels(g, { maxStorageBuffers: 8 });
    expect(p.kernels.length).toBeGreaterThan(1);
    for (const k of p.kernels) {
      const bound = new Set([...Object.values(k.loads).map((v) => v.storage), k.out.storage]);
      expect(bound.size).toBeLessThanOrEqual(8);
    }
    expect(() => planBuffers(p, WEBGPU_DEFAULT_LIMITS)).not.toThrow();
  });

  it("reshapeView follows torch's rules", () => {
    const v = { storage: 0, dtype: "f32" as const, offset: 0, shape: [4, 6], strides: [1, 4] };
    expect(reshapeView(v, [24])).toBeUndefined();
    expect(reshapeView(v, [2, 2, 6])).toEqual({ ...v, shape: [2, 2, 6], strides: [2, 1, 4] });
    // Strides of size-1 axes are never used.
    const withOne = reshapeView(v, [4, 1, 6])!;
    expect([withOne.strides[0], withOne.strides[2]]).toEqual([1, 4]);
  });
});

describe("planBuffers", () => {
  it("reuses dead buffers: peak memory is below the sum of tensor sizes", () => {
    const g = graph((b) => {
      let h = b.input("x", "f32", [32, 64]);
      for (let i = 0; i < 8; i++) h = b.unary("relu", linear(b, h, 64, 64, `l${i}`));
      b.output("y", h);
    });
    const p = compileGraph(g);
    const plan = p.plan;
    const pools = plan.buffers.filter((b) => b.role === "pool");
    expect(pools.length).toBe(2); // ping-pong
    expect(plan.peakBytes).toBeLessThan(plan.totalBytes);
    // No kernel writes a buffer it also reads.
    for (const k of p.kernels) {
      const written = k.bindings.filter((x) => x.access === "read_write").map((x) => x.buffer);
      const read = k.bindings.filter((x) => x.access === "read").map((x) => x.buffer);
      for (const w of written) expect(read).not.toContain(w);
    }
  });

  it("names the tensor and the limit when a tensor does not fit a buffer", () => {
    const g = graph((b) => {
      const w = b.param("embed.weight", [50257, 768], true, "normal");
      b.output("y", b.gather(w, b.input("ids", "i32", [4])));
    });
    const small = { ...WEBGPU_DEFAULT_LIMITS, maxBufferSize: 128 << 20 };
    expect(() => compileGraph(g, small)).toThrow(LimitError);
    try {
      compileGraph(g, small);
    } catch (e) {
      const msg = (e as Error).message;
      expect(msg).not.toContain("\n");
      expect(msg).toContain("embed.weight");
      expect(msg).toContain("maxBufferSize");
    }
  });

  it("binds a tensor larger than one binding as several windows", () => {
    const g = graph((b) => {
      const w = b.param("embed.weight", [50257, 768], true, "normal");
      b.output("y", b.gather(w, b.input("ids", "i32", [4])));
    });
    const p = compileGraph(g, { ...WEBGPU_DEFAULT_LIMITS, maxBufferSize: 1 << 30 });
    const wid = g.nodes.find((n) => n.op === "param")!.id;
    const table = p.kernels[0]!.bindings.filter((x) => x.storage === wid);
    expect(table.length).toBe(2); // 154 MB over 128 MB windows
    expect(table[1]!.byteOffset).toBe(table[0]!.byteSize);
    expect(table[0]!.byteSize).toBeLessThanOrEqual(
      WEBGPU_DEFAULT_LIMITS.maxStorageBufferBindingSize,
    );
    // With too few bindings for the windows, the error says why.
    expect(() =>
      compileGraph(g, {
        ...WEBGPU_DEFAULT_LIMITS,
        maxBufferSize: 1 << 30,
        maxStorageBufferBindingSize: 1 << 20,
      }),
    ).toThrow(/maxStorageBuffersPerShaderStage.*embed\.weight.*windows/);
  });

  it("spreads large dispatches over a 2-D or 3-D grid", () => {
    expect(spreadGrid(100, 65535, "k")).toEqual([100, 1, 1]);
    const [x, y, z] = spreadGrid(70_000, 65535, "k");
    expect(x).toBeLessThanOrEqual(65535);
    expect(x * y * z).toBeGreaterThanOrEqual(70_000);
    const g3 = spreadGrid(20, 4, "k");
    expect(g3.every((d) => d <= 4)).toBe(true);
    expect(g3[0] * g3[1] * g3[2]).toBeGreaterThanOrEqual(20);
    expect(() => spreadGrid(65, 4, "kernel x")).toThrow(/maxComputeWorkgroupsPerDimension/);
  });

  it("shrinks workgroups and shared-memory tiles to the device", () => {
    const g = graph((b) =>
      b.output("y", b.matmul(b.input("a", "f32", [64, 64]), b.input("b", "f32", [64, 64]))),
    );
    const tiny = {
      ...WEBGPU_DEFAULT_LIMITS,
      maxComputeInvocationsPerWorkgroup: 64,
      maxComputeWorkgroupStorageSize: 1024,
    };
    const p = compileGraph(g, tiny, {
      tuning: {
        ...withMatmulVariant(DEFAULT_TUNING, matmulVariant("tile64-4x4-16x16")),
        mapThreads: 256,
        rowThreads: 256,
      },
    });
    const [x, y, z] = p.kernels[0]!.workgroupSize;
    expect(x * y * z).toBeLessThanOrEqual(64);
    expect(p.plan.launches[0]!.workgroupBytes).toBeLessThanOrEqual(1024);
  });
});

describe("matmul tiers", () => {
  const tierOf = (m: number, k: number, n: number, tuning = DEFAULT_TUNING) => {
    const g = graph((b) =>
      b.output("y", b.matmul(b.input("a", "f32", [m, k]), b.input("b", "f32", [k, n]))),
    );
    return compileGraph(g, WEBGPU_DEFAULT_LIMITS, tuning).plan.launches[0]!.matmul!.name;
  };

  it("small matmuls take the variant that compiles fast, large ones the big block", () => {
    // 2·16·64·512 = 2^20 flops: small; one more row is not.
    expect(tierOf(16, 64, 512)).toBe(DEFAULT_TUNING.smallMatmul!.nn.name);
    expect(tierOf(17, 64, 512)).toBe(DEFAULT_TUNING.matmul.nn.name);
    expect(tierOf(256, 512, 512)).toBe(DEFAULT_TUNING.largeMatmul.nn.name);
    expect(DEFAULT_TUNING.smallMatmul!.nn.name).not.toBe(DEFAULT_TUNING.matmul.nn.name);
  });

  it("a tuning without a small tier (an older autotune cache) uses its middle tier", () => {
    const { smallMatmul: _, ...older } = DEFAULT_TUNING;
    expect(tierOf(16, 64, 512, older)).toBe(DEFAULT_TUNING.matmul.nn.name);
  });

  it("withMatmulVariant puts one variant in every tier", () => {
    const v = matmulVariant("reg4x4-cols-8x8");
    const one = withMatmulVariant(DEFAULT_TUNING, v);
    for (const [m, k, n] of [
      [16, 64, 64],
      [64, 128, 64],
      [256, 512, 512],
    ] as const)
      expect(tierOf(m, k, n, one)).toBe(v.name);
  });
});

describe("emitWgsl", () => {
  it("bakes shapes into the text and uses vec4 loads where the layout allows", () => {
    const g = graph((b) =>
      b.output("y", b.matmul(b.input("a", "f32", [64, 128]), b.input("b", "f32", [128, 32]))),
    );
    // A vec4 variant (the lavapipe default loads scalars: see compiler/kernels/wgsl/variants.ts).
    const v = matmulVariant("reg4x4-cols-8x8");
    const vec = withMatmulVariant(DEFAULT_TUNING, v);
    const k = compileGraph(g, WEBGPU_DEFAULT_LIMITS, vec).kernels[0]!;
    expect(k.wgsl).toContain("array<vec4<f32>>");
    expect(k.bindings.map((x) => x.access)).toEqual(["read", "read", "read_write"]);
    const odd = graph((b) =>
      b.output("y", b.matmul(b.input("a", "f32", [7, 33]), b.input("b", "f32", [33, 5]))),
    );
    expect(compileGraph(odd, WEBGPU_DEFAULT_LIMITS, vec).kernels[0]!.wgsl).not.toContain("vec4");
  });
});
