// Bundles: a damaged bundle is refused before it runs (exit 1 naming the file), and
// `moec compile -o DIR` over an existing bundle leaves DIR a whole bundle, old or new, however
// it is killed.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readBundle } from "../../cli/bundle.js";
import { resolveVersionedDir } from "../../runtime/atomic-write.js";
import { deadPid, moecKilledAt } from "./kill-at.js";
import { moec } from "./moec-cli.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-bundle-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const compileArgs = (out: string, t = 5) => [
  "compile",
  "examples/tiny-transformer.moe",
  "--dim",
  "B=2",
  "--dim",
  `T=${t}`,
  "-o",
  out,
];
let n = 0;
/** A fresh copy of the compiled bundle (the real directory of its live version). */
let pristine: string;
function freshBundle(): string {
  const dir = path.join(tmp, `b${n++}.moec`);
  fs.cpSync(pristine, dir, { recursive: true });
  return dir;
}
const editJson = (file: string, edit: (j: Record<string, unknown>) => void) => {
  const j = JSON.parse(fs.readFileSync(file, "utf8"));
  edit(j);
  fs.writeFileSync(file, JSON.stringify(j, null, 2) + "\n");
};
/** Updates the manifest's hash of `file`, as if the bundle had been compiled that way. */
const rehash = (dir: string, file: string) =>
  editJson(path.join(dir, "manifest.json"), (m) => {
    (m["files"] as Record<string, string>)[file] = createHash("sha256")
      .update(fs.readFileSync(path.join(dir, file)))
      .digest("hex");
  });
interface Plan {
  kernels: { grid: number[]; bindings: { byteOffset: number }[] }[];
}

beforeAll(() => {
  const out = path.join(tmp, "pristine.moec");
  const r = moec(compileArgs(out));
  expect(r.code, r.stderr).toBe(0);
  pristine = resolveVersionedDir(out);
});

describe("a damaged bundle is refused before it runs", () => {
  it("zeroed dispatch grids in plan.json: exit 1 naming plan.json", () => {
    const dir = freshBundle();
    editJson(path.join(dir, "plan.json"), (p) => {
      for (const k of (p as unknown as Plan).kernels) k.grid = [0, 0, 0];
    });
    const r = moec(["run", dir, "--seed", "3"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/plan\.json: does not match the bundle's manifest/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("zeroed grids with the manifest's hash updated too: the plan check refuses them", () => {
    const dir = freshBundle();
    editJson(path.join(dir, "plan.json"), (p) => {
      (p as unknown as Plan).kernels[2]!.grid = [0, 1, 1];
    });
    rehash(dir, "plan.json");
    const r = moec(["run", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/plan\.json: kernel 2 .*dispatch grid \[0,1,1\]/);
  });

  it("a binding offset past its buffer: exit 1, one line", () => {
    const dir = freshBundle();
    editJson(path.join(dir, "plan.json"), (p) => {
      (p as unknown as Plan).kernels[0]!.bindings[0]!.byteOffset = 1 << 30;
    });
    rehash(dir, "plan.json");
    const r = moec(["run", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/plan\.json: kernel 0 .* lie outside buffer/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("garbage WGSL: exit 1 naming the kernel file", () => {
    const dir = freshBundle();
    const kernel = readBundle(dir).manifest.kernels[1]!.file;
    fs.writeFileSync(path.join(dir, kernel), "fn main( { garbage");
    const r = moec(["run", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `moec: ${path.join(dir, kernel)}: does not match the bundle's manifest (damaged or edited since it was compiled); recompile it`,
    );
  });

  it("garbage WGSL with its hash updated: the shader error is exit 1 too, not 3", () => {
    const dir = freshBundle();
    const kernel = readBundle(dir).manifest.kernels[1]!.file;
    fs.writeFileSync(path.join(dir, kernel), "fn main( { garbage");
    rehash(dir, kernel);
    const r = moec(["run", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/WGSL error in .*recompile the bundle/);
    expect(r.stderr).not.toMatch(/at .*\.ts:\d+/); // no stack trace
  });

  it("a missing kernel file: exit 1 naming it", () => {
    const dir = freshBundle();
    const kernel = readBundle(dir).manifest.kernels[0]!.file;
    fs.rmSync(path.join(dir, kernel));
    const r = moec(["run", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${kernel} is missing`);
  });

  it("a bundle of the old layout (no hashes, files at the top) still loads", () => {
    const dir = freshBundle();
    editJson(path.join(dir, "manifest.json"), (m) => delete m["files"]);
    const b = readBundle(dir);
    expect(b.code?.kernels.length).toBeGreaterThan(0);
  });
});

describe("compile -o over an existing bundle, killed at each critical moment", () => {
  for (const point of ["after-temp-write", "before-swap", "after-swap"]) {
    it(`killed at ${point}: the path is a whole bundle, old or new; the next compile tidies`, async () => {
      const parent = path.join(tmp, `kill-${point}`);
      fs.mkdirSync(parent);
      const out = path.join(parent, "tiny.moec");
      expect(moec(compileArgs(out, 5)).code).toBe(0);
      await moecKilledAt(compileArgs(out, 6), point);
      const t = readBundle(out).dims.get("T"); // checks every hash
      expect(t).toBe(point === "after-swap" ? 6 : 5);
      const r = moec(compileArgs(out, 7));
      expect(r.code, r.stderr).toBe(0);
      expect(readBundle(out).dims.get("T")).toBe(7);
      expect(fs.readdirSync(parent)).toEqual(["tiny.moec"]);
      expect(fs.readdirSync(out).sort()).toEqual([
        "current",
        "ir.json",
        "kernels",
        "manifest.json",
        "plan.json",
        expect.stringMatching(/^v\.\d+\.[0-9a-f]+$/),
      ]);
    });
  }

  it("an old-layout bundle killed midway through its conversion is still whole", async () => {
    const parent = path.join(tmp, "kill-legacy");
    fs.mkdirSync(parent);
    const out = path.join(parent, "tiny.moec");
    fs.cpSync(pristine, out, { recursive: true });
    await moecKilledAt(compileArgs(out, 6), "after-swap");
    expect(readBundle(out).dims.get("T")).toBe(6);
    expect(moec(compileArgs(out, 7)).code).toBe(0);
    expect(fs.readdirSync(out)).toHaveLength(6);
  });

  it("a bundle left aside by a compile killed between two renames is put back first", () => {
    const parent = path.join(tmp, "leftover");
    fs.mkdirSync(parent);
    // What today's two-rename replacement leaves when killed between them.
    fs.cpSync(pristine, path.join(parent, `.tiny.moec.${deadPid()}.0011aa.old`), {
      recursive: true,
    });
    const r = moec(compileArgs(path.join(parent, "tiny.moec"), 7));
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readdirSync(parent)).toEqual(["tiny.moec"]);
    expect(readBundle(path.join(parent, "tiny.moec")).dims.get("T")).toBe(7);
  });
});
