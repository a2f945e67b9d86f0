/**
 * Golden AST tests: every `examples/**\/*.moe`, `stdlib/**\/*.moe` and `test/grammar/cases/*.moe`
 * is parsed and rendered (ast-print.ts); the rendering must equal
 * `test/grammar/golden/<path with / replaced by __>.golden`. A missing or different golden
 * fails, unless the environment sets UPDATE_GOLDEN=1, which (re)writes it.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parseSource } from "../../grammar/parse.js";
import { printParseResult } from "./ast-print.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const goldenDir = join(root, "test/grammar/golden");
const update = process.env["UPDATE_GOLDEN"] === "1";

function moeFiles(dir: string, recursive: boolean): string[] {
  const abs = join(root, dir);
  if (!existsSync(abs)) return [];
  const out: string[] = [];
  for (const name of readdirSync(abs).sort()) {
    const path = join(abs, name);
    if (statSync(path).isDirectory()) {
      if (recursive) out.push(...moeFiles(join(dir, name), true));
    } else if (name.endsWith(".moe")) {
      out.push(relative(root, path).split("\\").join("/"));
    }
  }
  return out;
}

const files = [
  ...moeFiles("examples", true),
  ...moeFiles("stdlib", true),
  ...moeFiles("test/grammar/cases", false),
];

export function goldenPath(rel: string): string {
  return join(goldenDir, rel.split("/").join("__") + ".golden");
}

describe("golden ASTs", () => {
  it("has the grammar's own cases", () => {
    expect(files.filter((f) => f.startsWith("test/grammar/cases/")).length).toBeGreaterThan(5);
  });

  for (const rel of files) {
    it(rel, () => {
      const text = readFileSync(join(root, rel), "utf8");
      const result = parseSource(text, rel);
      const actual = printParseResult(result, text);
      const golden = goldenPath(rel);
      if (update) {
        mkdirSync(goldenDir, { recursive: true });
        writeFileSync(golden, actual);
        return;
      }
      if (!existsSync(golden)) {
        expect.fail(
          `missing golden ${relative(root, golden)}: run UPDATE_GOLDEN=1 npx vitest run test/grammar`,
        );
      }
      expect(actual).toBe(readFileSync(golden, "utf8"));
    });
  }

  it("parses the grammar's cases without errors (except the recovery cases)", () => {
    for (const rel of files.filter((f) => f.startsWith("test/grammar/cases/"))) {
      if (rel.includes("/recovery-")) continue;
      const result = parseSource(readFileSync(join(root, rel), "utf8"), rel);
      expect(result.diagnostics, rel).toEqual([]);
    }
  });
});
