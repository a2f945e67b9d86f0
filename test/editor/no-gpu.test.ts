// The language server must never open a GPU device: nothing it loads (statically, from
// `moec lsp` through editor/lsp/server.ts) may import `webgpu` or anything under runtime/.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { root, staticImports } from "../static-imports.js";

describe("the language server", () => {
  it("loads no runtime code", () => {
    const { files, packages } = staticImports("editor/lsp/server.ts");
    expect(files.length).toBeGreaterThan(10);
    expect([...packages]).not.toContain("webgpu");
    expect(files.filter((f) => f.startsWith("runtime/"))).toEqual([]);
  });

  it("is started by a CLI that loads no WebGPU binding before the command runs", () => {
    const { packages } = staticImports("cli/main.ts");
    expect([...packages]).not.toContain("webgpu");
  });

  it("starts `moec lsp` by importing the server lazily", () => {
    const main = fs.readFileSync(path.join(root, "cli/main.ts"), "utf8");
    expect(main).toMatch(/await import\("\.\.\/editor\/lsp\/server\.js"\)/);
  });
});
