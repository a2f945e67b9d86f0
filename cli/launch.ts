/**
 * What `moec` starts as (bin/moec.js). Commands that open a WebGPU device run the CLI in a
 * child process whose stderr passes through here, because Dawn's native code prints two lines
 * about the adapter's limits ("Warning: maxDynamic…BuffersPerPipelineLayout artificially
 * reduced…", on lavapipe and on real GPUs alike) straight to file descriptor 2, where no
 * JavaScript hook reaches. Everything else moec prints passes through unchanged, as it comes.
 *
 * The child is the one moec process a user sees act: Ctrl-C reaches it from the terminal
 * (this process ignores it and waits), SIGTERM and SIGHUP are passed on, its exit code or
 * signal becomes this process's, and it kills itself if this process dies first (the IPC
 * channel closes), so `kill -9` on moec never leaves an orphan writing on.
 */
import { spawn } from "node:child_process";
import * as readline from "node:readline";
import { dawnLineFilter } from "./dawn-lines.js";

/** Commands that open a device (and so make Dawn print). */
const DEVICE_COMMANDS = new Set(["run", "train", "tune", "doctor"]);

/** Set in the child: run the CLI here. */
const LAUNCHED = "MOEC_LAUNCHED";
/** Set in the child when the launcher's stderr is a terminal: its width. */
const TERMINAL = "MOEC_STDERR_TERMINAL";

/** The command word of `moec [global options] COMMAND ...`. */
function commandOf(args: readonly string[]): string | undefined {
  return args.find((a) => !a.startsWith("-"));
}

function runFiltered(args: readonly string[]): void {
  const columns = process.stderr.columns;
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...args], {
    stdio: ["inherit", "inherit", "pipe", "ipc"],
    env: {
      ...process.env,
      [LAUNCHED]: "1",
      // The child's stderr is a pipe to this terminal: it draws progress as on a terminal.
      ...(process.stderr.isTTY ? { [TERMINAL]: String(columns || 80) } : {}),
    },
  });
  const filter = dawnLineFilter((t) => process.stderr.write(t));
  child.stderr!.setEncoding("utf8").on("data", (t: string) => filter.push(t));
  child.stderr!.on("end", () => filter.end());
  // The terminal sends Ctrl-C to the child as well; it decides what to do with it.
  process.on("SIGINT", () => {});
  for (const signal of ["SIGTERM", "SIGHUP"] as const) process.on(signal, () => child.kill(signal));
  child.on("error", (err) => {
    process.stderr.write(`moec: could not start: ${err.message}\n`);
    process.exitCode = 3;
  });
  child.on("exit", (code, signal) => {
    filter.end();
    if (signal) {
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
      return;
    }
    process.exitCode = code ?? 3;
  });
}

/** In the child: die with the launcher (its IPC channel closes when it does). */
function followLauncher(): void {
  const channel = process.channel;
  if (!channel) return;
  channel.unref();
  process.on("disconnect", () => process.kill(process.pid, "SIGKILL"));
  const columns = Number(process.env[TERMINAL]);
  if (columns > 0 && !process.stderr.isTTY) actAsTerminal(process.stderr, columns);
}

/**
 * Makes the pipe to the launcher's terminal act as that terminal (what ora and colour checks
 * ask of a TTY stream), the cursor moves written as the escape codes a TTY stream writes.
 */
function actAsTerminal(stream: NodeJS.WriteStream, columns: number): void {
  const rows = 24;
  Object.assign(stream, {
    isTTY: true,
    columns,
    rows,
    cursorTo: (x: number, y?: number | (() => void), done?: () => void) =>
      readline.cursorTo(
        stream,
        x,
        typeof y === "number" ? y : undefined,
        typeof y === "function" ? y : done,
      ),
    moveCursor: (dx: number, dy: number, done?: () => void) =>
      readline.moveCursor(stream, dx, dy, done),
    clearLine: (dir: readline.Direction, done?: () => void) =>
      readline.clearLine(stream, dir, done),
    clearScreenDown: (done?: () => void) => readline.clearScreenDown(stream, done),
    getWindowSize: () => [columns, rows],
    hasColors: () => true,
    getColorDepth: () => 8,
  });
}

const args = process.argv.slice(2);
if (process.env[LAUNCHED] === "1") {
  followLauncher();
  await import("./main.js");
} else if (DEVICE_COMMANDS.has(commandOf(args) ?? "")) {
  runFiltered(args);
} else {
  await import("./main.js");
}
