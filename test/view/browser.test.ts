/**
 * `moec view`'s pages in a real browser: headless Chromium (Debian's, which scripts/setup.sh
 * installs) driven by playwright-core opens the page of every shipped example, sees no console
 * error, and finds the model's boxes and a reference run's routing cells. Screenshots go to
 * test-artifacts/view/ (git-ignored). One browser launch for the file.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { guardDepth } from "../../compiler/check/check-program.js";
import { selectModel } from "../../compiler/check/elaborate-model.js";
import { Evaluator } from "../../compiler/check/evaluator.js";
import { STANDARD_LIBRARY } from "../../compiler/library/index.js";
import { analyze, elaborate, nodeFileSystem, reportParams } from "../../compiler/pipeline.js";
import { modelViewOf } from "../../editor/view/elaborate-view.js";
import { renderPage } from "../../editor/view/render-page.js";
import { moec, root } from "../cli/moec-cli.js";

const CHROMIUM = process.env.MOEC_CHROMIUM ?? "/usr/bin/chromium";
const haveChromium = fs.existsSync(CHROMIUM);
if (!haveChromium)
  console.warn(
    `test/view/browser.test.ts: skipped: no Chromium at ${CHROMIUM} (scripts/setup.sh installs Debian's chromium; MOEC_CHROMIUM names another)`,
  );

const artifacts = path.join(root, "test-artifacts/view");
const examples = fs
  .readdirSync(path.join(root, "examples"))
  .filter((f) => f.endsWith(".moe"))
  .sort();

/**
 * The components the page must draw, from the model itself: every instance elaboration
 * constructs, the first copy of each repeat body and list (every index segment 0).
 */
function expectedBoxes(file: string): { paths: string[]; total: number } {
  const analysis = analyze([file], nodeFileSystem());
  const chosen = selectModel(analysis.program, file, undefined);
  if (typeof chosen === "string") throw new Error(chosen);
  const evaluator = new Evaluator(analysis.program, [], "elaborate", STANDARD_LIBRARY);
  evaluator.recordInstances = true;
  guardDepth([], chosen.file, chosen.decl.span, () => {
    evaluator.elaborate(chosen.decl, chosen.file, new Map());
  });
  const paths = new Set<string>();
  for (const inst of evaluator.instances)
    if (inst.path !== undefined && !/(^|\.)([1-9]\d*)(\.|$)/.test(inst.path)) paths.add(inst.path);
  const r = elaborate(analysis, file, undefined);
  if ("error" in r) throw new Error(r.error);
  return { paths: [...paths].sort(), total: reportParams(r.model).total };
}

describe.skipIf(!haveChromium)("moec view in Chromium", () => {
  let browser: Browser;
  beforeAll(async () => {
    fs.mkdirSync(artifacts, { recursive: true });
    browser = await chromium.launch({ executablePath: CHROMIUM });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
  });

  async function open(file: string, shot: string) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("request", (req) => {
      if (!req.url().startsWith("file:")) errors.push(`fetched ${req.url()}`);
    });
    await page.goto(pathToFileURL(file).href);
    await page.screenshot({ path: path.join(artifacts, shot), fullPage: true });
    return { page, errors };
  }

  it.each(examples)("%s: no console error, a box per component", async (name) => {
    const file = path.join(root, "examples", name);
    const analysis = analyze([file], nodeFileSystem());
    const r = modelViewOf(analysis, file, undefined, new Map(), new Map());
    if (!("view" in r)) throw new Error(JSON.stringify(r));
    const html = path.join(artifacts, name.replace(/\.moe$/, ".html"));
    fs.writeFileSync(html, renderPage({ model: r.view }));
    const { page, errors } = await open(html, name.replace(/\.moe$/, ".png"));
    try {
      const expected = expectedBoxes(file);
      const drawn = await page
        .locator("div.box[data-path]")
        .evaluateAll((els) => els.map((e) => e.getAttribute("data-path") ?? ""));
      expect(drawn.sort()).toEqual(expected.paths);
      expect(await page.locator('div.box[data-path=""]').getAttribute("data-total")).toBe(
        String(expected.total),
      );
      // "expand all" opens every collapsed stack.
      await page.click("#expand-all");
      const closed = await page.locator("details.group:not([open])").count();
      expect(closed).toBe(0);
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it("draws a reference run's routing: one cell per expert with its tokens", async () => {
    const stats = path.join(artifacts, "mixtral-stats.json");
    const trace = path.join(artifacts, "mixtral-trace.safetensors");
    const dims = ["--dim", "B=2", "--dim", "T=8"];
    const sizes = ["--set", "layers=1", "--set", "d=16", "--set", "hidden=32", "--set", "vocab=64"];
    const run = moec([
      "run",
      "examples/mixtral.moe",
      ...sizes,
      ...dims,
      "--stats",
      "--json",
      "--backend",
      "reference",
      "--trace-routing",
      trace,
    ]);
    expect(run.code, run.stderr).toBe(0);
    fs.writeFileSync(stats, run.stdout);
    // A run's metrics as `moec train` writes them, its last line cut short.
    const metrics = path.join(artifacts, "metrics.jsonl");
    const lines = Array.from({ length: 20 }, (_, i) =>
      JSON.stringify({
        step: i + 1,
        loss: 3 / (i + 1),
        grad_norm: 1,
        lr: 1e-3,
        routing: { "layers.0.block_sparse_moe": { entropy: 2, min: 0.1, max: 0.2 } },
      }),
    );
    fs.writeFileSync(metrics, [...lines, '{"step":21,"lo'].join("\n"));
    const html = path.join(artifacts, "mixtral-routing.html");
    const view = moec([
      "view",
      "examples/mixtral.moe",
      ...sizes,
      ...dims,
      "--stats",
      stats,
      "--trace-routing",
      trace,
      "--metrics",
      metrics,
      "-o",
      html,
    ]);
    expect(view.code, view.stderr).toBe(0);
    const { page, errors } = await open(html, "mixtral-routing.png");
    try {
      const routing = JSON.parse(run.stdout).routing as Record<
        string,
        { tokens_per_expert: number[]; dropped: number }
      >;
      const [layer, expected] = Object.entries(routing)[0]!;
      const article = page.locator(`article.routing-layer[data-layer="${layer}"]`);
      const cells = article.locator("rect.heat-cell");
      expect(await cells.count()).toBe(expected.tokens_per_expert.length);
      const tokens = await cells.evaluateAll((els) =>
        els.map((e) => Number(e.getAttribute("data-tokens"))),
      );
      expect(tokens).toEqual(expected.tokens_per_expert);
      expect(await article.locator("rect.heat-dropped").getAttribute("data-dropped")).toBe(
        String(expected.dropped),
      );
      // The hover text names the expert and its tokens.
      expect(await cells.first().locator("title").textContent()).toContain(
        `expert 0: ${expected.tokens_per_expert[0]} tokens`,
      );
      // Each of the B·T = 16 tokens has a column naming its two experts.
      const columns = article.locator("g.trace-token");
      expect(await columns.count()).toBe(16);
      expect(await columns.first().locator("title").textContent()).toMatch(
        /^token 0: expert \d+ \([\d.e-]+\), expert \d+ /,
      );
      expect(await page.locator("figure.chart").count()).toBeGreaterThanOrEqual(4);
      expect(await page.locator("#training").textContent()).toContain("1 unreadable line skipped");
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });
});
