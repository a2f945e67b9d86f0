/**
 * The VS Code extension's "moec: Show model" command is contributed and registered under the
 * same id, and runs `moec view` (the extension itself needs VS Code to run).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { root } from "../cli/moec-cli.js";

describe("moec: Show model", () => {
  it("is contributed, registered and runs moec view", () => {
    const pkg = JSON.parse(
      fs.readFileSync(path.join(root, "editor/vscode/package.json"), "utf8"),
    ) as {
      contributes: { commands: { command: string; title: string }[] };
    };
    const cmd = pkg.contributes.commands.find((c) => c.title === "moec: Show model");
    expect(cmd).toBeDefined();
    const src = fs.readFileSync(path.join(root, "editor/vscode/src/show-model.ts"), "utf8");
    expect(src).toContain(`registerCommand("${cmd!.command}"`);
    expect(src).toMatch(/\[\.\.\.args, "view", file, "-o", out\]/);
    const ext = fs.readFileSync(path.join(root, "editor/vscode/src/extension.ts"), "utf8");
    expect(ext).toContain("registerShowModel(context)");
  });
});
