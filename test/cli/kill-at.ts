/**
 * Kill tests: runs `moec ARGS` with `MOEC_TEST_PAUSE_AT=<point>` (runtime/atomic-write.ts's
 * `pauseAt`), waits until the write stops there and kills the process with SIGKILL, as a
 * power cut or an OOM kill would, at exactly that moment of the write.
 */
import { spawn, spawnSync } from "node:child_process";
import { moecNodeArgs, root } from "./moec-cli.js";

/** Runs `moec ARGS` until it pauses at `point`, then kills it; resolves with its pid. */
export function moecKilledAt(args: readonly string[], point: string, timeoutMs = 60_000) {
  return new Promise<{ pid: number; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, [...moecNodeArgs, ...args], {
      cwd: root,
      env: { ...process.env, MOEC_TEST_PAUSE_AT: point },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    let killed = false;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`moec ${args.join(" ")} never paused at ${point}; stderr:\n${stderr}`));
    }, timeoutMs);
    child.stderr.setEncoding("utf8").on("data", (s: string) => {
      stderr += s;
      if (!killed && stderr.includes(`moec: paused at ${point}\n`)) {
        killed = true;
        child.kill("SIGKILL");
      }
    });
    child.on("error", reject);
    child.on("exit", () => {
      clearTimeout(timer);
      if (killed) resolve({ pid: child.pid!, stderr });
      else
        reject(new Error(`moec ${args.join(" ")} exited before pausing at ${point}:\n${stderr}`));
    });
  });
}

/** The pid of a process that has exited (so its temporaries are debris). */
export function deadPid(): number {
  return spawnSync(process.execPath, ["-e", "0"]).pid;
}
