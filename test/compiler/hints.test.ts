// "Did you mean" and "import it" hints: a name the standard library exports always gets its
// import (never a near-miss spelling of another name), and unknown named arguments get the
// parameter they stand for, by other frameworks' names (alias table) or by spelling.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { parseSource } from "../../grammar/parse.js";
import { STANDARD_LIBRARY } from "../../compiler/library/index.js";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import { suggestParam } from "../../compiler/check/bind-args.js";

const stdlib = path.join(import.meta.dirname, "../../stdlib");
const file = path.join(import.meta.dirname, "__hints__.moe");

function hints(source: string): string[] {
  const a = analyze([file], nodeFileSystem(new Map([[file, source]])));
  return a.diagnostics.map((d) => `${d.code} ${d.message} | ${d.hint ?? ""}`);
}

describe("standard library homes", () => {
  it("name every declaration of stdlib/*.moe, and nothing else", () => {
    const declared = new Map<string, string>();
    for (const f of fs.readdirSync(stdlib).filter((f) => f.endsWith(".moe"))) {
      const full = path.join(stdlib, f);
      const { file: ast } = parseSource(fs.readFileSync(full, "utf8"), full);
      for (const item of ast.items) {
        if (item.kind === "ImportDecl" || item.kind === "TrainDecl") continue;
        declared.set(item.name.name, `std.${f.slice(0, -4)}`);
      }
    }
    const sorted = (m: ReadonlyMap<string, string>) => [...m].sort(([a], [b]) => (a < b ? -1 : 1));
    expect(sorted(STANDARD_LIBRARY.homes)).toEqual(sorted(declared));
  });

  it("a missing import gets the import hint, even when a builtin is one edit away", () => {
    // `MoE` is one edit from the builtin `mse`; the import is what is missing.
    expect(
      hints(`import std.nn { FFN }
model M() {
  in x: f32[B, T, 8]
  out y: f32[B, T, 8]
  moe = MoE(router: TopK(k: 2), experts: [FFN(8, 16); 4])
  y = moe(x)
}
`),
    ).toEqual([
      "E0201 unknown name `MoE` | import it: `import std.route { MoE }`",
      "E0201 unknown name `TopK` | import it: `import std.route { TopK }`",
    ]);
  });

  it("a missing enum import on a parameter type gets the import hint", () => {
    expect(
      hints(`block B(d: Dim, act: Act = relu) {
  in x: f32[..., d]
  out y: f32[..., d]
  y = x
}
`)[0],
    ).toBe("E0207 unknown type `Act` | import it: `import std.nn { Act }`");
  });
});

describe("unknown named arguments", () => {
  it("suggest the parameter another framework's name stands for", () => {
    expect(
      hints(`import std.nn { FFN }
import std.route { MoE, TopK }
model M() {
  in x: f32[B, T, 8]
  out y: f32[B, T, 8]
  moe = MoE(router: TopK(top_k: 2, capacity_factor: 1.25), experts: [FFN(8, 16); 4])
  y = moe(x)
}
`),
    ).toEqual([
      "E0306 TopK has no parameter `top_k` | did you mean `k`?",
      "E0306 TopK has no parameter `capacity_factor` | did you mean `capacity`?",
    ]);
  });

  it("fall back to the parameter named inside the argument, then to spelling", () => {
    const topK = ["k", "softmax", "renormalize", "capacity", "overflow", "noise", "balance"];
    expect(suggestParam("num_experts_per_tok", topK)).toBe("k");
    expect(suggestParam("router_noise", topK)).toBe("noise");
    expect(suggestParam("capasity", topK)).toBe("capacity");
    expect(suggestParam("num_heads", ["d", "heads", "causal", "bias"])).toBe("heads");
    expect(suggestParam("lora_alpha", ["r", "alpha", "dropout", "targets"])).toBe("alpha");
    expect(suggestParam("d_model", ["d", "heads"])).toBe("d");
    expect(suggestParam("zzz", topK)).toBeUndefined();
  });
});
