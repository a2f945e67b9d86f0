/**
 * Waiting for submitted GPU work without taking the machine away from it.
 *
 * While any promise of Dawn's Node binding is pending (onSubmittedWorkDone, mapAsync), the
 * binding polls for finished work in a setImmediate loop, which keeps the main thread at 100%
 * of a core. On a software driver (lavapipe runs "the GPU" on the CPU's cores) that is a core
 * the shaders do not get: a 1024³ matmul on 2 cores measured 113-165 ms (min-median) when
 * awaited at once, 101-111 ms after sleeping 100 ms on a timer first. So the executor sleeps
 * most of the time it expects its work to take, and only then asks Dawn; the work itself
 * runs meanwhile on the driver's threads. On a real GPU the expected times are short and
 * nothing changes.
 */

/** Below this the timer's granularity costs more than the polling. */
const MIN_SLEEP_MS = 4;

/** The share of the expected time to sleep: oversleeping would add latency. */
const SLEEP_SHARE = 0.8;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Paces waits for one repeated workload (an executor's forward pass): the expected time is
 * the last measured one per unit of work, so it follows the workload both ways (a slower call
 * raises it, a faster one lowers it by at least 1 - SLEEP_SHARE per call).
 */
export class CompletionPacer {
  #msPerUnit: number | undefined;

  /**
   * Waits for work submitted just before (`units` repetitions of the workload): sleeps part of
   * the expected time, then awaits `done()`. Returns `done()`'s value.
   */
  async wait<T>(done: () => Promise<T>, units = 1): Promise<T> {
    const t0 = performance.now();
    const expected = this.#msPerUnit === undefined ? 0 : this.#msPerUnit * units;
    if (expected * SLEEP_SHARE >= MIN_SLEEP_MS) await sleep(expected * SLEEP_SHARE);
    const value = await done();
    this.#msPerUnit = (performance.now() - t0) / units;
    return value;
  }

  /** Forgets the expected time (the workload changed, e.g. static kernels will run again). */
  reset(): void {
    this.#msPerUnit = undefined;
  }
}
