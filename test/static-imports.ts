/**
 * The modules loaded when a source file is imported, read from the text: static imports only
 * (`import type` is erased, `await import()` is lazy), for the tests that prove a part of
 * moec never loads another (the language server and `moec view` never load `webgpu`).
 */
import * as fs from "node:fs";
import * as path from "node:path";

export const root = path.resolve(import.meta.dirname, "..");

/** Files (relative to the repository root) and npm packages `entry` loads. */
export function staticImports(entry: string): { files: string[]; packages: Set<string> } {
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
  visit(path.resolve(root, entry));
  return { files: [...files].map((f) => path.relative(root, f)), packages };
}
