/**
 * `moec view`'s page builder: the boxes are the model's components with `moec params`' counts,
 * the routing cells are the stats file's numbers, traces and metrics parse as written.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { analyze, elaborate, nodeFileSystem, reportParams } from "../../compiler/pipeline.js";
import { modelViewOf } from "../../editor/view/elaborate-view.js";
import { parseMetrics } from "../../editor/view/metrics-data.js";
import { type ModelView, type ViewBox, componentBoxes } from "../../editor/view/model-view.js";
import { renderPage } from "../../editor/view/render-page.js";
import { mergeRouting, parseStats, parseTrace } from "../../editor/view/routing-data.js";
import { spawnSync } from "node:child_process";
import { moec, moecNodeArgs, root } from "../cli/moec-cli.js";

const examples = fs
  .readdirSync(path.join(root, "examples"))
  .filter((f) => f.endsWith(".moe"))
  .sort();

function viewOf(file: string, dims = new Map<string, number>()): ModelView {
  const abs = path.join(root, file);
  const analysis = analyze([abs], nodeFileSystem());
  const r = modelViewOf(analysis, abs, undefined, new Map(), dims);
  if (!("view" in r)) throw new Error(`${file}: ${JSON.stringify(r)}`);
  return r.view;
}

/** The model's report as `moec params` computes it, independently of the view. */
function paramsOf(file: string) {
  const abs = path.join(root, file);
  const analysis = analyze([abs], nodeFileSystem());
  const r = elaborate(analysis, abs, undefined);
  if ("error" in r) throw new Error(r.error);
  return reportParams(r.model);
}

/** Attribute values of every element with `class="cls"` in the page. */
function elements(html: string, cls: string): Map<string, string>[] {
  const out: Map<string, string>[] = [];
  for (const m of html.matchAll(new RegExp(`<[a-z]+ class="${cls}"([^>]*)>`, "g"))) {
    const attrs = new Map<string, string>();
    for (const a of m[1]!.matchAll(/([\w-]+)="([^"]*)"/g)) attrs.set(a[1]!, a[2]!);
    out.push(attrs);
  }
  return out;
}

const sumUnder = (rows: { name: string; count: number }[], prefix: string) =>
  rows
    .filter((r) => prefix === "" || r.name === prefix || r.name.startsWith(prefix + "."))
    .reduce((a, r) => a + r.count, 0);

describe("model boxes", () => {
  it.each(examples)("%s: a box per component, each with its parameters", (file) => {
    const view = viewOf(`examples/${file}`);
    const report = paramsOf(`examples/${file}`);
    expect(view.root.total).toBe(report.total);
    expect(view.root.active).toBe(report.activePerToken);
    const boxes = componentBoxes(view.root);
    expect(boxes.length).toBeGreaterThan(1);
    for (const b of boxes) {
      // Every component box counts exactly the parameters under its path.
      if (b.path !== "") expect(b.total, b.path).toBe(sumUnder(report.params, b.path));
      expect(b.source, b.path).toBeDefined();
      expect(b.active).toBeLessThanOrEqual(b.total);
    }
    // Every MoE layer of the model is drawn (its first copy when in a repeat body) with its router.
    const firstCopy = (p: string) => p.replace(/(^|\.)\d+(?=\.|$)/g, "$10");
    for (const m of report.moeLayers) {
      const drawn = boxes.find((b) => b.role === "moe" && b.path === firstCopy(m.path));
      expect(drawn, m.path).toBeDefined();
      expect(drawn!.children.some((c) => c.role === "router")).toBe(true);
    }
    const html = renderPage({ model: view });
    const drawnPaths = [...html.matchAll(/<div class="box role-[a-z]+" data-path="([^"]*)"/g)].map(
      (m) => m[1],
    );
    expect(drawnPaths.sort()).toEqual(boxes.map((b) => b.path).sort());
  });

  it("draws the router, the expert stack and the active share of an MoE layer (mixtral)", () => {
    const view = viewOf("examples/mixtral.moe");
    const report = paramsOf("examples/mixtral.moe");
    const layers = view.root.children.find((b) => b.name === "layers")!;
    expect(layers.kind).toBe("stack");
    expect(layers.count).toBe(2);
    expect(layers.total).toBe(sumUnder(report.params, "layers"));
    const moe = componentBoxes(layers).find((b) => b.role === "moe")!;
    expect(moe.path).toBe("layers.0.block_sparse_moe");
    const router = moe.children.find((b) => b.role === "router")!;
    expect(router.component).toBe("TopK");
    const experts = moe.children.find((b) => b.role === "expert" && b.kind === "stack")!;
    expect(experts.count).toBe(8);
    const expertParams = report.moeLayers.find((m) => m.path === moe.path)!.expertParams;
    expect(experts.total).toBe(expertParams);
    // A token visits 2 of the 8 experts, and always the router.
    expect(moe.active).toBe(router.total + (expertParams / 8) * 2);
    expect(moe.source?.line).toBe(33);
    expect(moe.inputs[0]!.type).toBe("f32[..., 64]");
  });

  it("draws shared experts apart from the routed ones", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-view-shared-"));
    try {
      const file = path.join(dir, "shared.moe");
      fs.writeFileSync(
        file,
        [
          "import std.nn { FFN }",
          "import std.route { MoE, TopK }",
          "model Shared(d: Dim = 8) {",
          "  in x: f32[B, d]",
          "  out y: f32[B, d]",
          "  moe = MoE(router: TopK(2), experts: [FFN(d, 16); 4], shared: [FFN(d, 32)])",
          "  y = moe(x)",
          "}",
        ].join("\n"),
      );
      const analysis = analyze([file], nodeFileSystem());
      const r = modelViewOf(analysis, file, undefined, new Map(), new Map());
      if (!("view" in r)) throw new Error(JSON.stringify(r));
      const moe = r.view.root.children[0]!;
      expect(moe.children.map((c) => [c.name, c.kind, c.role, c.count])).toEqual([
        ["router", "component", "router", undefined],
        ["experts", "stack", "expert", 4],
        ["shared", "stack", "shared", 1],
      ]);
      const shared = moe.children[2]!.children[0]!;
      // Every token runs the shared expert whole; the routed ones 2 of 4.
      expect(shared.active).toBe(shared.total);
      expect(moe.children[1]!.active).toBe(moe.children[1]!.total / 2);
      expect(renderPage({ model: r.view })).toContain("shared experts: every token");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("groups per-task adapters by task and substitutes --dim sizes (task-moe)", () => {
    const view = viewOf("examples/task-moe.moe", new Map([["B", 2]]));
    const group = componentBoxes(view.root)
      .flatMap((b) => b.children)
      .find((b) => b.kind === "per-task")!;
    expect(group.path).toBe("blocks.0.ffn.adapter");
    expect(group.children.map((c) => c.task)).toEqual(["en_de", "en_fr", "de_en"]);
    expect(view.root.inputs.map((p) => p.type)).toEqual(["i32[2, T]", "Lang[2]"]);
    // One token uses one task's adapter.
    expect(group.active).toBe(group.children[0]!.total);
  });

  it("links boxes to their source lines", () => {
    const view = viewOf("examples/mixtral.moe");
    const html = renderPage({ model: view });
    const abs = path.join(root, "examples/mixtral.moe");
    expect(html).toContain(`href="vscode://file${abs}:33:`);
    expect(renderPage({ model: view, links: "file" })).toContain(`href="file://${abs}#L33"`);
  });
});

describe("routing", () => {
  const stats = {
    routing: {
      "layers.0.block_sparse_moe": {
        tokens_per_expert: [9, 4, 1, 6, 1, 5, 3, 3],
        dropped: 2,
        share: [0.28125, 0.125, 0.03125, 0.1875, 0.03125, 0.15625, 0.09375, 0.09375],
        balance_loss: 1.02,
        entropy: 2.07,
      },
    },
  };

  it("draws one heat-map cell per expert with the stats file's numbers", () => {
    const view = viewOf("examples/mixtral.moe");
    const html = renderPage({ model: view, routing: parseStats(stats) });
    const cells = elements(html, "heat-cell");
    const layer = stats.routing["layers.0.block_sparse_moe"];
    expect(cells.map((c) => Number(c.get("data-tokens")))).toEqual(layer.tokens_per_expert);
    expect(cells.map((c) => Number(c.get("data-share")))).toEqual(layer.share);
    expect(elements(html, "heat-dropped")[0]!.get("data-dropped")).toBe("2");
    expect(html).toContain("balanced 12.5%");
    // The MoE box links to its layer's routing.
    expect(html).toContain('href="#routing-layers.0.block_sparse_moe"');
  });

  it("shows a Grouped router's group weights", () => {
    const html = renderPage({
      model: viewOf("examples/at-moe.moe"),
      routing: parseStats({
        routing: { "blocks.0.experts.moe": { group_weights: [0.5, 0.3, 0.2] } },
      }),
    });
    expect(elements(html, "group-bar").map((g) => Number(g.get("data-weight")))).toEqual([
      0.5, 0.3, 0.2,
    ]);
  });

  it("shows a mixture of tokens' entropy", () => {
    const view = viewOf("examples/mixture-of-tokens.moe");
    const layer = view.moes[0]!.path;
    const share = Array.from({ length: 4 }, () => 0.25);
    const html = renderPage({
      model: view,
      routing: parseStats({ routing: { [layer]: { share } } }),
    });
    expect(Number(/class="entropy-bar" data-entropy="([^"]+)"/.exec(html)![1])).toBeCloseTo(
      Math.log(4),
    );
  });

  it("reads top-k, expert-choice and group traces", () => {
    const traces = parseTrace(
      new Map([
        ["a.experts", { shape: [3, 2], data: [0, 1, 2, -1, 1, 0] }],
        ["a.weights", { shape: [3, 2], data: [0.6, 0.4, 1, 0, 0.7, 0.3] }],
        ["b.tokens", { shape: [2, 2], data: [0, 2, 1, -1] }],
        ["c.experts", { shape: [2, 1], data: [1, 0] }],
        ["c.groups", { shape: [2, 3], data: [0.5, 0.5, 0, 0, 0, 1] }],
      ]),
    );
    expect(traces.get("a")!.choices[1]).toEqual([
      { expert: 2, weight: 1 },
      { expert: -1, weight: 0 },
    ]);
    expect(traces.get("b")!.choices.map((r) => r.map((c) => c.expert))).toEqual([[0], [1], [0]]);
    expect(traces.get("c")!.groups).toEqual([
      [0.5, 0.5, 0],
      [0, 0, 1],
    ]);
    const html = renderPage({
      model: viewOf("examples/mixtral.moe"),
      routing: mergeRouting([], traces),
    });
    const tokens = [
      ...html.matchAll(/<g class="trace-token" data-token="(\d+)"><title>([^<]*)<\/title>/g),
    ];
    expect(tokens.map((t) => t[2])).toContain("token 1: expert 2 (1), 1 dropped");
    expect(tokens.some((t) => t[2]!.includes("groups [0, 0, 1]"))).toBe(true);
  });

  it("derives the heat map from a trace alone", () => {
    const traces = parseTrace(
      new Map([
        ["layers.0.block_sparse_moe.experts", { shape: [3, 2], data: [0, 3, 3, -1, 0, 3] }],
      ]),
    );
    const html = renderPage({
      model: viewOf("examples/mixtral.moe"),
      routing: mergeRouting([], traces),
    });
    const cells = elements(html, "heat-cell");
    expect(cells.map((c) => Number(c.get("data-tokens")))).toEqual([2, 0, 0, 3, 0, 0, 0, 0]);
    expect(elements(html, "heat-dropped")[0]!.get("data-dropped")).toBe("1");
  });

  it("rejects a file that is not stats", () => {
    expect(() => parseStats({ model: "M", outputs: [] })).toThrow(/no "routing" object/);
  });
});

describe("metrics", () => {
  it("charts step and eval lines and skips a truncated last line", () => {
    const text = [
      JSON.stringify({
        step: 1,
        loss: 2.5,
        "aux:net.moe.balance": 0.01,
        grad_norm: 1,
        lr: 0.01,
        routing: { "net.moe": { share: [0.5, 0.5], entropy: 0.69, min: 0.5, max: 0.5, dead: 0 } },
      }),
      JSON.stringify({ step: 2, loss: 2.0, grad_norm: 0.5, lr: 0.01 }),
      JSON.stringify({ step: 2, eval_loss: 2.2, accuracy: { loss: 0.25 } }),
      '{"step":3,"loss":1.',
    ].join("\n");
    const m = parseMetrics(text);
    expect([m.steps, m.evals, m.skipped]).toEqual([2, 1, 1]);
    const loss = m.charts.find((c) => c.title === "loss")!;
    expect(loss.series.map((s) => [s.name, s.points])).toEqual([
      [
        "loss",
        [
          [1, 2.5],
          [2, 2.0],
        ],
      ],
      ["eval_loss", [[2, 2.2]]],
    ]);
    expect(m.charts.find((c) => c.title === "loss terms")!.series[0]!.name).toBe(
      "aux:net.moe.balance",
    );
    const html = renderPage({ model: viewOf("examples/symbol-maps.moe"), metrics: m });
    expect(html).toContain("1 unreadable line skipped");
    // The step's expert shares, one cell per expert.
    expect(m.shares).toEqual([{ layer: "net.moe", steps: [1], share: [[0.5, 0.5]] }]);
    expect(html).toContain("<title>step 1, expert 1: 50.0%</title>");
    expect(
      [...html.matchAll(/<polyline class="series" data-series="([^"]+)"/g)].map((x) => x[1]),
    ).toContain("grad_norm");
  });
});

describe("moec view", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-view-"));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("writes a self-contained page with the run's routing", () => {
    const stats = path.join(dir, "stats.json");
    const run = moec([
      "run",
      "examples/symbol-maps.moe",
      "--dim",
      "B=4",
      "--stats",
      "--json",
      "--backend",
      "reference",
    ]);
    expect(run.code, run.stderr).toBe(0);
    fs.writeFileSync(stats, run.stdout);
    const out = path.join(dir, "page.html");
    const r = moec(["view", "examples/symbol-maps.moe", "--stats", stats, "-o", out]);
    expect(r.code, r.stderr).toBe(0);
    const html = fs.readFileSync(out, "utf8");
    // Nothing is fetched: no external script, style, image or font.
    expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)="https?:/);
    expect(html).not.toMatch(/url\(\s*["']?https?:/);
    expect(r.stderr).toBe("");
    const expected = JSON.parse(run.stdout).routing.moe.tokens_per_expert as number[];
    expect(elements(html, "heat-cell").map((c) => Number(c.get("data-tokens")))).toEqual(expected);
  });

  it("--open runs xdg-open on the page, and says so when there is none", () => {
    const bin = path.join(dir, "bin");
    fs.mkdirSync(bin, { recursive: true });
    const opened = path.join(dir, "opened.txt");
    fs.writeFileSync(path.join(bin, "xdg-open"), `#!/bin/sh\nprintf '%s' "$1" > '${opened}'\n`, {
      mode: 0o755,
    });
    const out = path.join(dir, "open.html");
    const run = (PATH: string) =>
      spawnSync(
        process.execPath,
        [...moecNodeArgs, "view", "examples/symbol-maps.moe", "-o", out, "--open"],
        {
          cwd: root,
          encoding: "utf8",
          env: { ...process.env, PATH },
        },
      );
    const nodeDir = path.dirname(process.execPath);
    const r = run(`${bin}${path.delimiter}${nodeDir}`);
    expect(r.status, r.stderr).toBe(0);
    // The opener is detached: wait for it briefly.
    const until = Date.now() + 5000;
    while (!fs.existsSync(opened) && Date.now() < until)
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    expect(fs.readFileSync(opened, "utf8")).toBe(out);
    // Nothing on PATH (the CLI itself is started by its absolute path).
    const empty = path.join(dir, "empty");
    fs.mkdirSync(empty, { recursive: true });
    const none = run(empty);
    expect(none.status).toBe(0);
    expect(none.stderr).toContain("--open: no xdg-open on this machine");
  });

  it("warns about routing data of layers the model does not have", () => {
    const stats = path.join(dir, "other.json");
    fs.writeFileSync(stats, JSON.stringify({ routing: { "net.moe": { share: [0.5, 0.5] } } }));
    const r = moec([
      "view",
      "examples/symbol-maps.moe",
      "--stats",
      stats,
      "-o",
      path.join(dir, "w.html"),
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(
      "moec: warning: routing data for net.moe, not an MoE layer of Mapper (its MoE layers: moe)\n",
    );
  });

  it("reports unreadable inputs in one line", () => {
    const bad = path.join(dir, "bad.json");
    fs.writeFileSync(bad, "{not json");
    const r = moec([
      "view",
      "examples/symbol-maps.moe",
      "--stats",
      bad,
      "-o",
      path.join(dir, "x.html"),
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^moec: --stats .*bad\.json: not JSON/);
    const missing = moec([
      "view",
      "examples/symbol-maps.moe",
      "--metrics",
      path.join(dir, "none.jsonl"),
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no such file/);
  });
});
