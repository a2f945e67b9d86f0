// Runs the `moec` command line from the sources in a child process (one device per process).
import { spawn, spawnSync } from "node:child_process";
import * as path from "node:path";

export const root = path.join(import.meta.dirname, "../..");

/** The node arguments that start the CLI from source, before the command's own. */
export const moecNodeArgs = ["--import", "tsx", path.join(root, "cli/main.ts")];

/**
 * `moec ARGS` in the repository root: exit code, stdout, and stderr without Dawn's adapter
 * warnings ("maxDynamic… artificially reduced"), which are the driver's lines, not moec's.
 */
export interface MoecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const withoutDriverWarnings = (stderr: string) => stderr.replace(/Warning: .*\n/g, "");

export function moec(args: readonly string[]): MoecResult {
  const r = spawnSync(process.execPath, [...moecNodeArgs, ...args], {
    cwd: root,
    encoding: "utf8",
    timeout: 240_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: withoutDriverWarnings(r.stderr) };
}

/** `moec ARGS` without blocking, so several runs (each with its own device) overlap. */
export function moecAsync(args: readonly string[], timeoutMs = 900_000): Promise<MoecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...moecNodeArgs, ...args], {
      cwd: root,
      timeout: timeoutMs,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr: withoutDriverWarnings(stderr) }));
  });
}
