// Error baselines: every case in cases/ is checked, its diagnostics rendered with code frames,
// and compared with the `.errors` file beside it (UPDATE_GOLDEN=1 rewrites them).
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { DIAGNOSTIC_CODES, renderDiagnostics } from "../../compiler/diagnostics.js";
import { selectModel, selectTrainProgram } from "../../compiler/check/elaborate-model.js";
import { lowerTrain as lowerTrainProgram } from "../../compiler/lower/lower-train.js";
import { lowerModel } from "../../compiler/lower/lower-model.js";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import { STANDARD_LIBRARY } from "../../compiler/library/index.js";

const casesDir = path.join(import.meta.dirname, "cases");
const update = process.env.UPDATE_GOLDEN === "1";

interface Case {
  name: string;
  entry: string;
  root: string;
  golden: string;
}

function listCases(): Case[] {
  return fs
    .readdirSync(casesDir)
    .filter((f) => f.endsWith(".moe") || fs.statSync(path.join(casesDir, f)).isDirectory())
    .sort()
    .map((f) => {
      const full = path.join(casesDir, f);
      if (f.endsWith(".moe")) {
        return {
          name: f.slice(0, -4),
          entry: full,
          root: casesDir,
          golden: full.replace(/\.moe$/, ".errors"),
        };
      }
      return {
        name: f,
        entry: path.join(full, "main.moe"),
        root: full,
        golden: path.join(full, "main.errors"),
      };
    });
}

function render(c: Case): { text: string; codes: string[] } {
  const analysis = analyze([c.entry], nodeFileSystem());
  // Lowering problems (E06xx, W06xx) appear when a model is lowered to run, with B=1, T=2.
  if (/^[EW]06/.test(c.name)) {
    const model = selectModel(analysis.program, c.entry, undefined);
    if (typeof model !== "string") {
      lowerModel(
        analysis.program,
        model,
        new Map(),
        new Map([
          ["B", 1],
          ["T", 2],
        ]),
        analysis.diagnostics,
        STANDARD_LIBRARY,
      );
    }
  }
  // Parameter groups (E0412) are resolved when a train program is lowered, with B=1, T=2.
  if (/^E0412/.test(c.name)) {
    const train = selectTrainProgram(analysis.program, c.entry, undefined);
    if (typeof train !== "string") {
      lowerTrainProgram(
        analysis.program,
        train,
        new Map(),
        new Map([
          ["B", 1],
          ["T", 2],
        ]),
        analysis.diagnostics,
        STANDARD_LIBRARY,
      );
    }
  }
  const rel = (f: string) => path.relative(c.root, f).split(path.sep).join("/");
  const diagnostics = analysis.diagnostics.map((d) => ({
    ...d,
    file: rel(d.file),
    ...(d.related ? { related: d.related.map((r) => ({ ...r, file: rel(r.file) })) } : {}),
  }));
  const sources = new Map([...analysis.graph.modules].map(([f, m]) => [rel(f), m.text]));
  return { text: renderDiagnostics(diagnostics, sources), codes: diagnostics.map((d) => d.code) };
}

const cases = listCases();

describe("diagnostic baselines", () => {
  for (const c of cases) {
    it(c.name, () => {
      const { text, codes } = render(c);
      const code = c.name.slice(0, 5);
      // The case exists to show its code, and shows it first.
      expect(codes[0]).toBe(code);
      if (update) fs.writeFileSync(c.golden, text);
      expect(
        fs.existsSync(c.golden),
        `missing baseline ${path.relative(process.cwd(), c.golden)}`,
      ).toBe(true);
      expect(text).toBe(fs.readFileSync(c.golden, "utf8"));
    });
  }

  it("every catalogue code has a case and is documented", () => {
    const documented = fs.readFileSync(
      path.join(import.meta.dirname, "../../docs/errors.md"),
      "utf8",
    );
    for (const code of Object.keys(DIAGNOSTIC_CODES)) {
      expect(
        cases.some((c) => c.name.startsWith(code)),
        `no case for ${code}`,
      ).toBe(true);
      expect(documented.includes(`| ${code} |`), `${code} not in docs/errors.md`).toBe(true);
    }
  });
});
