// Hash routing (`Hash(seed)`): the documented hash against values worked out by hand, its IR
// on the reference interpreter against the host definition (ids up to 2³¹ − 1, negative ids,
// several seeds and expert counts), the MoE layer against float64 routing written here, the
// sparse shape of the lowering, the routing statistics, parameters and the diagnostics.
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { IrBuilder } from "../../compiler/ir/builder.js";
import { hashConstants, hashExpert, lowerHash } from "../../compiler/library/route/hash.js";
import { analyze, elaborate, nodeFileSystem, reportParams } from "../../compiler/pipeline.js";
import { interpret } from "../../runtime/reference/interpret.js";
import { close, ffn, leaves, lowerFile, row } from "./routing-fixtures.js";

const file = path.join(import.meta.dirname, "../../examples/__hash__.moe");
const P = 2 ** 31 - 1;

const hashSource = (router = "Hash(seed: 2)", experts = 4) => `import std.nn { FFN }
import std.route { MoE, Hash }
model M() { in x: f32[B, T, 4]  in tokens: i32[B, T]  out y: f32[B, T, 4]
  moe = MoE(router: ${router}, experts: [FFN(4, 3, act: relu); ${experts}])
  y = moe(x, tokens) }`;

describe("the hash", () => {
  it("is the documented one, checked by hand", () => {
    // Seeds take successive MINSTD states 48271^k mod p: 48271, 182605794, 1291394886, 1914720637.
    expect(hashConstants(0)).toEqual({ A: 182605794, B: 48271 });
    expect(hashConstants(1)).toEqual({ A: 1914720637, B: 1291394886 });
    // Seed 0, E = 4: (182605794·id + 48271) mod p mod 4.
    expect(hashExpert(0, 0, 4)).toBe(3); // 48271 = 4·12067 + 3
    expect(hashExpert(1, 0, 4)).toBe(1); // 182654065
    expect(hashExpert(2, 0, 4)).toBe(3); // 365259859
    expect(hashExpert(12, 0, 4)).toBe(0); // 2191317799 − p = 43834152: the first wrap
    expect(hashExpert(-3, 0, 4)).toBe(hashExpert(0, 0, 4)); // negative ids hash as 0
    expect(hashExpert(P, 0, 4)).toBe(hashExpert(0, 0, 4)); // ids are taken mod p
    // Seed 1, E = 3: (1914720637 + 1291394886) mod p = 1058631876, mod 3 = 0.
    expect(hashExpert(1, 1, 3)).toBe(0);
  });

  it("spreads consecutive ids over the experts", () => {
    const E = 8;
    const load = new Array<number>(E).fill(0);
    for (let id = 0; id < 8000; id++) load[hashExpert(id, 0, E)]!++;
    for (const n of load) expect(Math.abs(n - 1000)).toBeLessThan(100);
  });

  it("its IR gives exactly the host definition on the reference interpreter", () => {
    const ids = [0, 1, 2, 3, 12, 13, 44487, 44488, 65535, 65536, 2 ** 24 + 1, 1e9 + 7];
    ids.push(P - 1, P, -1, -2147483648);
    for (let i = 0; i < 40; i++) ids.push(Math.floor(((i * 2654435761) % 2 ** 32) / 2));
    for (const seed of [0, 1, 7, 123456]) {
      for (const E of [1, 3, 4, 7, 64]) {
        const b = new IrBuilder();
        const x = b.input("ids", "i32", [ids.length]);
        b.output("experts", lowerHash(b, x, seed, E));
        const out = interpret(
          b.finish(),
          new Map([["ids", { shape: [ids.length], data: Float64Array.from(ids) }]]),
        ).outputs.get("experts")!;
        expect([...out.data], `seed ${seed}, E ${E}`).toEqual(
          ids.map((id) => hashExpert(id, seed, E)),
        );
      }
    }
  });
});

describe("Hash routing lowers", () => {
  function run(B: number, T: number, router?: string, experts = 4, routingStats = false) {
    const { lowered, diagnostics } = lowerFile(
      hashSource(router, experts),
      file,
      { B, T },
      undefined,
      { routingStats },
    );
    expect(diagnostics).toEqual([]);
    const m = lowered!;
    const tokens = Array.from({ length: B * T }, (_, i) => (i * 7919 + 13) % 50257);
    const l = leaves(m, { tokens });
    return { m, l, tokens, outputs: interpret(m.graph, l).outputs };
  }

  it.each([
    [1, 7, "Hash()", 4],
    [3, 7, "Hash(seed: 2)", 4],
    [2, 5, "Hash(seed: 9)", 3],
    [1, 3, "Hash(seed: 1)", 9], // more experts than tokens
  ] as const)("B %i, T %i, %s over %i experts", (B, T, router, experts) => {
    const { l, tokens, outputs } = run(B, T, router, experts);
    const seed = Number(/seed: (\d+)/.exec(router)?.[1] ?? 0);
    const x = l.get("x")!;
    const expected = tokens.flatMap((id, t) =>
      ffn(l, `moe.experts.${hashExpert(id, seed, experts)}`, row(x, t)),
    );
    close(outputs.get("y")!.data, expected);
  });

  it("sparse: one expert matmul per expert matmul, no router parameters", () => {
    const { m } = run(3, 7);
    const ops = m.graph.nodes.map((n) => n.op);
    expect(ops.filter((o) => o === "expert_matmul").length).toBe(2); // FFN: up and down
    expect(ops.filter((o) => o === "matmul").length).toBe(0);
    expect(ops).toContain("group_rows");
    expect(m.graph.nodes.some((n) => n.op === "param" && n.name.includes("router"))).toBe(false);
  });

  it("reports tokens per expert and each token's expert with weight 1", () => {
    const { outputs, tokens } = run(2, 7, "Hash(seed: 2)", 4, true);
    const ids = tokens.map((id) => hashExpert(id, 2, 4));
    expect([...outputs.get("routing:moe.experts")!.data]).toEqual(ids);
    expect([...outputs.get("routing:moe.weights")!.data]).toEqual(ids.map(() => 1));
    const load = [0, 1, 2, 3].map((e) => ids.filter((i) => i === e).length);
    expect([...outputs.get("routing:moe.tokens_per_expert")!.data]).toEqual(load);
    expect([...outputs.get("routing:moe.dropped")!.data]).toEqual([0]);
  });
});

describe("Hash routing checks", () => {
  function check(body: string, head = "in tokens: i32[B, T]") {
    const src = `import std.nn { FFN }
import std.route { MoE, Hash }
tasks Lang { a, b }
block A(d: Dim) {
  in x: f32[B, T, d]
  ${head}
  out y: f32[B, T, d]
  ${body}
}`;
    const analysis = analyze([file], nodeFileSystem(new Map([[file, src]])));
    return analysis.diagnostics.filter((d) => d.severity === "error");
  }
  const layer = "moe = MoE(router: Hash(), experts: [FFN(d, 2 * d); 4])";

  it("accepts moe(x, tokens)", () => {
    expect(check(`${layer}\n  y = moe(x, tokens)`)).toEqual([]);
  });

  it("accepts token ids over any leading dims of a `...` expert", () => {
    const src = `import std.route { MoE, Hash }
import std.nn { Linear }
block A(d: Dim) {
  in x: f32[..., d]
  in tokens: i32[...]
  out y: f32[..., d]
  moe = MoE(router: Hash(), experts: [Linear(d, d); 2])
  y = moe(x, tokens)
}`;
    const analysis = analyze([file], nodeFileSystem(new Map([[file, src]])));
    expect(analysis.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  });

  it.each([
    ["y = moe(x)", "", "E0411", "pass them too, `moe(x, tokens)`"],
    ["y = moe(x, f)", "in f: f32[B, T]", "E0411", "expected i32 ids, found f32[B, T]"],
    ["y = moe(x, task)", "in task: Lang[B]", "E0411", "expected i32 ids, found Lang[B]"],
    ["y = moe(x, short)", "in short: i32[B]", "E0302", "token ids i32[B] must have"],
    ["y = moe(x, wide)", "in wide: i32[B, 3]", "E0302", "dimension 2: expected T, found 3"],
    ["y = moe(x, tokens, tokens)", "in tokens: i32[B, T]", "E0305", "(x, tokens), found 3"],
  ])("%s (%s): %s", (call, head, code, text) => {
    const errors = check(`${layer}\n  ${call}`, head);
    expect(errors.map((e) => e.code)).toEqual([code]);
    expect(`${errors[0]!.message} ${errors[0]!.hint ?? ""}`).toContain(text);
  });

  it("rejects a negative seed", () => {
    const errors = check(
      "moe = MoE(router: Hash(seed: -1), experts: [FFN(d, d); 2])\n  y = moe(x, tokens)",
    );
    expect(errors.map((e) => e.code)).toEqual(["E0319"]);
  });
});

describe("Hash routing parameters", () => {
  it("has none; one expert per token", () => {
    const src = `import std.nn { FFN }
import std.route { MoE, Hash }
model M() { in x: f32[B, T, 8]  in tokens: i32[B, T]  out y: f32[B, T, 8]
  moe = MoE(router: Hash(seed: 5), experts: [FFN(8, 16); 4])
  y = moe(x, tokens) }`;
    const analysis = analyze([file], nodeFileSystem(new Map([[file, src]])));
    const result = elaborate(analysis, file, undefined);
    if ("error" in result) throw new Error(result.error);
    const r = reportParams(result.model);
    const expert = 8 * 16 + 16 + 16 * 8 + 8;
    expect(r.total).toBe(4 * expert);
    expect(r.params.some((p) => p.name.includes("router"))).toBe(false);
    expect(r.moeLayers).toEqual([
      { path: "moe", router: "Hash", experts: 4, activePerToken: 1, expertParams: 4 * expert },
    ]);
    expect(r.activePerToken).toBe(expert);
  });
});
