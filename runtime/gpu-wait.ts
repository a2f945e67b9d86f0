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

/** Work that finished within this long after the sleep probably finished during it. */
const OVERSLEPT_MS = 1;

const REAL_CLOCK = {
  now: () => performance.now(),
  sleep: (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)),
};

/**
 * Paces waits for one repeated workload (an executor's forward pass). The expected time is the
 * last measured one per unit of work, so it follows the workload both ways: a slower call
 * raises it; a call that was already done when the sleep ended (an overestimate) halves it.
 */
export class CompletionPacer {
  #msPerUnit: number | undefined;
  readonly #now: () => number;
  readonly #sleep: (ms: number) => Promise<void>;

  /** `clock` replaces the real one (tests). */
  constructor(clock: { now: () => number; sleep: (ms: number) => Promise<void> } = REAL_CLOCK) {
    this.#now = clock.now;
    this.#sleep = clock.sleep;
  }

  /**
   * Waits for work submitted just before (`units` repetitions of the workload): sleeps part of
   * the expected time, then awaits `done()`. Returns `done()`'s value. With `learn: false` the
   * call's time is not taken as the workload's (a first call that also compiles the shaders).
   */
  async wait<T>(done: () => Promise<T>, units = 1, { learn = true } = {}): Promise<T> {
    const t0 = this.#now();
    const expected = this.#msPerUnit === undefined ? 0 : this.#msPerUnit * units;
    const slept = expected * SLEEP_SHARE >= MIN_SLEEP_MS;
    if (slept) await this.#sleep(expected * SLEEP_SHARE);
    const woke = this.#now();
    const value = await done();
    const end = this.#now();
    if (learn) {
      const overslept = slept && end - woke < OVERSLEPT_MS;
      this.#msPerUnit = overslept ? this.#msPerUnit! / 2 : (end - t0) / units;
    }
    return value;
  }

  /** The expected time of one unit of work, in ms (undefined until measured). */
  get expectedMs(): number | undefined {
    return this.#msPerUnit;
  }
}
