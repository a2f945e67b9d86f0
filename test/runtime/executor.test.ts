// The executor and the autotuner on the real device: pipeline caching, input checks, shader
// errors with line:col, per-kernel timing, the on-disk autotune cache. Fails, never skips,
// without a WebGPU adapter (run scripts/setup.sh).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { describe, expect, it } from "vitest";

import { compileGraph } from "../../compiler/kernels/compile-graph.js";
import { IrBuilder } from "../../compiler/ir/builder.js";
import { ELEMENTWISE_VARIANTS, MATMUL_VARIANTS } from "../../compiler/kernels/wgsl/variants.js";
import {
  adapterKey,
  autotune,
  benchElementwise,
  benchMatmul,
  loadTuning,
} from "../../runtime/autotune.js";
import { ShaderError, createKernelPipeline } from "../../runtime/compile-kernels.js";
import { Executor } from "../../runtime/executor.js";
import { interpret } from "../../runtime/reference/interpret.js";
import { checkGraph, randomLeaves, relL2, useDevice } from "./gpu-harness.js";

const gpu = useDevice({ optionalFeatures: ["timestamp-query"] });

function smallProgram() {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [7, 33]);
  const w = b.param("w", [5, 33], true, "normal");
  const y = b.matmul(x, b.permute(w, [1, 0]));
  b.output("y", b.softmax(y));
  b.output("s", b.reduce("sum", x, 0, false));
  return b.finish();
}

describe("Executor", () => {
  it("runs repeatedly with new inputs, uploading parameters once", async () => {
    const ctx = gpu();
    const program = compileGraph(smallProgram(), ctx.limits);
    const exe = await Executor.create(ctx, program);
    try {
      const w = Float32Array.from({ length: 5 * 33 }, (_, i) => Math.sin(i));
      exe.setParams(new Map([["w", w]]));
      for (const scale of [1, -0.5]) {
        const x = Float32Array.from({ length: 7 * 33 }, (_, i) => scale * Math.cos(i * 0.3));
        const out = await exe.run({ x });
        const s = new Float64Array(33);
        for (let i = 0; i < 7; i++) for (let j = 0; j < 33; j++) s[j] += x[i * 33 + j]!;
        expect(relL2(out.get("s")!, s)).toBeLessThan(1e-6);
        expect(out.get("y")!.length).toBe(35);
      }
    } finally {
      exe.destroy();
    }
  });

  it("rejects missing inputs, unset parameters and wrong dtypes or sizes", async () => {
    const ctx = gpu();
    const exe = await Executor.create(ctx, compileGraph(smallProgram(), ctx.limits));
    try {
      await expect(exe.run({ x: new Float32Array(231) })).rejects.toThrow(
        /parameter w was never set/,
      );
      exe.setParams({ w: new Float32Array(165) });
      await expect(exe.run({})).rejects.toThrow(/missing input x/);
      await expect(exe.run({ x: new Int32Array(231) })).rejects.toThrow(/Float32Array/);
      await expect(exe.run({ x: new Float32Array(3) })).rejects.toThrow(/needs 231 values/);
      expect(() => exe.setParams({ w: new Float32Array(2) })).toThrow(/parameter w/);
    } finally {
      exe.destroy();
    }
  });

  it("reports a WGSL error with kernel:line:col and the offending line", async () => {
    const device = gpu().device;
    const broken = {
      name: "broken_kernel",
      entryPoint: "main",
      bindings: [],
      wgsl: ["@compute @workgroup_size(1)", "fn main() {", "  let a = 1 +;", "}"].join("\n"),
    };
    const err = await createKernelPipeline(device, broken).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ShaderError);
    const e = err as ShaderError;
    expect(e.message).toMatch(/broken_kernel:3:\d+: /);
    expect(e.message).toContain("let a = 1 +;");
    expect(e.messages[0]!.line).toBe(3);
    expect(e.messages[0]!.col).toBeGreaterThan(0);
  });

  it("every emitted kernel of a varied program compiles cleanly (no warnings swallowed)", async () => {
    const device = gpu().device;
    const b = new IrBuilder();
    const x = b.input("x", "f32", [3, 7, 33]);
    const ids = b.input("ids", "i32", [3, 7]);
    b.output("g", b.binary("add", b.gather(b.param("t", [9, 33], true, "n"), ids), x));
    b.output("sc", b.scatterAdd(x, ids, 9));
    b.output("r", b.reduce("max", x, 1, true));
    const program = compileGraph(b.finish(), gpu().limits);
    for (const k of program.kernels) {
      const module = device.createShaderModule({ code: k.wgsl });
      const info = await module.getCompilationInfo();
      expect(
        info.messages.filter((m) => m.type !== "info"),
        k.name,
      ).toEqual([]);
    }
  });

  it("times each kernel when asked", async () => {
    const ctx = gpu();
    const exe = await Executor.create(ctx, compileGraph(smallProgram(), ctx.limits), {
      timing: true,
    });
    try {
      exe.setParams({ w: new Float32Array(165).fill(0.5) });
      await exe.run({ x: new Float32Array(231).fill(1) });
      await exe.run({ x: new Float32Array(231).fill(2) });
      const stats = exe.stats();
      expect(stats.map((s) => s.name)).toEqual(exe.program.kernels.map((k) => k.name));
      for (const s of stats) {
        expect(s.calls).toBe(2);
        expect(s.totalMs).toBeGreaterThanOrEqual(0);
        expect(Number.isFinite(s.totalMs)).toBe(true);
      }
      expect(stats.reduce((a, s) => a + s.totalMs, 0)).toBeGreaterThan(0);
    } finally {
      exe.destroy();
    }
  });

  it("shares pipelines between identical kernels", async () => {
    const b = new IrBuilder();
    let h = b.input("x", "f32", [8, 16]);
    for (let i = 0; i < 4; i++)
      h = b.unary("gelu", b.matmul(h, b.param(`w${i}`, [16, 16], true, "n")));
    b.output("y", h);
    const program = compileGraph(b.finish(), gpu().limits);
    const texts = new Set(program.kernels.map((k) => k.wgsl));
    expect(program.kernels.length).toBe(4);
    // Ping-pong buffers: layers 0/2 and 1/3 are the same text, one pipeline each.
    expect(texts.size).toBeLessThan(4);
    const device = gpu().device;
    const [p0, p2] = await Promise.all([
      createKernelPipeline(device, program.kernels[0]!),
      createKernelPipeline(device, program.kernels[2]!),
    ]);
    if (program.kernels[0]!.wgsl === program.kernels[2]!.wgsl) expect(p0).toBe(p2);
    const r = await checkGraph(gpu(), b.finish());
    expect(r.errors.y).toBeLessThan(1e-5);
  });
});

describe("static kernels", () => {
  it("run once per set of parameters: merged LoRA weights follow setParams", async () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [5, 12]);
    const w = b.param("w", [12, 12], true, "normal");
    const A = b.param("lora_A", [3, 12], true, "normal");
    const B = b.param("lora_B", [12, 3], true, "zeros");
    // W + 2·B·A, as --merge-adapters lowers a LoRA on a Linear.
    const merged = b.binary("add", w, b.binary("mul", b.matmul(B, A), b.constant(2)));
    b.output("y", b.matmul(x, b.permute(merged, [1, 0])));
    const graph = b.finish();
    const program = compileGraph(graph, gpu().limits);
    expect(program.kernels.filter((k) => k.static).length).toBeGreaterThan(0);
    expect(program.kernels.filter((k) => !k.static).length).toBe(1);
    const exe = await Executor.create(gpu(), program);
    try {
      const leaves = randomLeaves(graph, 41);
      const feed = (name: string) => Float32Array.from(leaves.get(name)!.data);
      exe.setParams({ w: feed("w"), lora_A: feed("lora_A"), lora_B: feed("lora_B") });
      exe.poison();
      const first = (await exe.run({ x: feed("x") })).get("y")!;
      expect(relL2(first, interpret(graph, leaves).outputs.get("y")!.data)).toBeLessThan(1e-5);
      // New adapter weights: the static kernels run again before the next call.
      const changed = new Map(leaves);
      changed.set("lora_B", randomLeaves(graph, 42).get("lora_B")!);
      exe.setParams({ lora_B: Float32Array.from(changed.get("lora_B")!.data) });
      const second = (await exe.run({ x: feed("x") })).get("y")!;
      const want = interpret(graph, changed).outputs.get("y")!.data;
      expect(relL2(second, want)).toBeLessThan(1e-5);
      expect(relL2(second, first)).toBeGreaterThan(1e-3);
      // And a call with unchanged parameters reuses them.
      expect(relL2((await exe.run({ x: feed("x") })).get("y")!, want)).toBeLessThan(1e-5);
    } finally {
      exe.destroy();
    }
  });
});

describe("autotune", () => {
  it("benchMatmul reports a positive GFLOP/s for both layouts", async () => {
    for (const layout of ["nn", "nt"] as const) {
      const g = await benchMatmul(gpu(), 64, 48, 32, MATMUL_VARIANTS[0]!, { layout, budgetMs: 5 });
      expect(g).toBeGreaterThan(0);
      expect(Number.isFinite(g)).toBe(true);
    }
  });

  it("benchElementwise times every elementwise shape", async () => {
    for (const shape of ELEMENTWISE_VARIANTS) {
      const ms = await benchElementwise(gpu(), shape, { budgetMs: 5 });
      expect(ms).toBeGreaterThan(0);
      expect(Number.isFinite(ms)).toBe(true);
    }
  });

  it("measures once per adapter and caches the choice on disk atomically", async () => {
    const ctx = gpu();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-autotune-"));
    try {
      const lines: string[] = [];
      const tuned = await autotune(ctx, {
        cacheDir: dir,
        variants: [MATMUL_VARIANTS[0]!, MATMUL_VARIANTS.at(-1)!],
        shapes: [[32, 32, 32]],
        largeVariants: [MATMUL_VARIANTS[1]!],
        largeShapes: [[64, 128, 32]],
        elementwiseVariants: [ELEMENTWISE_VARIANTS[1]!],
        budgetMs: 5,
        log: (l) => lines.push(l),
      });
      // 2 variants × 2 layouts, 1 large variant × 2 layouts, 1 elementwise shape.
      expect(lines.length).toBe(7);
      expect(tuned.largeMatmul).toEqual({ nn: MATMUL_VARIANTS[1], nt: MATMUL_VARIANTS[1] });
      expect(tuned).toMatchObject(ELEMENTWISE_VARIANTS[1]!);
      const file = path.join(dir, "autotune.json");
      const cache = JSON.parse(fs.readFileSync(file, "utf8"));
      expect(Object.keys(cache.entries)).toEqual([adapterKey(ctx)]);
      expect(adapterKey(ctx)).toContain(ctx.info.description || ctx.info.device);
      expect(fs.readdirSync(dir)).toEqual(["autotune.json"]); // no temp file left behind
      // Cached: no measuring (an empty candidate list would fail if it measured).
      const again = await autotune(ctx, {
        cacheDir: dir,
        variants: [],
        largeVariants: [],
        elementwiseVariants: [],
      });
      expect(again).toEqual(tuned);
      expect(loadTuning(ctx, dir)).toEqual(tuned);
      // The tuned choice compiles and runs correctly.
      const r = await checkGraph(ctx, smallProgram(), { tuning: tuned });
      expect(r.errors.y).toBeLessThan(1e-5);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
