/**
 * The run directory's checkpoints: `runs/NAME/ckpt-<step>/` holds `model.safetensors` (the
 * parameters by dotted path), `optimizer.safetensors` (`exp_avg.<p>`, `exp_avg_sq.<p>`) and
 * `trainer_state.json`. A checkpoint directory is built in a temporary sibling, fsynced and
 * renamed into place (runtime/atomic-write.ts); only then is the `latest` pointer rewritten
 * (atomically) and are older checkpoints pruned, so a crash at any point leaves the previous
 * checkpoint usable. Resuming takes the newest checkpoint that reads back whole and skips a
 * torn or corrupt one with a one-line warning.
 */
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import path from "node:path";

import { parseTempSibling, writeDirAtomic, writeFileAtomic } from "../atomic-write.js";
import type { TensorData } from "../executor.js";
import {
  type TensorToWrite,
  WeightsError,
  readSafetensorsFile,
  writeSafetensors,
} from "../safetensors.js";
import type { DataCursor } from "./data.js";

export const MODEL_FILE = "model.safetensors";
export const OPTIMIZER_FILE = "optimizer.safetensors";
export const STATE_FILE = "trainer_state.json";
export const LATEST_FILE = "latest";

/** What `trainer_state.json` records beside the tensors. */
export interface TrainerState {
  step: number;
  data: DataCursor;
  /** init: parameters; data: batch order; noise: dropout and router jitter (per-step keys). */
  seeds: { init: number; data: number; noise: number };
  /** Hash of the training configuration (options, schedule): resuming under another warns. */
  configHash: string;
  /** Hash of the program's source. */
  sourceHash: string;
  moecVersion: string;
  /** Evaluation loss at this step, when evaluated (the best one is kept). */
  evalLoss?: number;
  /** Eval accuracy per cross_entropy term (null in the file where nothing was counted). */
  evalAccuracy?: Record<string, number>;
  /** Eval accuracy per cross_entropy term and task. */
  evalTaskAccuracy?: Record<string, Record<string, number>>;
}

/** A tensor with its shape (checkpoints store shapes; the executor's arrays are flat). */
export interface StateTensor {
  shape: readonly number[];
  data: TensorData;
}

/** A checkpoint as written or read back. */
export interface Checkpoint {
  /** The checkpoint's directory. */
  dir: string;
  state: TrainerState;
  /** Parameters by dotted path. */
  params: Map<string, StateTensor>;
  /** Optimizer state by `exp_avg.<p>` / `exp_avg_sq.<p>`. */
  optimizer: Map<string, StateTensor>;
}

/** Retention: the last `keepLast` checkpoints, and the one with the lowest eval loss. */
export interface RetentionOptions {
  keepLast: number;
  keepBest?: boolean;
}

const CKPT = /^ckpt-(\d+)$/;

/** Optimizer state is what AdamW names `exp_avg.<p>` and `exp_avg_sq.<p>`. */
export function isOptimizerState(name: string): boolean {
  return name.startsWith("exp_avg.") || name.startsWith("exp_avg_sq.");
}

/** The version in moec's package.json. */
export function moecVersion(): string {
  // From dist/runtime/train/ the package root is one level further up.
  for (const rel of ["../../package.json", "../../../package.json"]) {
    try {
      const json = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as {
        name?: string;
        version?: string;
      };
      if (json.name === "moec" && typeof json.version === "string") return json.version;
    } catch {
      // Not at this level: try the next.
    }
  }
  throw new Error(`internal: cannot find moec's package.json from ${import.meta.url}`);
}

function toWrite(tensors: ReadonlyMap<string, StateTensor>): Map<string, TensorToWrite> {
  return new Map(
    [...tensors].map(([name, t]) => [
      name,
      { dtype: t.data instanceof Int32Array ? "I32" : "F32", shape: t.shape, data: t.data },
    ]),
  );
}

/**
 * Writes `ckpt-<step>` under `runDir` (replacing one of the same step), then the `latest`
 * pointer, then prunes checkpoints outside the retention. Returns the checkpoint's directory.
 */
export function writeCheckpoint(
  runDir: string,
  ckpt: Omit<Checkpoint, "dir">,
  retention: RetentionOptions = { keepLast: 3 },
  /** More files for the directory (relative paths): exports such as a PEFT adapter. */
  extra: ReadonlyMap<string, Uint8Array | string> = new Map(),
): string {
  const step = ckpt.state.step;
  if (!Number.isInteger(step) || step < 0)
    throw new Error(`checkpoint step must be an integer ≥ 0, got ${step}`);
  if (!Number.isInteger(retention.keepLast) || retention.keepLast < 1)
    throw new Error(`checkpoints to keep must be at least 1, got ${retention.keepLast}`);
  const name = `ckpt-${step}`;
  const dir = path.join(runDir, name);
  mkdirSync(runDir, { recursive: true });
  const meta = { format: "moec-checkpoint", step: String(step) };
  writeDirAtomic(
    dir,
    new Map<string, Uint8Array | string>([
      [MODEL_FILE, writeSafetensors(toWrite(ckpt.params), meta)],
      [OPTIMIZER_FILE, writeSafetensors(toWrite(ckpt.optimizer), meta)],
      [STATE_FILE, JSON.stringify(ckpt.state, null, 2) + "\n"],
      ...extra,
    ]),
  );
  writeFileAtomic(path.join(runDir, LATEST_FILE), name + "\n");
  pruneCheckpoints(runDir, retention, step);
  return dir;
}

/** Checkpoint directories under `runDir`, newest (highest step) first. */
export function listCheckpoints(runDir: string): { dir: string; step: number }[] {
  let names: string[];
  try {
    names = readdirSync(runDir);
  } catch {
    return [];
  }
  return names
    .flatMap((n) => {
      const m = CKPT.exec(n);
      return m ? [{ dir: path.join(runDir, n), step: Number(m[1]) }] : [];
    })
    .sort((a, b) => b.step - a.step);
}

/** The checkpoint `latest` points at, if the pointer exists. */
export function readLatestPointer(runDir: string): string | undefined {
  try {
    const name = readFileSync(path.join(runDir, LATEST_FILE), "utf8").trim();
    return CKPT.test(name) ? path.join(runDir, name) : undefined;
  } catch {
    return undefined;
  }
}

function pruneCheckpoints(runDir: string, retention: RetentionOptions, current: number): void {
  const all = listCheckpoints(runDir);
  const keep = new Set(all.slice(0, retention.keepLast).map((c) => c.dir));
  keep.add(path.join(runDir, `ckpt-${current}`));
  if (retention.keepBest) {
    let best: { dir: string; loss: number } | undefined;
    for (const c of all) {
      const loss = readEvalLoss(c.dir);
      if (loss !== undefined && (!best || loss < best.loss)) best = { dir: c.dir, loss };
    }
    if (best) keep.add(best.dir);
  }
  for (const c of all) if (!keep.has(c.dir)) rmSync(c.dir, { recursive: true, force: true });
}

function readEvalLoss(dir: string): number | undefined {
  try {
    const s = JSON.parse(readFileSync(path.join(dir, STATE_FILE), "utf8")) as Partial<TrainerState>;
    return typeof s.evalLoss === "number" && Number.isFinite(s.evalLoss) ? s.evalLoss : undefined;
  } catch {
    return undefined;
  }
}

/** A checkpoint that does not read back whole: the message is one line naming the problem. */
export class CheckpointError extends Error {
  override readonly name = "CheckpointError";
}

/** Reads a checkpoint directory whole, checking every file; throws a CheckpointError. */
export function readCheckpoint(dir: string): Checkpoint {
  const fail = (problem: string) => new CheckpointError(`${dir}: ${problem}`);
  for (const f of [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]) {
    try {
      if (!statSync(path.join(dir, f)).isFile()) throw fail(`${f} is not a file`);
    } catch (e) {
      throw e instanceof CheckpointError ? e : fail(`missing ${f}`);
    }
  }
  let state: TrainerState;
  try {
    state = JSON.parse(readFileSync(path.join(dir, STATE_FILE), "utf8")) as TrainerState;
  } catch (e) {
    throw fail(
      `${STATE_FILE} does not parse: ${(e instanceof Error ? e.message : String(e)).split("\n")[0]}`,
    );
  }
  const m = CKPT.exec(path.basename(dir));
  if (
    typeof state !== "object" ||
    state === null ||
    !Number.isInteger(state.step) ||
    !Number.isInteger(state.data?.epoch) ||
    !Number.isInteger(state.data?.position)
  ) {
    throw fail(`${STATE_FILE} lacks step or data cursor`);
  }
  if (m && Number(m[1]) !== state.step) throw fail(`${STATE_FILE} says step ${state.step}`);
  const read = (file: string): Map<string, StateTensor> => {
    const out = new Map<string, StateTensor>();
    try {
      const st = readSafetensorsFile(path.join(dir, file));
      for (const name of st.names()) {
        const t = st.read(name);
        if (t.data instanceof Uint8Array) throw fail(`${file}: tensor ${name} is ${t.dtype}`);
        out.set(name, { shape: t.shape, data: t.data });
      }
    } catch (e) {
      if (e instanceof WeightsError)
        throw fail(e.message.split("\n")[0]!.replace(`${path.join(dir, file)}: `, `${file}: `));
      throw e;
    }
    return out;
  };
  return { dir, state, params: read(MODEL_FILE), optimizer: read(OPTIMIZER_FILE) };
}

/**
 * The newest checkpoint under `runDir` that reads back whole, or undefined when there is none.
 * Each one skipped (torn, corrupt) is reported through `warn` in one line.
 */
export function findResumeCheckpoint(
  runDir: string,
  warn: (line: string) => void = (line) => process.stderr.write(`warning: ${line}\n`),
): Checkpoint | undefined {
  removeStaleTemporaries(runDir, warn);
  for (const c of listCheckpoints(runDir)) {
    try {
      return readCheckpoint(c.dir);
    } catch (e) {
      if (!(e instanceof CheckpointError)) throw e;
      warn(`skipping checkpoint ${e.message}`);
    }
  }
  return undefined;
}

/** What a run directory's saves write through temporary siblings (runtime/atomic-write.ts). */
const SAVED = /^(?:ckpt-\d+|latest|metrics\.jsonl)$/;

/**
 * Removes what a save killed midway left behind (a half-built checkpoint directory), when the
 * process that was writing it is gone; one warning line each.
 */
function removeStaleTemporaries(runDir: string, warn: (line: string) => void): void {
  let names: string[];
  try {
    names = readdirSync(runDir);
  } catch {
    return;
  }
  for (const name of names) {
    const temp = parseTempSibling(name);
    if (!temp || !SAVED.test(temp.target) || processAlive(temp.pid)) continue;
    rmSync(path.join(runDir, name), { recursive: true, force: true });
    warn(`removed ${name}, left by an interrupted save`);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
