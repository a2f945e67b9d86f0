/**
 * Training data: a safetensors file with one tensor per input port of the train program,
 * named after the port, examples along the first axis (what `moec data gen` writes). The file
 * is checked against the ports before anything runs; each problem is a one-line DataError
 * naming the tensor. Batches are drawn without replacement in a seeded order: epoch e visits
 * the examples in a permutation that depends only on (seed, e), and a batch that would run
 * past the end of an epoch is dropped (PyTorch's drop_last: the program's shapes are static).
 * The cursor (epoch, position) is all it takes to resume the same order.
 */
import type { IrDType } from "../../compiler/ir/graph.js";
import { Rng, hash32 } from "../data/synthetic.js";
import { ALLOW_NONFINITE_HINT, countNonFinite, describeNonFinite } from "../finite-check.js";
import { type SafetensorsDtype, WeightsError, readSafetensorsFile } from "../safetensors.js";

/** An input port: its name, dtype and shape with the batch first. */
export interface DataPort {
  name: string;
  dtype: IrDType;
  shape: readonly number[];
}

/** Where the next batch starts: `position` examples into epoch `epoch`'s order. */
export interface DataCursor {
  epoch: number;
  position: number;
}

/** A problem with the data file the user can fix: one line, naming the tensor. */
export class DataError extends Error {
  override readonly name = "DataError";
}

/** One batch: a tensor per port, and the cursor after it. */
export interface Batch {
  inputs: Map<string, Float32Array | Int32Array>;
  cursor: DataCursor;
}

/** Stored dtypes that each port dtype reads (floats widen to f32, I64 narrows checked). */
const ACCEPTS: Record<IrDType, readonly SafetensorsDtype[]> = {
  f32: ["F32", "F16", "BF16"],
  i32: ["I32", "I64"],
};

const showShape = (s: readonly (number | string)[]) => `[${s.join(", ")}]`;

/** The examples of a data file, checked against the ports, batched in a seeded order. */
export class TrainData {
  readonly examples: number;
  readonly batchSize: number;
  /** Tensors of the file that no input reads. */
  readonly unused: readonly string[];
  readonly #rows = new Map<string, { data: Float32Array | Int32Array; rowSize: number }>();
  readonly #ports: readonly DataPort[];
  readonly #seed: number;
  readonly #shuffle: boolean;
  #order: { epoch: number; perm: Int32Array } | undefined;

  private constructor(
    ports: readonly DataPort[],
    tensors: Map<string, Float32Array | Int32Array>,
    examples: number,
    options: { seed: number; shuffle: boolean },
    unused: readonly string[],
  ) {
    this.#ports = ports;
    this.unused = unused;
    this.batchSize = ports[0]?.shape[0] ?? 0;
    this.examples = examples;
    this.#seed = options.seed >>> 0;
    this.#shuffle = options.shuffle;
    for (const p of ports) {
      const rowSize = p.shape.slice(1).reduce((a, b) => a * b, 1);
      this.#rows.set(p.name, { data: tensors.get(p.name)!, rowSize });
    }
  }

  /**
   * Opens `file` for `ports` (the program's data inputs, batch first; all with one batch
   * size). Throws a DataError for a missing port, an unknown tensor, a wrong dtype, a wrong
   * trailing shape, different example counts, or fewer examples than one batch.
   */
  static open(
    file: string,
    ports: readonly DataPort[],
    options: { seed: number; shuffle?: boolean; allowNonFinite?: boolean },
  ): TrainData {
    let st;
    try {
      st = readSafetensorsFile(file);
    } catch (e) {
      throw e instanceof WeightsError ? new DataError(e.message.split("\n")[0]!) : e;
    }
    const batch = ports[0]?.shape[0];
    if (batch === undefined) throw new DataError(`${file}: the program has no data inputs`);
    for (const p of ports) {
      if (p.shape.length === 0 || p.shape[0] !== batch) {
        throw new Error(`internal: input ${p.name} ${showShape(p.shape)} has no batch of ${batch}`);
      }
    }
    // Tensors no input takes are left unread (one data set serves several programs: a dense
    // arm ignores the task ids a task-routed arm reads); `unused` lists them.
    const portNames = new Set(ports.map((p) => p.name));
    const unused = st.names().filter((name) => !portNames.has(name));
    let examples: { name: string; n: number } | undefined;
    for (const p of ports) {
      const want = showShape(["N", ...p.shape.slice(1)]);
      if (!st.has(p.name))
        throw new DataError(`${file}: no tensor for input ${p.name} (${p.dtype} ${want})`);
      const t = st.info(p.name);
      if (!ACCEPTS[p.dtype].includes(t.dtype)) {
        throw new DataError(
          `${file}: tensor ${p.name} is ${t.dtype}, its input is ${p.dtype} (store ${ACCEPTS[p.dtype].join(" or ")})`,
        );
      }
      const trailing = t.shape.slice(1);
      if (t.shape.length !== p.shape.length || trailing.some((d, i) => d !== p.shape[i + 1])) {
        throw new DataError(
          `${file}: tensor ${p.name} has shape ${showShape(t.shape)}, its input needs ${want}`,
        );
      }
      const n = t.shape[0]!;
      if (examples && n !== examples.n) {
        throw new DataError(
          `${file}: tensor ${p.name} has ${n} examples, ${examples.name} has ${examples.n}`,
        );
      }
      examples ??= { name: p.name, n };
    }
    if (examples!.n < batch) {
      throw new DataError(`${file}: ${examples!.n} examples are fewer than one batch of ${batch}`);
    }
    const tensors = new Map<string, Float32Array | Int32Array>();
    for (const p of ports) {
      let data;
      try {
        data = st.read(p.name).data;
      } catch (e) {
        throw e instanceof WeightsError ? new DataError(e.message.split("\n")[0]!) : e;
      }
      const bad = options.allowNonFinite ? undefined : countNonFinite(data);
      if (bad)
        throw new DataError(
          `${file}: ${describeNonFinite(p.name, bad, data.length)}; ${ALLOW_NONFINITE_HINT}`,
        );
      tensors.set(p.name, data as Float32Array | Int32Array);
    }
    return new TrainData(
      ports,
      tensors,
      examples!.n,
      { seed: options.seed, shuffle: options.shuffle ?? true },
      unused,
    );
  }

  /** Batches per epoch (the remainder is dropped). */
  get batchesPerEpoch(): number {
    return Math.floor(this.examples / this.batchSize);
  }

  /** The example indices of epoch `epoch`, in visiting order. */
  order(epoch: number): Int32Array {
    if (this.#order?.epoch === epoch) return this.#order.perm;
    let perm: Int32Array;
    if (!this.#shuffle) perm = Int32Array.from({ length: this.examples }, (_, i) => i);
    else {
      // Each epoch's order depends on (seed, epoch) alone, so a resumed run needs no history.
      const rng = new Rng(hash32(this.#seed ^ hash32(Math.imul(epoch + 1, 0x9e3779b1) >>> 0)));
      perm = Int32Array.from(rng.permutation(this.examples));
    }
    this.#order = { epoch, perm };
    return perm;
  }

  /** The batch at `cursor` and the cursor after it. */
  batch(cursor: DataCursor): Batch {
    checkCursor(cursor);
    let { epoch, position } = cursor;
    if (position + this.batchSize > this.examples) {
      epoch++;
      position = 0;
    }
    const ids = this.order(epoch).subarray(position, position + this.batchSize);
    const inputs = new Map<string, Float32Array | Int32Array>();
    for (const p of this.#ports) {
      const { data, rowSize } = this.#rows.get(p.name)!;
      const out =
        data instanceof Int32Array
          ? new Int32Array(ids.length * rowSize)
          : new Float32Array(ids.length * rowSize);
      ids.forEach((id, r) => out.set(data.subarray(id * rowSize, (id + 1) * rowSize), r * rowSize));
      inputs.set(p.name, out);
    }
    return { inputs, cursor: { epoch, position: position + this.batchSize } };
  }
}

function checkCursor(c: DataCursor): void {
  if (
    !Number.isInteger(c.epoch) ||
    c.epoch < 0 ||
    !Number.isInteger(c.position) ||
    c.position < 0
  ) {
    throw new DataError(`invalid data cursor (epoch ${c.epoch}, position ${c.position})`);
  }
}
