// `moec params`: the flat list, the summary tree (`--depth N`, the default for large models)
// and its options, through the command line and through formatTree.
import { describe, expect, it } from "vitest";
import { formatTree } from "../../cli/params-command.js";
import type { ParamRow } from "../../compiler/check/count-params.js";
import { moec } from "./moec-cli.js";

const row = (name: string, shape: number[], trainable = true, task?: string): ParamRow => ({
  name,
  shape,
  dtype: "f32",
  count: shape.reduce((a, b) => a * b, 1),
  trainable,
  ...(task !== undefined ? { task } : {}),
});

describe("formatTree", () => {
  const params = [
    row("embed.weight", [10, 4], false),
    ...[0, 1, 2].flatMap((i) => [
      row(`blocks.${i}.up.weight`, [8, 4]),
      row(`blocks.${i}.up.bias`, [8]),
    ]),
    row("blocks.3.up.weight", [8, 4]),
    row("adapter.en.down.weight", [2, 4], true, "en"),
    row("adapter.fr.down.weight", [3, 4], true, "fr"),
  ];

  it("sums each path prefix, collapses alike numbered siblings, stops at the depth", () => {
    expect(formatTree(params, 2)).toEqual([
      "module              params  trainable  task",
      "embed                   40  frozen",
      "└─ weight [10, 4]       40  frozen",
      "blocks                 152  yes",
      "├─ 0..2 (×3, each)      40  yes",
      "└─ 3                    32  yes",
      "adapter                 20  yes",
      "├─ en                    8  yes        en",
      "└─ fr                   12  yes        fr",
    ]);
  });

  it("shows one of a collapsed run below it, with a partly trainable count", () => {
    const lines = formatTree([...params, row("blocks.0.up.scale", [1], false)], 3);
    expect(lines.slice(3, 10)).toEqual([
      "blocks                 153  152",
      "├─ 0                    41  40",
      "│  └─ up                41  40",
      "├─ 1..2 (×2, each)      40  yes",
      "│  └─ up                40  yes",
      "└─ 3                    32  yes",
      "   └─ up                32  yes",
    ]);
  });
});

describe("moec params", () => {
  it("prints a summary tree with --depth, and refuses a depth below 1", () => {
    const r = moec(["params", "examples/tiny-transformer.moe", "--depth", "2"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^blocks +20,864 +yes$/m);
    expect(r.stdout).toMatch(/^└─ 0\.\.1 \(×2, each\) +10,432 +yes$/m);
    expect(r.stdout).not.toMatch(/blocks\.0\.attn/);
    expect(r.stdout).toMatch(/^total +21,770$/m);
    const bad = moec(["params", "examples/tiny-transformer.moe", "--depth", "0"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--depth expects a whole number ≥ 1, found "0"/);
  });

  it("summarises a large model by default; --flat lists every tensor", () => {
    const tree = moec(["params", "examples/gpt2-adapters.moe"]);
    expect(tree.code).toBe(0);
    expect(tree.stdout).toMatch(/^└─ 0\.\.11 \(×12, each\) +7,844,840 +756,968$/m);
    expect(tree.stdout).toMatch(/412 tensors, shown to depth 3: --depth N for more levels/);
    const flat = moec(["params", "examples/gpt2-adapters.moe", "--flat"]);
    expect(flat.code).toBe(0);
    expect(flat.stdout).toMatch(
      /^h\.11\.adapter\.dialogue\.up\.bias +\[768\] +f32 +768 +yes +dialogue$/m,
    );
    expect(flat.stdout.split("\n").filter((l) => /^h\.\d+\./.test(l))).toHaveLength(12 * 34);
  });
});
