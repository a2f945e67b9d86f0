// `moec export --format onnx` as a user runs it: the file written, and bad input as one line
// with exit 1 or 2 and nothing written.
import * as fs from "node:fs";
import * as path from "node:path";
import onnxProto from "onnx-proto";
import { describe, expect, it } from "vitest";
import { moec, root } from "../cli/moec-cli.js";
import { scratchDir } from "./onnx-harness.js";

const dir = scratchDir();
const tiny = "examples/tiny-transformer.moe";

/** Exit `code`, one line on stderr matching `pattern`, and nothing in the scratch folder. */
function expectOneLine(r: ReturnType<typeof moec>, pattern: RegExp, code: number): void {
  expect(r.code, r.stderr).toBe(code);
  const lines = r.stderr.trim().split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

describe("moec export --format onnx", () => {
  it("writes the model named by -o, with the header, for the weights of --seed", () => {
    const out = path.join(dir, "tiny.onnx");
    const r = moec(["export", tiny, "--format", "onnx", "--seed", "3", "-o", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^wrote .*tiny\.onnx\n$/);
    const m = onnxProto.onnx.ModelProto.decode(fs.readFileSync(out));
    expect(m.producerName).toBe("moec");
    expect(m.metadataProps.find((p) => p.key === "model")!.value).toBe("TinyTransformer");
    expect(fs.readdirSync(dir)).toEqual(["tiny.onnx"]);
    fs.rmSync(out);
  });

  it("bad input: one line, exit 1 or 2, nothing written", () => {
    const out = path.join(dir, "bad.onnx");
    expectOneLine(
      moec(["export", tiny, "--format", "onnxx", "-o", out]),
      /unknown --format "onnxx"; formats: .*onnx/,
      2,
    );
    expectOneLine(
      moec(["export", tiny, "--format", "onnx", "-o", path.join(dir, "missing", "m.onnx")]),
      /does not exist/,
      1,
    );
    // Groups of examples: B cannot stay symbolic in this model.
    expectOneLine(
      moec([
        "export",
        "examples/repro/mixture-of-tokens.moe",
        "--model",
        "MoT",
        "--format",
        "onnx",
        "-o",
        out,
      ]),
      /`B` cannot stay a symbolic ONNX dimension .*--dim B=SIZE$/,
      1,
    );
    expectOneLine(
      moec(["export", tiny, "--format", "onnx", "--seed", "x", "-o", out]),
      /--seed expects a non-negative integer/,
      2,
    );
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(fs.existsSync(path.join(root, "TinyTransformer.onnx"))).toBe(false);
  });
});
