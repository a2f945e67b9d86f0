// `moec view` draws from the front end and the files it is given: nothing it loads (statically,
// from cli/view-command.ts) may import `webgpu`, and the page builder loads no runtime code
// (compiler/pipeline.ts is its entry to the front end).
import { describe, expect, it } from "vitest";
import { staticImports } from "../static-imports.js";

describe("moec view", () => {
  it("loads no WebGPU binding", () => {
    const { files, packages } = staticImports("cli/view-command.ts");
    expect(files).toContain("editor/view/render-page.ts");
    expect([...packages]).not.toContain("webgpu");
  });

  it("builds the page from the front end alone", () => {
    for (const entry of ["editor/view/elaborate-view.ts", "editor/view/render-page.ts"]) {
      const { files } = staticImports(entry);
      expect(files.filter((f) => f.startsWith("runtime/"))).toEqual([]);
    }
  });
});
