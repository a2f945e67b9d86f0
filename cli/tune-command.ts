/**
 * `moec tune`: measures the matmul kernel variants and the elementwise kernels' shapes on this
 * adapter and caches the fastest (keyed by the adapter's identity), so later runs and
 * benchmarks use them.
 */
import { autotune, defaultCacheDir, elementwiseName, loadTuning } from "../runtime/autotune.js";
import { DeviceError, adapterSummary, openDevice } from "../runtime/device.js";
import { CliError, EXIT_DEVICE } from "./report.js";

export async function runTune(options: { force?: boolean; json?: boolean }): Promise<number> {
  let ctx;
  try {
    ctx = await openDevice();
  } catch (err) {
    if (err instanceof DeviceError) throw new CliError(err.message, EXIT_DEVICE);
    throw err;
  }
  try {
    const cached = loadTuning(ctx);
    const log = options.json ? undefined : (line: string) => process.stderr.write(`${line}\n`);
    const tuning =
      cached && !options.force
        ? cached
        : await autotune(ctx, { force: true, ...(log ? { log } : {}) });
    const result = {
      adapter: adapterSummary(ctx),
      cached: cached !== undefined && !options.force,
      cache: defaultCacheDir(),
      matmul: { nn: tuning.matmul.nn.name, nt: tuning.matmul.nt.name },
      largeMatmul: { nn: tuning.largeMatmul.nn.name, nt: tuning.largeMatmul.nt.name },
      smallMatmul: {
        nn: (tuning.smallMatmul ?? tuning.matmul).nn.name,
        nt: (tuning.smallMatmul ?? tuning.matmul).nt.name,
      },
      elementwise: elementwiseName(tuning),
    };
    if (options.json) process.stdout.write(JSON.stringify(result, null, 2) + "\n");
    else {
      process.stdout.write(
        `${result.cached ? "already tuned" : "tuned"} ${result.adapter}\n` +
          `  matmul x·w: ${result.matmul.nn}\n  matmul x·wᵀ: ${result.matmul.nt}\n` +
          `  large matmul x·w: ${result.largeMatmul.nn}\n  large matmul x·wᵀ: ${result.largeMatmul.nt}\n` +
          `  small matmul x·w: ${result.smallMatmul.nn}\n  small matmul x·wᵀ: ${result.smallMatmul.nt}\n` +
          `  elementwise kernels (threads × items): ${result.elementwise}\n` +
          `  cache: ${result.cache}${result.cached ? " (moec tune --force measures again)" : ""}\n`,
      );
    }
    return 0;
  } finally {
    await ctx.close();
  }
}
