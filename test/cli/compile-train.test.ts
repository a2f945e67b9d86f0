// `moec compile FILE --program [NAME] --emit ir`: a training program's whole train step
// (forward, loss, backward, AdamW), and the one-line errors around it. No device.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { moec } from "./moec-cli.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-train-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const file = path.join(tmp, "fit.moe");
fs.writeFileSync(
  file,
  `import std.nn { Embedding, Linear }
import std.optim { AdamW }

model Clf() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 5]
  embed = Embedding(7, 4)
  head = Linear(4, 5)
  logits = head(embed(tokens))
}

train Fit() {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = Clf()
  ce = cross_entropy(net(tokens), labels, label_smoothing: 0.1)
  loss = ce
  optimizer = AdamW(lr: 0.01)
}

train Second() {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = frozen Clf()
  loss = cross_entropy(net(tokens), labels)
  optimizer = AdamW()
}
`,
);

describe("moec compile --program", () => {
  it("prints the train step of the named (or first) training program", () => {
    const r = moec([
      "compile",
      file,
      "--program",
      "Fit",
      "--emit",
      "ir",
      "--dim",
      "B=2",
      "--dim",
      "T=3",
    ]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/input "labels" : i32\[2, 3\]/);
    expect(r.stdout).toMatch(/param "net\.head\.weight".*: f32\[5, 4\]/);
    expect(r.stdout).toMatch(/output "loss" = %\d+/);
    expect(r.stdout).toMatch(/output "loss:ce" = %\d+/);
    // The backward: the embedding's gradient accumulates by index, and AdamW's outputs.
    expect(r.stdout).toMatch(/scatter_add/);
    for (const p of ["net.embed.weight", "net.head.weight", "net.head.bias"])
      for (const out of ["update", "exp_avg", "exp_avg_sq"])
        expect(r.stdout).toContain(`output "${out}:${p}"`);
    expect(r.stdout).toMatch(/output "grad_norm"/);
    const first = moec([
      "compile",
      file,
      "--program",
      "--emit",
      "ir",
      "--dim",
      "B=1",
      "--dim",
      "T=2",
    ]);
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/output "loss:ce"/);
    const second = moec([
      "compile",
      file,
      "--program",
      "Second",
      "--emit",
      "ir",
      "--dim",
      "B=1",
      "--dim",
      "T=2",
    ]);
    // Every parameter frozen: nothing to train is an error, not an empty step.
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/every parameter of Second is frozen: there is nothing to train/);
  });

  it("names the programs there are, and refuses what it cannot do yet", () => {
    const bad = moec([
      "compile",
      file,
      "--program",
      "Fitt",
      "--emit",
      "ir",
      "--dim",
      "B=1",
      "--dim",
      "T=1",
    ]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(
      /no training program `Fitt`.*did you mean `Fit`.*training programs: Fit, Second/,
    );
    const bundle = moec(["compile", file, "--program", "Fit", "--dim", "B=1", "--dim", "T=1"]);
    expect(bundle.code).toBe(2);
    expect(bundle.stderr).toMatch(/--emit ir/);
    const noDim = moec(["compile", file, "--program", "Fit", "--emit", "ir"]);
    expect(noDim.code).toBe(1);
    expect(noDim.stderr).toMatch(/--dim B=N/);
  });

  it("moec params --program lists a training program's parameters, frozen ones frozen", () => {
    const r = moec(["params", file, "--program", "Second", "--json"]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as {
      model: string;
      trainable: number;
      frozen: number;
      params: { name: string; trainable: boolean }[];
    };
    expect(report.model).toBe("Second");
    expect(report.params.map((p) => [p.name, p.trainable])).toEqual([
      ["net.embed.weight", false],
      ["net.head.weight", false],
      ["net.head.bias", false],
    ]);
    expect([report.trainable, report.frozen]).toEqual([0, 53]);
    const text = moec(["params", file, "--program"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^train Fit \(/);
    expect(text.stdout).toMatch(/trainable +53/);
  });

  it("moec params --program counts what each task trains: shared, its own adapter, its rows", () => {
    const tasked = path.join(tmp, "tasked.moe");
    fs.writeFileSync(
      tasked,
      `import std.nn { Embedding, Linear, FFN }
import std.route { MoE, TopK }
import std.adapt { Bottleneck }
import std.optim { AdamW }

tasks Lang { en_de, en_fr, de_en }

model Net() {
  in tokens: i32[B, T]
  in task: Lang[B]
  out logits: f32[B, T, 5]
  embed = frozen Embedding(7, 4)
  moe = MoE(router: TopK(k: 1, task_embed: 2), experts: [FFN(4, 8); 2])
  adapter = per task Bottleneck(4, r: { en_de: 2, en_fr: 1, de_en: 3 })
  head = Linear(4, 5)
  logits = head(adapter(moe(embed(tokens), task), task))
}

train Fit() {
  in tokens: i32[B, T]
  in task: Lang[B]
  in labels: i32[B, T]
  net = Net()
  loss = cross_entropy(net(tokens, task), labels)
  optimizer = AdamW()
}
`,
    );
    const r = moec(["params", tasked, "--program", "Fit", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as {
      trainable: number;
      frozen: number;
      sharedTrainable: number;
      params: { name: string; taskRows?: string[] }[];
      perTask: { task: string; trainable: number; trainableRows: number; trainableTotal: number }[];
    };
    // Shared and trainable: two FFN(4, 8) experts, the gate over [x; task embedding], the head.
    const experts = 2 * (8 * 4 + 8 + 4 * 8 + 4);
    const gate = 2 * (4 + 2);
    const head = 5 * 4 + 5;
    const shared = experts + gate + head;
    // Bottleneck(4, r): LayerNorm(4), down 4 → r, up r → 4.
    const adapter = (r: number) => 2 * 4 + (r * 4 + r) + (4 * r + 4);
    const taskRow = 2; // one row of the [3, 2] task embedding
    expect(report.frozen).toBe(7 * 4);
    expect(report.sharedTrainable).toBe(shared);
    expect(report.trainable).toBe(shared + adapter(2) + adapter(1) + adapter(3) + 3 * taskRow);
    expect(report.params.find((p) => p.name.endsWith("task_embedding.weight"))?.taskRows).toEqual([
      "en_de",
      "en_fr",
      "de_en",
    ]);
    expect(
      report.perTask.map((t) => [t.task, t.trainable, t.trainableRows, t.trainableTotal]),
    ).toEqual([
      ["en_de", adapter(2), taskRow, shared + adapter(2) + taskRow],
      ["en_fr", adapter(1), taskRow, shared + adapter(1) + taskRow],
      ["de_en", adapter(3), taskRow, shared + adapter(3) + taskRow],
    ]);
    const text = moec(["params", tasked, "--program", "Fit"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(
      /net\.moe\.router\.task_embedding\.weight +\[3, 2\] +f32 +6 +yes +a row each/,
    );
    expect(text.stdout).toContain(
      `trainable per task (${shared} shared + the task's own + its rows):`,
    );
    expect(text.stdout).toMatch(
      new RegExp(
        `\\n  de_en +${shared + adapter(3) + taskRow}  \\(\\+${adapter(3)} own, \\+${taskRow} rows\\)`,
      ),
    );
    // A model's report has no such section: its trainable counts are a train program's question.
    const model = moec(["params", tasked]);
    expect(model.code).toBe(0);
    expect(model.stdout).not.toMatch(/trainable per task/);
  });
});
