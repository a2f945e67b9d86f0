/**
 * The layout's rules, checked on the import graph of the sources: no import cycle anywhere,
 * and each layer of the compiler imports only from the layers before it (ARCHITECTURE.md).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SOURCE_DIRS = [
  "grammar",
  "compiler",
  "runtime",
  "cli",
  "editor/lsp",
  "editor/prettier-plugin",
];

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(path.join(repoRoot, dir), { withFileTypes: true })) {
    const rel = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(rel));
    else if (entry.name.endsWith(".ts")) out.push(rel);
  }
  return out;
}

/** Each source file's imports: repo-relative paths of local modules, and package names. */
function importGraph(): Map<string, { local: string[]; packages: string[] }> {
  const graph = new Map<string, { local: string[]; packages: string[] }>();
  const spec =
    /(?:^|\n)\s*(?:import|export)\b[^"';]*?\sfrom\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g;
  for (const file of SOURCE_DIRS.flatMap(sourceFiles)) {
    const text = fs.readFileSync(path.join(repoRoot, file), "utf8");
    const local: string[] = [];
    const packages: string[] = [];
    for (const m of text.matchAll(spec)) {
      const s = (m[1] ?? m[2])!;
      if (s.startsWith(".")) {
        local.push(
          path.posix
            .normalize(path.posix.join(path.posix.dirname(file), s))
            .replace(/\.js$/, ".ts"),
        );
      } else packages.push(s);
    }
    graph.set(file, { local, packages });
  }
  return graph;
}

/** Strongly connected components with more than one file, or a file importing itself. */
function cycles(graph: Map<string, { local: string[] }>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)?.local ?? []) {
      if (!graph.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || graph.get(v)!.local.includes(v)) found.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return found;
}

describe("layering", () => {
  const graph = importGraph();

  it("finds the sources", () => {
    expect(graph.has("compiler/pipeline.ts")).toBe(true);
    expect(graph.get("compiler/pipeline.ts")!.local.length).toBeGreaterThan(3);
  });

  it("has no import cycle", () => {
    expect(cycles(graph)).toEqual([]);
  });

  it("detects a cycle when there is one", () => {
    const g = new Map([
      ["a.ts", { local: ["b.ts"] }],
      ["b.ts", { local: ["a.ts"] }],
      ["c.ts", { local: ["a.ts"] }],
    ]);
    expect(cycles(g)).toEqual([["a.ts", "b.ts"]]);
  });

  /** Folder → folders under compiler/ it must not import from. */
  const forbidden: Record<string, string[]> = {
    "grammar/": [
      "compiler/check/",
      "compiler/lower/",
      "compiler/ir/",
      "compiler/kernels/",
      "compiler/library/",
      "runtime/",
    ],
    "compiler/check/": [
      "compiler/lower/",
      "compiler/ir/",
      "compiler/kernels/",
      "compiler/library/",
      "runtime/",
    ],
    "compiler/ir/": [
      "compiler/check/",
      "compiler/lower/",
      "compiler/kernels/",
      "compiler/library/",
      "runtime/",
    ],
    "compiler/lower/": ["compiler/kernels/", "runtime/"],
    "compiler/library/": ["compiler/kernels/", "runtime/"],
    "compiler/kernels/": ["compiler/check/", "compiler/lower/", "compiler/library/", "runtime/"],
    "compiler/format/": [
      "compiler/check/",
      "compiler/lower/",
      "compiler/ir/",
      "compiler/kernels/",
      "runtime/",
    ],
    "editor/": ["runtime/", "compiler/kernels/"],
  };

  it("imports only from earlier layers", () => {
    const wrong: string[] = [];
    for (const [file, { local }] of graph) {
      for (const [layer, banned] of Object.entries(forbidden)) {
        if (!file.startsWith(layer)) continue;
        for (const target of local)
          if (banned.some((b) => target.startsWith(b))) wrong.push(`${file} → ${target}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it("opens the device only under runtime/", () => {
    const wrong = [...graph]
      .filter(([file, { packages }]) => !file.startsWith("runtime/") && packages.includes("webgpu"))
      .map(([file]) => file);
    expect(wrong).toEqual([]);
  });
});
