// Every reproduction runs end to end in its quick form (one seed, a few steps): the data are
// generated, every arm trains through the CLI, and the tables print (issue #14: CI runs each
// experiment so, not at its full budget; `npm run repro -- NAME` is the real run).
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const root = path.resolve(import.meta.dirname, "../..");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-repro-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function repro(args: string[]) {
  return spawnSync(process.execPath, ["--import", "tsx", "repro/run.ts", ...args], {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, MOEC_FROM_SOURCE: "1" },
    timeout: 600_000,
  });
}

const names = repro(["--list"]).stdout.trim().split("\n");

describe("npm run repro", () => {
  it("--list names the experiments, one a line; an unknown name is an error", () => {
    expect(names).toEqual(expect.arrayContaining(["task-moe", "mixture-of-tokens", "distill"]));
    const unknown = repro(["no-such"]);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toContain('no experiment "no-such"');
  });

  it.each(names)(
    "%s runs end to end with --quick and prints its tables",
    (name) => {
      const r = repro([name, "--quick", "--out", tmp]);
      expect(r.stderr, r.stderr).not.toMatch(/Error/);
      expect(r.status).toBe(0);
      expect(r.stdout).toContain(`== ${name}: `);
      expect(r.stdout).toMatch(/^ {2}arm +seed 0 +mean$/m);
      expect(r.stdout).toContain(`ran ${name} end to end`);
      expect(r.stdout).not.toMatch(/^(PASS|FAIL) /m);
    },
    600_000,
  );
});
