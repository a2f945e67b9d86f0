// The completion pacer (runtime/gpu-wait.ts) without a device, on a simulated clock: `done`
// stands for Dawn's completion promise, and the tests check when the pacer asks for it and
// what it learns.
import { describe, expect, it } from "vitest";

import { CompletionPacer } from "../../runtime/gpu-wait.js";

/**
 * A pacer on a clock that only moves when it sleeps or awaits the simulated GPU work.
 */
function simulated() {
  let t = 0;
  const clock = {
    now: () => t,
    sleep: async (ms: number) => {
      t += ms;
    },
  };
  /** Work submitted now that finishes `ms` later; `askedAt` is when the pacer asked. */
  const work = (ms: number) => {
    const finish = t + ms;
    const log = { askedAt: -1, start: t };
    const done = async () => {
      log.askedAt = t - log.start;
      t = Math.max(t, finish) + 0.2; // Dawn notices a finished submit a little later
      return "result";
    };
    return { done, log };
  };
  return { pacer: new CompletionPacer(clock), work };
}

describe("CompletionPacer", () => {
  it("asks at once when it has nothing to go by, and returns done()'s value", async () => {
    const { pacer, work } = simulated();
    const w = work(60);
    expect(await pacer.wait(w.done)).toBe("result");
    expect(w.log.askedAt).toBe(0);
    expect(pacer.expectedMs).toBeCloseTo(60.2);
  });

  it("then sleeps 80% of the last call's time before asking", async () => {
    const { pacer, work } = simulated();
    await pacer.wait(work(60).done);
    const w = work(60);
    await pacer.wait(w.done);
    expect(w.log.askedAt).toBeCloseTo(0.8 * 60.2);
    expect(pacer.expectedMs).toBeCloseTo(60.2); // still learning the work's own time
  });

  it("follows slower work up", async () => {
    const { pacer, work } = simulated();
    await pacer.wait(work(50).done);
    await pacer.wait(work(90).done);
    expect(pacer.expectedMs).toBeCloseTo(90.2);
  });

  it("halves its estimate when the work was already done as it woke", async () => {
    const { pacer, work } = simulated();
    await pacer.wait(work(100).done);
    const fast = work(5);
    await pacer.wait(fast.done); // sleeps 80 ms, long after the work finished
    expect(fast.log.askedAt).toBeCloseTo(80.16);
    expect(pacer.expectedMs).toBeCloseTo(100.2 / 2);
    const next = work(5);
    await pacer.wait(next.done);
    expect(next.log.askedAt).toBeCloseTo(0.8 * 50.1);
  });

  it("scales with the units of work", async () => {
    const { pacer, work } = simulated();
    await pacer.wait(work(40).done, 2);
    expect(pacer.expectedMs).toBeCloseTo(20.1);
    const four = work(80);
    await pacer.wait(four.done, 4);
    expect(four.log.askedAt).toBeCloseTo(0.8 * 4 * 20.1);
  });

  it("does not learn from a call it is told to skip (a first call that compiles)", async () => {
    const { pacer, work } = simulated();
    await pacer.wait(work(17_000).done, 1, { learn: false });
    expect(pacer.expectedMs).toBeUndefined();
    const w = work(10);
    await pacer.wait(w.done);
    expect(w.log.askedAt).toBe(0);
  });

  it("never sleeps for short work (a real GPU's)", async () => {
    const { pacer, work } = simulated();
    await pacer.wait(work(3).done);
    const w = work(3);
    await pacer.wait(w.done);
    expect(w.log.askedAt).toBe(0);
  });

  it("sleeps on the real clock too", async () => {
    const pacer = new CompletionPacer();
    const done = () => new Promise<string>((resolve) => setTimeout(() => resolve("x"), 30));
    await pacer.wait(done);
    let asked = false;
    const pending = pacer.wait(() => {
      asked = true;
      return done();
    });
    expect(asked).toBe(false); // on a timer, not polling
    await pending;
    expect(asked).toBe(true);
  });
});
