/**
 * Learning-rate schedules, on the host (the step's lr is a graph input): linear warmup from 0,
 * then cosine or linear decay to `minLr` at `totalSteps`, or constant. Steps count from 1, as
 * AdamW's bias corrections do; step `warmupSteps` is the first at the full rate.
 */

/** A warmup-then-decay schedule. */
export interface LrSchedule {
  lr: number;
  totalSteps: number;
  warmupSteps?: number;
  decay?: "cosine" | "linear" | "constant";
  /** The rate decay ends at (default 0). */
  minLr?: number;
}

/** The learning rate of step `t` (1-based); steps past `totalSteps` keep the final rate. */
export function learningRate(s: LrSchedule, t: number): number {
  const warmup = s.warmupSteps ?? 0;
  const minLr = s.minLr ?? 0;
  if (t <= warmup) return (s.lr * t) / warmup;
  const decay = s.decay ?? "cosine";
  if (decay === "constant" || s.totalSteps <= warmup) return s.lr;
  const progress = Math.min(1, (t - warmup) / (s.totalSteps - warmup));
  const shape = decay === "cosine" ? 0.5 * (1 + Math.cos(Math.PI * progress)) : 1 - progress;
  return minLr + (s.lr - minLr) * shape;
}

/** Checks a schedule's numbers, one line per problem the user can fix. */
export function checkSchedule(s: LrSchedule): void {
  const warmup = s.warmupSteps ?? 0;
  if (!(s.lr > 0)) throw new Error(`learning rate must be positive, got ${s.lr}`);
  if (!Number.isInteger(s.totalSteps) || s.totalSteps < 1)
    throw new Error(`total steps must be a positive integer, got ${s.totalSteps}`);
  if (!Number.isInteger(warmup) || warmup < 0 || warmup > s.totalSteps)
    throw new Error(`warmup steps must be an integer from 0 to ${s.totalSteps}, got ${warmup}`);
  if (s.minLr !== undefined && !(s.minLr >= 0 && s.minLr <= s.lr))
    throw new Error(`minimum learning rate must be between 0 and ${s.lr}, got ${s.minLr}`);
}
