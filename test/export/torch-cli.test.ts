// `moec export --format torch` from the command line: the module it writes (header, one class
// per component, loading moec's weights), and a construct it cannot translate: one line,
// exit 1, nothing written. Needs no Python.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { moec } from "../cli/moec-cli.js";

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "moec-export-torch-"));

describe("moec export --format torch", () => {
  it("writes one module: header, a class per component, constructor defaults with --set", () => {
    const dir = tmp();
    const out = path.join(dir, "model.py");
    const r = moec([
      "export",
      "examples/task-moe.moe",
      "--format",
      "torch",
      "--set",
      "d=64",
      "-o",
      out,
    ]);
    expect(r.stderr).toContain("wrote");
    expect(r.code).toBe(0);
    const text = fs.readFileSync(out, "utf8");
    expect(text).toMatch(/^"""Translator: exported from examples\/task-moe\.moe by moec \d/);
    for (const cls of [
      "Linear",
      "LayerNorm",
      "Attention",
      "FFN",
      "Bottleneck",
      "TaskMoE",
      "Translator",
    ])
      expect(text).toContain(`class ${cls}(nn.Module):`);
    expect(text).toContain("def __init__(self, layers=6, d=64, vocab=8000):");
    expect(text).toContain("def forward(self, tokens, task):");
    expect(text).toContain('Lang = ("en_de", "en_fr", "de_en")');
    // Imports only torch (and safetensors when present).
    const imports = text.match(/^\s*(import|from) .*$/gm) ?? [];
    for (const i of imports)
      expect(i.trim()).toMatch(
        /^(import (json|math|struct|torch(\.nn\.functional as F)?)|from torch import nn|from safetensors\.torch import load_file, save_file)$/,
      );
    fs.rmSync(dir, { recursive: true });
  });

  it("names the construct it cannot export: one line, exit 1, nothing written", () => {
    const dir = tmp();
    const out = path.join(dir, "model.py");
    const r = moec([
      "export",
      "test/export/fixtures/unsupported.moe",
      "--model",
      "Rebound",
      "--format",
      "torch",
      "-o",
      out,
    ]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /unsupported\.moe:11:3: rebinding instance `f` cannot be exported to PyTorch yet/,
    );
    expect(fs.readdirSync(dir)).toEqual([]);
    fs.rmSync(dir, { recursive: true });
  });
});
