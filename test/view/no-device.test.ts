// `moec view` draws from the front end and the files it is given: nothing it loads (statically,
// from cli/view-command.ts) may import `webgpu`, and the page builder loads no runtime code
// (compiler/pipeline.ts is its entry to the front end).
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";

const root = path.resolve(import.meta.dirname, "../..");

/** Modules loaded when `entry` is imported: static imports only (`import type` is erased). */
function staticImports(entry: string): { files: string[]; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string) => {
    if (files.has(file)) return;
    files.add(file);
    const text = fs.readFileSync(file, "utf8");
    const re = /^\s*(?:import|export)\s+(?!type\b)(?:[^"';]*?\sfrom\s+)?["']([^"']+)["']/gm;
    for (const m of text.matchAll(re)) {
      const spec = m[1]!;
      if (spec.startsWith(".")) {
        const target = path.resolve(path.dirname(file), spec).replace(/\.js$/, ".ts");
        if (fs.existsSync(target)) visit(target);
      } else
        packages.add(
          spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0]!,
        );
    }
  };
  visit(entry);
  return { files: [...files].map((f) => path.relative(root, f)), packages };
}

describe("moec view", () => {
  it("loads no WebGPU binding", () => {
    const { files, packages } = staticImports(path.join(root, "cli/view-command.ts"));
    expect(files).toContain("editor/view/render-page.ts");
    expect([...packages]).not.toContain("webgpu");
  });

  it("builds the page from the front end alone", () => {
    for (const entry of ["editor/view/elaborate-view.ts", "editor/view/render-page.ts"]) {
      const { files } = staticImports(path.join(root, entry));
      expect(files.filter((f) => f.startsWith("runtime/"))).toEqual([]);
    }
  });
});
