/**
 * `moec fmt`, run as a user runs it (`tsx cli/main.ts fmt ...`) on temporary copies: in-place
 * rewrite, `--check` exit codes, `--stdin`, and a file with syntax errors left untouched.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { formatSource } from "../../compiler/format/format-source.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const tsx = join(root, "node_modules/.bin/tsx");
const dir = mkdtempSync(join(tmpdir(), "moec-fmt-"));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function moec(args: string[], input?: string) {
  const r = spawnSync(tsx, [join(root, "cli/main.ts"), ...args], {
    cwd: dir,
    encoding: "utf8",
    input,
    env: { ...process.env, NO_COLOR: "1" },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const UNFORMATTED = "block A(d:Dim){ y=f(a,b)   // keep me\n\n\n\n z = y }\n";
const FORMATTED = "block A(d: Dim) {\n  y = f(a, b) // keep me\n\n  z = y\n}\n";
const BROKEN = "block A {\n  x = f(a,\n}\n";

function write(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

describe("moec fmt", () => {
  it("rewrites files in place, leaving no temporary file behind", () => {
    const a = write("a.moe", UNFORMATTED);
    const b = write("b.moe", FORMATTED);
    const r = moec(["fmt", "a.moe", "b.moe"]);
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(a, "utf8")).toBe(FORMATTED);
    expect(readFileSync(a, "utf8")).toBe(formatSource(UNFORMATTED).formatted);
    expect(readFileSync(b, "utf8")).toBe(FORMATTED);
    expect(readdirSync(dir).filter((f) => f.startsWith("."))).toEqual([]);
  });

  it("--check lists the files that would change and exits 1, without writing", () => {
    const a = write("c.moe", UNFORMATTED);
    write("d.moe", FORMATTED);
    const r = moec(["fmt", "--check", "c.moe", "d.moe"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("c.moe\n");
    expect(r.stderr).toContain("1 file would be reformatted");
    expect(readFileSync(a, "utf8")).toBe(UNFORMATTED);
  });

  it("--check exits 0 when every file is formatted", () => {
    write("e.moe", FORMATTED);
    const r = moec(["fmt", "--check", "e.moe"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe("");
  });

  it("prints the diagnostics of a file with syntax errors and leaves it untouched", () => {
    const bad = write("bad.moe", BROKEN);
    const good = write("good.moe", UNFORMATTED);
    const mtime = statSync(bad).mtimeMs;
    const r = moec(["fmt", "bad.moe", "good.moe"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("error[E0101]");
    expect(r.stderr).toContain("bad.moe:3:1");
    expect(r.stderr).toContain("not formatted");
    expect(readFileSync(bad, "utf8")).toBe(BROKEN);
    expect(statSync(bad).mtimeMs).toBe(mtime);
    // The other files are still formatted.
    expect(readFileSync(good, "utf8")).toBe(FORMATTED);
    expect(moec(["fmt", "--check", "bad.moe"]).status).toBe(1);
  });

  it("--stdin formats standard input to standard output", () => {
    const r = moec(["fmt", "--stdin"], UNFORMATTED);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(FORMATTED);
    const check = moec(["fmt", "--stdin", "--check", "model.moe"], UNFORMATTED);
    expect(check.status).toBe(1);
    expect(check.stdout).toBe("model.moe\n");
    const broken = moec(["fmt", "--stdin"], BROKEN);
    expect(broken.status).toBe(1);
    expect(broken.stdout).toBe("");
    expect(broken.stderr).toContain("error[E0101]");
  });

  it("finds the examples and the standard library formatted", () => {
    const files = ["examples", "stdlib"].flatMap((d) =>
      readdirSync(join(root, d))
        .filter((f) => f.endsWith(".moe"))
        .map((f) => join(root, d, f)),
    );
    const r = moec(["fmt", "--check", ...files]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });

  it("is a usage error without files, and an error for a missing file", () => {
    expect(moec(["fmt"]).status).toBe(2);
    const missing = moec(["fmt", "nope.moe"]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("nope.moe");
  });
});
