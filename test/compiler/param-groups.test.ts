// Parameter groups (`std.optim`'s `Group`): which parameters get a scaled learning rate, forced
// weight decay or trainable rows once the train program is lowered, and E0412 for groups that
// do not fit the parameters.
import { describe, expect, it } from "vitest";
import { analyze, lowerTrain, nodeFileSystem } from "../../compiler/pipeline.js";

const file = "/virtual/groups.moe";

const program = (groups: string) => `import std.nn { Embedding, Linear, LayerNorm }
import std.optim { AdamW, Group }
model Net() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 6]
  embed = Embedding(10, 4)
  norm = LayerNorm(4)
  head = Linear(4, 6)
  logits = head(norm(embed(tokens)))
}
train Fit() {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = Net()
  teacher = frozen Net()
  loss = cross_entropy(net(tokens), labels) + mse(teacher(tokens), net(tokens))
  optimizer = AdamW(lr: 1e-3, groups: [${groups}])
}
`;

function lower(groups: string) {
  const analysis = analyze([file], nodeFileSystem(new Map([[file, program(groups)]])));
  expect(analysis.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  const r = lowerTrain(
    analysis,
    file,
    undefined,
    new Map(),
    new Map([
      ["B", 2],
      ["T", 3],
    ]),
  );
  if ("error" in r) throw new Error(r.error);
  return r;
}

describe("parameter groups", () => {
  it("default decay: matrices only, never biases, norm weights or embedding tables", () => {
    const { train } = lower("");
    const decay = Object.fromEntries(train!.params.map((p) => [p.name, p.decay]));
    expect(decay).toMatchObject({
      "net.embed.weight": false,
      "net.norm.weight": false,
      "net.norm.bias": false,
      "net.head.weight": true,
      "net.head.bias": false,
    });
    expect(train!.params.every((p) => p.lrScale === undefined && p.rows === undefined)).toBe(true);
  });

  it("scales learning rates, forces decay and picks rows by path patterns", () => {
    const { train, diagnostics } = lower(
      `Group(params: ["head.*"], lr_scale: 10.0), Group(params: ["norm.weight"], decay: on), Group(params: ["net.embed.weight"], rows: [8, 2, 9, 2], decay: off)`,
    );
    expect(diagnostics).toEqual([]);
    const by = new Map(train!.params.map((p) => [p.name, p]));
    expect(by.get("net.head.weight")).toMatchObject({ lrScale: 10, decay: true });
    expect(by.get("net.head.bias")).toMatchObject({ lrScale: 10, decay: false });
    expect(by.get("net.norm.weight")).toMatchObject({ decay: true });
    expect(by.get("net.norm.weight")!.lrScale).toBeUndefined();
    expect(by.get("net.embed.weight")).toMatchObject({ rows: [2, 8, 9], decay: false });
    // The frozen teacher's parameters match the patterns too but are never grouped.
    expect(by.get("teacher.head.weight")!.lrScale).toBeUndefined();
    expect(by.get("net.norm.bias")!.decay).toBe(false);
  });

  const errors = (groups: string) => lower(groups).diagnostics.map((d) => `${d.code} ${d.message}`);

  it("reports groups that do not fit (E0412)", () => {
    expect(errors(`Group(params: ["lm_head.weight"], lr_scale: 2.0)`)).toEqual([
      'E0412 parameter group pattern "lm_head.weight" matches no parameter',
    ]);
    expect(errors(`Group(params: ["teacher.head.weight"], lr_scale: 2.0)`)).toEqual([
      'E0412 parameter group pattern "teacher.head.weight" matches only frozen parameters (teacher.head.weight)',
    ]);
    expect(errors(`Group(params: ["head.*"]), Group(params: ["weight"], lr_scale: 3.0)`)).toEqual([
      "E0412 parameter net.head.weight is in parameter groups 1 and 2",
    ]);
    expect(errors(`Group(params: ["embed.weight"], rows: [10])`)).toEqual([
      "E0412 row 10 is outside parameter net.embed.weight [10, 4] (rows 0..9)",
    ]);
  });

  it("checks a group's options where it is written (E0319)", () => {
    const analysis = analyze(
      [file],
      nodeFileSystem(
        new Map([[file, program(`Group(params: ["head.weight"], lr_scale: 0.0, rows: [-1])`)]]),
      ),
    );
    expect(analysis.diagnostics.map((d) => `${d.code} ${d.message}`)).toEqual([
      "E0319 Group: `lr_scale` must be positive, found 0",
      "E0319 Group: `rows` must be non-negative, found -1",
    ]);
  });
});
