// Exits 0 and prints a one-line adapter description when a WebGPU adapter is available,
// exits 1 with the reason on stderr otherwise. Used by scripts/setup.sh:
//   node dist/runtime/probe-adapter.js
import { adapterSummary, openDevice } from "./device.js";

const WATCHDOG_MS = 60_000;

async function main(): Promise<number> {
  // Dawn must never be able to hang setup: give up after a minute whatever happens.
  setTimeout(() => {
    process.stderr.write(`probe-adapter: no answer from WebGPU after ${WATCHDOG_MS / 1000}s\n`);
    process.exit(1);
  }, WATCHDOG_MS).unref();

  try {
    const ctx = await openDevice({ limits: "default" });
    const line = adapterSummary(ctx);
    await ctx.close();
    process.stdout.write(`${line}\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`probe-adapter: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

process.exitCode = await main();
