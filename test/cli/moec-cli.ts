// Runs the `moec` command line from the sources in a child process (one device per process).
import { spawnSync } from "node:child_process";
import * as path from "node:path";

export const root = path.join(import.meta.dirname, "../..");

/** The node arguments that start the CLI from source, before the command's own. */
export const moecNodeArgs = ["--import", "tsx", path.join(root, "cli/main.ts")];

/**
 * `moec ARGS` in the repository root: exit code, stdout, and stderr without Dawn's adapter
 * warnings ("maxDynamic… artificially reduced"), which are the driver's lines, not moec's.
 */
export function moec(args: readonly string[]): {
  code: number | null;
  stdout: string;
  stderr: string;
} {
  const r = spawnSync(process.execPath, [...moecNodeArgs, ...args], {
    cwd: root,
    encoding: "utf8",
    timeout: 240_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.replace(/Warning: .*\n/g, "") };
}
