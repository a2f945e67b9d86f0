// The language server must never open a GPU device: nothing it loads (statically, from
// `moec lsp` through editor/lsp/server.ts) may import `webgpu` or anything under runtime/.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";

const root = path.resolve(import.meta.dirname, "../..");

/** Modules loaded when `entry` is imported: static imports only (`import type` is erased). */
function staticImports(entry: string): { files: Set<string>; packages: Set<string> } {
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
  return { files, packages };
}

describe("the language server", () => {
  it("loads no runtime code", () => {
    const { files, packages } = staticImports(path.join(root, "editor/lsp/server.ts"));
    expect(files.size).toBeGreaterThan(10);
    expect([...packages]).not.toContain("webgpu");
    const runtime = [...files]
      .map((f) => path.relative(root, f))
      .filter((f) => f.startsWith("runtime/"));
    expect(runtime).toEqual([]);
  });

  it("is started by a CLI that loads no WebGPU binding before the command runs", () => {
    const { packages } = staticImports(path.join(root, "cli/main.ts"));
    expect([...packages]).not.toContain("webgpu");
  });

  it("starts `moec lsp` by importing the server lazily", () => {
    const main = fs.readFileSync(path.join(root, "cli/main.ts"), "utf8");
    expect(main).toMatch(/await import\("\.\.\/editor\/lsp\/server\.js"\)/);
  });
});
