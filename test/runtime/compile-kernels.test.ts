// Compiling a program's kernels before its first run (runtime/compile-kernels.ts): progress
// counts every distinct kernel once, a software driver compiles on sibling devices in
// parallel, and what runs afterwards is still right (against the reference interpreter, on
// poisoned buffers). Fails, never skips, without a WebGPU adapter (run scripts/setup.sh).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { IrBuilder } from "../../compiler/ir/builder.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import { compileGraph } from "../../compiler/kernels/compile-graph.js";
import { ShaderError, compileKernels } from "../../runtime/compile-kernels.js";
import { Executor } from "../../runtime/executor.js";
import { interpret } from "../../runtime/reference/interpret.js";
import { deviceFeeds, randomLeaves, relL2, useDevice } from "./gpu-harness.js";
import { transformerBlockGraph } from "./model-graphs.js";

// An empty shader cache of this file's own, read when the device opens: kernels compiled by
// other test files (or earlier runs) must not make these compile in no time.
const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-shader-cache-"));
process.env.MESA_SHADER_CACHE_DIR = cacheDir;
afterAll(() => fs.rmSync(cacheDir, { recursive: true, force: true }));

const gpu = useDevice();

/** A transformer block at awkward sizes: layer norms, matmuls, attention. */
const block = (T: number) => transformerBlockGraph(1, T, 16, 2, 24);

/** Three small kernels: a matmul, a softmax and a sum. */
function small() {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [5, 9]);
  const w = b.param("w", [3, 9], true, "normal");
  b.output("y", b.softmax(b.matmul(x, b.permute(w, [1, 0]))));
  b.output("s", b.reduce("sum", x, 0, false));
  return b.finish();
}

async function runChecked(exe: Executor, graph: IrGraph, seed: number) {
  const leaves = randomLeaves(graph, seed);
  const { params, inputs } = deviceFeeds(graph, leaves);
  exe.setParams(params);
  exe.poison();
  const out = await exe.run(inputs);
  const ref = interpret(graph, leaves).outputs;
  return Math.max(...[...ref].map(([name, r]) => relL2(out.get(name)!, r.data)));
}

describe("compileKernels", () => {
  it("compiles every distinct kernel once, with progress, on sibling devices in parallel", async () => {
    const ctx = gpu();
    const graph = block(7);
    const program = compileGraph(graph, ctx.limits);
    const distinct = new Set(program.kernels.map((k) => k.wgsl)).size;
    const events: [number, number][] = [];
    const exe = await Executor.create(ctx, program, {
      compile: { workers: 2, onProgress: (done, total) => events.push([done, total]) },
    });
    try {
      expect(events[0]).toEqual([0, distinct]);
      expect(events.at(-1)).toEqual([distinct, distinct]);
      expect(events.map(([d]) => d)).toEqual(events.map((_, i) => i));
      expect(exe.compiled.kernels).toBe(distinct);
      // lavapipe compiles at first dispatch: there the work is shared with a sibling device
      // (opened once work is still waiting after 150 ms, as a cold compile's is).
      if (ctx.isSoftware) expect(exe.compiled.workers).toBe(2);
      expect(await runChecked(exe, graph, 3)).toBeLessThan(1e-5);
    } finally {
      exe.destroy();
    }

    // The same kernels again on this device: nothing left to compile, no sibling opened.
    const again = await Executor.create(ctx, program, { compile: { workers: 2 } });
    try {
      expect(again.compiled.workers).toBe(1);
      expect(await runChecked(again, graph, 4)).toBeLessThan(1e-5);
    } finally {
      again.destroy();
    }
  });

  it("compiles alone when Mesa's shader cache is off (a sibling's work would not carry over)", async () => {
    const ctx = gpu();
    const graph = small();
    const before = process.env.MESA_SHADER_CACHE_DISABLE;
    process.env.MESA_SHADER_CACHE_DISABLE = "true";
    try {
      const exe = await Executor.create(ctx, compileGraph(graph, ctx.limits), {
        compile: { workers: 4 },
      });
      try {
        expect(exe.compiled.workers).toBe(1);
        expect(await runChecked(exe, graph, 5)).toBeLessThan(1e-5);
      } finally {
        exe.destroy();
      }
    } finally {
      if (before === undefined) delete process.env.MESA_SHADER_CACHE_DISABLE;
      else process.env.MESA_SHADER_CACHE_DISABLE = before;
    }
  });

  it("still reports a WGSL error with kernel:line:col", async () => {
    const broken = {
      name: "broken_kernel",
      entryPoint: "main",
      bindings: [],
      wgsl: ["@compute @workgroup_size(1)", "fn main() {", "  let a = 1 +;", "}"].join("\n"),
    };
    const err = await compileKernels(gpu(), [broken], { workers: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ShaderError);
    expect((err as ShaderError).message).toMatch(/broken_kernel:3:\d+: /);
  });
});
