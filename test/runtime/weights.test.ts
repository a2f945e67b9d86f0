// Loading checks every parameter before reading data and reports all mismatches at once;
// initialisation and random inputs are seeded per name, so they are reproducible and
// independent of what else the model contains.
import * as path from "node:path";

import { describe, expect, it, vi } from "vitest";

import { hasErrors } from "../../compiler/diagnostics.js";
import { analyze, elaborate, nodeFileSystem } from "../../compiler/pipeline.js";
import {
  type TensorToWrite,
  readSafetensors,
  writeSafetensors,
} from "../../runtime/safetensors.js";
import {
  type ParamSpec,
  SeededRandom,
  WeightsError,
  initWeights,
  loadWeights,
  randomInputs,
  weightsToSafetensors,
} from "../../runtime/weights.js";

const f32 = (shape: number[], fill?: (i: number) => number): TensorToWrite => {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: "F32", shape, data: Array.from({ length: n }, (_, i) => fill?.(i) ?? i) };
};

function checkpoint(tensors: [string, TensorToWrite][], name = "model.safetensors") {
  return readSafetensors(writeSafetensors(new Map(tensors)), name);
}

function mismatch(f: () => unknown): WeightsError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(WeightsError);
    return e as WeightsError;
  }
  throw new Error("expected a WeightsError");
}

const p = (path: string, shape: number[], init?: string, dtype: ParamSpec["dtype"] = "f32") =>
  init === undefined ? { path, shape, dtype } : { path, shape, dtype, init };

describe("loadWeights", () => {
  it("loads matching tensors by path, in parameter order", () => {
    const file = checkpoint([
      ["b", f32([2])],
      ["a", f32([2, 3])],
    ]);
    const w = loadWeights([p("a", [2, 3]), p("b", [2])], file);
    expect([...w.keys()]).toEqual(["a", "b"]);
    expect(w.get("a")).toEqual({
      dtype: "f32",
      shape: [2, 3],
      data: Float32Array.from([0, 1, 2, 3, 4, 5]),
    });
  });

  it("reports every missing, unexpected, mis-shaped and mis-typed parameter at once, reading no data", () => {
    const file = checkpoint([
      ["blocks.0.attn.k.weight", f32([768, 768], () => 0)],
      ["blocks.1.ln_1.weight", f32([512])],
      ["lm_head.weight", f32([4])],
      ["blocks.1.ids", { dtype: "F32", shape: [3], data: [0, 1, 2] }],
      ["blocks.1.ok", f32([3])],
    ]);
    const readSpy = vi.spyOn(file, "read");
    const bytesSpy = vi.spyOn(file, "readBytes");
    const params = [
      p("blocks.0.attn.q.weight", [768, 768]),
      p("blocks.0.attn.k.weight", [768, 768]),
      p("blocks.1.ln_1.weight", [768]),
      p("blocks.1.ids", [3], "zeros", "i32"),
      p("blocks.1.ok", [3]),
    ];
    const err = mismatch(() => loadWeights(params, file));
    expect(err.code).toBe("mismatch");
    expect(err.message).toBe(
      "model.safetensors: 4 problems: missing blocks.0.attn.q.weight [768, 768]; unexpected lm_head.weight; " +
        "blocks.1.ln_1.weight has shape [512], expected [768]; blocks.1.ids has dtype F32, expected i32",
    );
    expect(err.problems).toHaveLength(4);
    expect(readSpy).not.toHaveBeenCalled();
    expect(bytesSpy).not.toHaveBeenCalled();
  });

  it("keeps the first line short when there are many problems and lists them all below", () => {
    const file = checkpoint(
      Array.from({ length: 12 }, (_, i): [string, TensorToWrite] => [`x.${i}`, f32([1])]),
    );
    const params = Array.from({ length: 12 }, (_, i) => p(`y.${i}`, [1]));
    const lines = mismatch(() => loadWeights(params, file)).message.split("\n");
    expect(lines[0]).toMatch(
      /^model\.safetensors: 24 problems: missing y\.0 \[1\]; .*; and 14 more, all listed below$/,
    );
    expect(lines.slice(1, 25)).toEqual([
      ...params.map((q) => `  missing ${q.path} [1]`),
      // Unexpected keys come in file order (the writer sorted them by name).
      ...file.names().map((k) => `  unexpected ${k}`),
    ]);
    expect(lines[25]).toMatch(/^hint: no checkpoint key names a parameter of this model/);
  });

  it("renames checkpoint keys with a map (null drops a key) or a function, and transposes Conv1D weights", () => {
    // A GPT-2-style checkpoint: Conv1D keeps [in, out]; our Linear is [out, in].
    const file = checkpoint([
      ["h.0.attn.c_attn.weight", f32([2, 3])],
      ["h.0.attn.bias", f32([1, 1])],
      ["wte.weight", f32([4, 2])],
    ]);
    const params = [p("blocks.0.attn.qkv.weight", [3, 2]), p("embed.weight", [4, 2])];
    const rename = new Map<string, string | null>([
      ["h.0.attn.c_attn.weight", "blocks.0.attn.qkv.weight"],
      ["h.0.attn.bias", null],
      ["wte.weight", "embed.weight"],
    ]);
    const w = loadWeights(params, file, {
      rename,
      transpose: new Set(["blocks.0.attn.qkv.weight"]),
    });
    // [[0,1,2],[3,4,5]] transposed.
    expect(w.get("blocks.0.attn.qkv.weight")).toEqual({
      dtype: "f32",
      shape: [3, 2],
      data: Float32Array.from([0, 3, 1, 4, 2, 5]),
    });
    expect([...w.get("embed.weight")!.data]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);

    const byFunction = loadWeights(params, file, {
      rename: (k) =>
        k.endsWith(".attn.bias")
          ? null
          : k.replace(/^h\.(\d+)\.attn\.c_attn/, "blocks.$1.attn.qkv").replace("wte", "embed"),
      transpose: (path) => path.endsWith(".qkv.weight"),
    });
    expect(byFunction).toEqual(w);
  });

  it("names the checkpoint key and the transposition in shape problems, and catches clashes", () => {
    const file = checkpoint([
      ["h.0.w", f32([2, 3])],
      ["h.0.v", f32([2, 3, 1])],
      ["a", f32([1])],
      ["b", f32([1])],
    ]);
    const err = mismatch(() =>
      loadWeights([p("blocks.0.w", [2, 3]), p("blocks.0.v", [3, 2]), p("c", [1])], file, {
        rename: (k) => (k === "a" || k === "b" ? "c" : k.replace("h.", "blocks.")),
        transpose: new Set(["blocks.0.w", "blocks.0.v"]),
      }),
    );
    expect(err.problems).toEqual([
      "blocks.0.w (checkpoint key h.0.w) has shape [3, 2] (transposed from [2, 3]), expected [2, 3]",
      "blocks.0.v (checkpoint key h.0.v) cannot be transposed: shape [2, 3, 1] is not 2-D",
      "checkpoint keys a and b both map to c",
    ]);
  });

  it("quotes odd names so each problem stays on one line", () => {
    const file = checkpoint([["bad\nname", f32([1])]]);
    const err = mismatch(() => loadWeights([], file));
    expect(err.message).toBe('model.safetensors: 1 problem: unexpected "bad\\nname"');
  });

  it("widens F16/BF16 into float parameters unless exactDtype is set", () => {
    const file = checkpoint([
      ["h", { dtype: "F16", shape: [2], data: [0.5, -1] }],
      ["ids", { dtype: "I64", shape: [2], data: [3, 4] }],
    ]);
    const params = [p("h", [2]), p("ids", [2], "zeros", "i32")];
    const w = loadWeights(params, file);
    expect(w.get("h")).toEqual({ dtype: "f32", shape: [2], data: Float32Array.from([0.5, -1]) });
    expect(w.get("ids")).toEqual({ dtype: "i32", shape: [2], data: Int32Array.from([3, 4]) });
    expect(mismatch(() => loadWeights(params, file, { exactDtype: true })).problems).toEqual([
      "h has dtype F16, expected f32",
      "ids has dtype I64, expected i32",
    ]);
  });

  it("initialises missing parameters and ignores unexpected tensors when asked", () => {
    const file = checkpoint([
      ["base.weight", f32([2])],
      ["extra", f32([1])],
    ]);
    const params = [
      p("base.weight", [2]),
      p("lora.lora_A", [2, 4], "normal"),
      p("lora.lora_B", [4, 2], "zeros"),
    ];
    const w = loadWeights(params, file, { missing: "init", unexpected: "ignore", seed: 5 });
    expect([...w.keys()]).toEqual(["base.weight", "lora.lora_A", "lora.lora_B"]);
    expect([...w.get("base.weight")!.data]).toEqual([0, 1]);
    // Exactly what a fresh initialisation gives those parameters.
    expect(w.get("lora.lora_A")).toEqual(initWeights([params[1]!], 5).get("lora.lora_A"));
    expect([...w.get("lora.lora_B")!.data]).toEqual(new Array(8).fill(0));
  });

  it("initialises from the seed when there is no file", () => {
    const params = [p("a", [3, 3]), p("b", [3], "ones")];
    expect(loadWeights(params, undefined, { seed: 9 })).toEqual(initWeights(params, 9));
  });

  it("round-trips weights through a safetensors file", () => {
    const params = [
      p("w", [3, 2]),
      p("n", [2], "ones", "bf16"),
      p("ids", [2], "ones", "i32"),
      p("m", [2], "ones", "bool"),
    ];
    const w = initWeights(params, 1);
    const file = readSafetensors(writeSafetensors(weightsToSafetensors(w)), "rt.safetensors");
    expect(file.info("n").dtype).toBe("BF16");
    expect(loadWeights(params, file, { exactDtype: true })).toEqual(w);
  });
});

describe("initWeights", () => {
  const params = [
    p("embed.weight", [100, 16], "normal"),
    p("blocks.0.ln.weight", [16], "ones"),
    p("blocks.0.ln.bias", [16], "zeros"),
    p("blocks.0.up.weight", [64, 16]),
    p("head.weight", [10, 16], "uniform(0.25)"),
  ];

  it("is deterministic and depends on the seed", () => {
    expect(initWeights(params, 42)).toEqual(initWeights(params, 42));
    expect(initWeights(params, 42).get("embed.weight")).not.toEqual(
      initWeights(params, 43).get("embed.weight"),
    );
  });

  it("gives each parameter a stream that depends only on (seed, path)", () => {
    const all = initWeights(params, 7);
    const alone = initWeights([params[3]!], 7);
    expect(alone.get("blocks.0.up.weight")).toEqual(all.get("blocks.0.up.weight"));
    const more = initWeights([p("new.weight", [5, 5]), ...params.slice().reverse()], 7);
    for (const q of params) expect(more.get(q.path)).toEqual(all.get(q.path));
    // Same shape, different path: different values.
    const twins = initWeights([p("x", [8]), p("y", [8])], 7);
    expect(twins.get("x")!.data).not.toEqual(twins.get("y")!.data);
  });

  it("follows each initialiser", () => {
    const w = initWeights(params, 3);
    expect([...w.get("blocks.0.ln.weight")!.data]).toEqual(new Array(16).fill(1));
    expect([...w.get("blocks.0.ln.bias")!.data]).toEqual(new Array(16).fill(0));
    const head = [...w.get("head.weight")!.data];
    expect(Math.max(...head.map(Math.abs))).toBeLessThanOrEqual(0.25);
    expect(Math.max(...head.map(Math.abs))).toBeGreaterThan(0.15);
    const emb = [...w.get("embed.weight")!.data];
    const mean = emb.reduce((a, b) => a + b, 0) / emb.length;
    const std = Math.sqrt(emb.reduce((a, b) => a + (b - mean) ** 2, 0) / emb.length);
    expect(Math.abs(mean)).toBeLessThan(0.002);
    expect(Math.abs(std - 0.02)).toBeLessThan(0.001);
    const custom = initWeights(
      [p("s", [20000], "normal(0.5)"), p("t", [20000], "normal(std=0.1)")],
      3,
    );
    for (const [name, want] of [
      ["s", 0.5],
      ["t", 0.1],
    ] as const) {
      const d = [...custom.get(name)!.data];
      expect(Math.abs(Math.sqrt(d.reduce((a, b) => a + b * b, 0) / d.length) - want)).toBeLessThan(
        want * 0.02,
      );
    }
    // uniform without a bound: 1/sqrt(fan_in).
    const u = [...initWeights([p("u", [1000, 4], "uniform")], 3).get("u")!.data];
    expect(Math.max(...u.map(Math.abs))).toBeLessThanOrEqual(0.5);
    expect(Math.max(...u.map(Math.abs))).toBeGreaterThan(0.49);
  });

  it("gives integer and bool parameters zeros or ones", () => {
    const w = initWeights(
      [p("i", [3], "ones", "i32"), p("j", [2], "normal", "i64"), p("b", [2], "ones", "bool")],
      0,
    );
    expect(w.get("i")).toEqual({ dtype: "i32", shape: [3], data: Int32Array.from([1, 1, 1]) });
    expect(w.get("j")!.data).toEqual(new Int32Array(2));
    expect(w.get("b")!.data).toEqual(Uint8Array.from([1, 1]));
  });

  it("rejects an unknown initialiser by parameter", () => {
    expect(() => initWeights([p("w", [2], "xavier")], 0)).toThrow(
      'parameter w: unknown initialiser "xavier"',
    );
    expect(() => initWeights([p("w", [2], "normal(-1)")], 0)).toThrow("unknown initialiser");
  });

  it("initialises every parameter of a real model", () => {
    const examples = path.join(import.meta.dirname, "../../examples");
    const file = path.join(examples, "tiny-transformer.moe");
    const analysis = analyze([file], nodeFileSystem(new Map()));
    const result = elaborate(analysis, file, undefined);
    if ("error" in result) throw new Error(result.error);
    expect(hasErrors(result.diagnostics)).toBe(false);
    const params = result.model.params;
    const w = initWeights(params, 0);
    expect(w.size).toBe(params.length);
    for (const q of params) {
      const t = w.get(q.path)!;
      expect(t.data.length).toBe(q.shape.reduce((a, b) => a * b, 1));
      for (const v of t.data) expect(Number.isFinite(v)).toBe(true);
    }
    // And a checkpoint of them loads back exactly.
    const st = readSafetensors(writeSafetensors(weightsToSafetensors(w)), "tiny.safetensors");
    expect(loadWeights(params, st)).toEqual(w);
  });
});

describe("randomInputs", () => {
  const inputs = [
    { name: "x", dtype: "f32" as const, shape: [4, 8, 16] },
    { name: "ids", dtype: "i32" as const, shape: [4, 64], max: 50257 },
    { name: "flags", dtype: "i32" as const, shape: [100] },
    { name: "task", dtype: "task" as const, shape: [4], max: 3 },
    { name: "mask", dtype: "bool" as const, shape: [10] },
  ];

  it("fills the declared shapes within range", () => {
    const r = randomInputs(inputs, 1);
    expect(r.get("x")!.data).toBeInstanceOf(Float32Array);
    expect(r.get("x")!.shape).toEqual([4, 8, 16]);
    const ids = [...r.get("ids")!.data];
    expect(ids).toHaveLength(256);
    expect(ids.every((v) => Number.isInteger(v) && v >= 0 && v < 50257)).toBe(true);
    expect(new Set(ids).size).toBeGreaterThan(200);
    expect(new Set(r.get("flags")!.data)).toEqual(new Set([0, 1]));
    const task = r.get("task")!;
    expect(task.dtype).toBe("i32");
    expect(task.data).toBeInstanceOf(Int32Array);
    expect([...task.data].every((v) => v >= 0 && v < 3)).toBe(true);
    expect([...r.get("mask")!.data].every((v) => v === 0 || v === 1)).toBe(true);
  });

  it("draws floats from N(0, 1)", () => {
    const d = [...randomInputs([{ name: "x", dtype: "f32", shape: [50000] }], 2).get("x")!.data];
    const mean = d.reduce((a, b) => a + b, 0) / d.length;
    const variance = d.reduce((a, b) => a + (b - mean) ** 2, 0) / d.length;
    expect(Math.abs(mean)).toBeLessThan(0.02);
    expect(Math.abs(variance - 1)).toBeLessThan(0.03);
  });

  it("is deterministic per (seed, input name)", () => {
    expect(randomInputs(inputs, 1)).toEqual(randomInputs(inputs, 1));
    expect(randomInputs(inputs, 1).get("x")).not.toEqual(randomInputs(inputs, 2).get("x"));
    expect(randomInputs([inputs[1]!], 1).get("ids")).toEqual(randomInputs(inputs, 1).get("ids"));
  });

  it("needs the number of tasks for a task input", () => {
    expect(() => randomInputs([{ name: "t", dtype: "task", shape: [2] }], 0)).toThrow(
      "input t: a task-id input needs max (the number of tasks)",
    );
  });
});

describe("SeededRandom", () => {
  it("fills arrays with exactly the values normal() gives", () => {
    for (const n of [0, 1, 6, 7]) {
      const a = SeededRandom.forKey(3, "n");
      a.normal(); // leave a spare pending, as a previous odd fill would
      const filled = new Float32Array(n);
      a.fillNormal(filled, 0.5);
      const b = SeededRandom.forKey(3, "n");
      b.normal();
      expect(filled).toEqual(Float32Array.from({ length: n }, () => 0.5 * b.normal()));
      expect(a.u32()).toBe(b.u32());
    }
  });

  it("gives uniform 32-bit words and floats in [0, 1)", () => {
    const r = SeededRandom.forKey(0, "k");
    const counts = new Array<number>(16).fill(0);
    let outside = 0;
    for (let i = 0; i < 160000; i++) {
      const f = r.float();
      if (!(f >= 0 && f < 1)) outside++;
      else counts[Math.floor(f * 16)]!++;
    }
    expect(outside).toBe(0);
    for (const c of counts) expect(Math.abs(c - 10000)).toBeLessThan(500);
    expect(SeededRandom.forKey(2 ** 40, "k").u32()).not.toBe(SeededRandom.forKey(0, "k").u32());
  });
});
