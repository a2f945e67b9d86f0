// The completion pacer (runtime/gpu-wait.ts) without a device: `done` stands for Dawn's
// completion promise, and the tests check when the pacer asks for it.
import { describe, expect, it } from "vitest";

import { CompletionPacer } from "../../runtime/gpu-wait.js";

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A stand-in for "the GPU finishes `ms` after submit": records when it was asked. */
function work(ms: number) {
  const start = performance.now();
  const log = { askedAt: -1 };
  const done = () => {
    log.askedAt = performance.now() - start;
    const left = ms - log.askedAt;
    return left > 0 ? delay(left).then(() => "result") : Promise.resolve("result");
  };
  return { done, log };
}

describe("CompletionPacer", () => {
  it("asks at once when it has nothing to go by, and returns done()'s value", async () => {
    const pacer = new CompletionPacer();
    const w = work(60);
    const pending = pacer.wait(w.done);
    // No sleep before the first call: done() was called synchronously.
    expect(w.log.askedAt).toBeGreaterThanOrEqual(0);
    expect(await pending).toBe("result");
  });

  it("then sleeps most of the last call's time before asking", async () => {
    const pacer = new CompletionPacer();
    await pacer.wait(work(60).done);
    const w = work(60);
    const pending = pacer.wait(w.done);
    expect(w.log.askedAt).toBe(-1); // sleeping, not polling
    await pending;
    expect(w.log.askedAt).toBeGreaterThanOrEqual(0.8 * 60 - 2);
  });

  it("scales with the units of work and forgets on reset", async () => {
    const pacer = new CompletionPacer();
    await pacer.wait(work(40).done, 2); // 20 ms per unit
    const four = work(80);
    await pacer.wait(four.done, 4);
    expect(four.log.askedAt).toBeGreaterThanOrEqual(0.8 * 80 - 2);
    pacer.reset();
    const fresh = work(30);
    const pending = pacer.wait(fresh.done);
    expect(fresh.log.askedAt).toBeGreaterThanOrEqual(0);
    await pending;
  });

  it("does not learn from a call it is told to skip (a first call that compiles)", async () => {
    const pacer = new CompletionPacer();
    await pacer.wait(work(150).done, 1, { learn: false });
    expect(pacer.expectedMs).toBeUndefined();
    const w = work(10);
    const pending = pacer.wait(w.done);
    expect(w.log.askedAt).toBeGreaterThanOrEqual(0); // nothing learnt: asks at once
    await pending;
  });

  it("halves its estimate when the work was already done as it woke", async () => {
    const pacer = new CompletionPacer();
    await pacer.wait(work(100).done);
    const learnt = pacer.expectedMs!;
    expect(learnt).toBeGreaterThanOrEqual(100 - 2);
    const fast = work(5);
    await pacer.wait(fast.done); // sleeps 80% of `learnt`: long after the work finished
    expect(fast.log.askedAt).toBeGreaterThanOrEqual(0.8 * learnt - 2);
    expect(pacer.expectedMs).toBe(learnt / 2);
  });

  it("never sleeps for short work (a real GPU's)", async () => {
    const pacer = new CompletionPacer();
    await pacer.wait(work(0).done);
    const w = work(0);
    const pending = pacer.wait(w.done);
    expect(w.log.askedAt).toBeGreaterThanOrEqual(0);
    await pending;
  });
});
