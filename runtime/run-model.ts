/**
 * Running a lowered model: weights (from safetensors or seeded), inputs (from safetensors,
 * seeded random, or a fixed task), then a back end: the WebGPU executor or the float64
 * reference interpreter. Shared by `moec run` and the tests.
 */
import type { IrGraph } from "../compiler/ir/graph.js";
import type { LoweredInput } from "../compiler/lower/lower-model.js";
import { type HostTensor, interpret } from "./reference/interpret.js";
import { ALLOW_NONFINITE_HINT, countNonFinite, describeNonFinite } from "./finite-check.js";
import { type SafetensorsFile, WeightsError } from "./safetensors.js";
import {
  type InputSpec,
  type LoadOptions,
  type ParamSpec,
  type TypedTensor,
  loadWeights,
  randomInputs,
} from "./weights.js";

/** The parameters a graph needs, as loading and initialisation see them. */
export function paramSpecs(graph: IrGraph): ParamSpec[] {
  return graph.nodes.flatMap((n) =>
    n.op === "param" ? [{ path: n.name, shape: n.shape, dtype: n.dtype, init: n.init }] : [],
  );
}

/** Weights for `graph`: read from `file` (checked all at once by name), or seeded. */
export function prepareWeights(
  graph: IrGraph,
  file: SafetensorsFile | undefined,
  seed: number,
  options: LoadOptions = {},
): Map<string, TypedTensor> {
  return loadWeights(paramSpecs(graph), file, { ...options, seed });
}

/**
 * Inputs for a model: each from `file` when given (shape and dtype checked), else seeded
 * random; `task` fixes every task-id input to one task.
 */
export function prepareInputs(
  inputs: readonly LoweredInput[],
  file: SafetensorsFile | undefined,
  seed: number,
  task: string | undefined,
  options: { allowNonFinite?: boolean } = {},
): Map<string, TypedTensor> {
  const specs: InputSpec[] = inputs.map((i) => {
    const spec: InputSpec = { name: i.name, dtype: i.tasks ? "task" : i.dtype, shape: i.shape };
    if (i.max !== undefined) spec.max = i.max;
    return spec;
  });
  const out = randomInputs(specs, seed);
  if (task !== undefined) {
    const taskInputs = inputs.filter((i) => i.tasks !== undefined);
    if (taskInputs.length === 0)
      throw new WeightsError("mismatch", "--task", "--task: this model has no task input");
    for (const i of taskInputs) {
      const id = i.tasks!.indexOf(task);
      if (id < 0) {
        throw new WeightsError(
          "mismatch",
          "--task",
          `unknown task \`${task}\`; the tasks are ${i.tasks!.join(", ")}`,
        );
      }
      out.set(i.name, {
        dtype: "i32",
        shape: i.shape,
        data: new Int32Array(numel(i.shape)).fill(id),
      });
    }
  }
  if (!file) return out;
  const problems: string[] = [];
  const nonFinite: string[] = [];
  for (const i of inputs) {
    if (!file.has(i.name)) {
      if (task === undefined || i.tasks === undefined)
        problems.push(`missing ${i.name} [${i.shape.join(", ")}]`);
      continue;
    }
    const t = file.read(i.name);
    if (t.shape.join(",") !== i.shape.join(",")) {
      problems.push(
        `${i.name} has shape [${t.shape.join(", ")}], expected [${i.shape.join(", ")}]`,
      );
      continue;
    }
    const isFloat = t.data instanceof Float32Array;
    if (isFloat !== (i.dtype === "f32")) {
      problems.push(
        `${i.name} is ${t.dtype}, expected ${i.dtype === "f32" ? "a float" : "an integer"} tensor`,
      );
      continue;
    }
    if (i.max !== undefined && !isFloat) {
      // Task ids may be -1, "no task" (docs/adapters.md): the compiled model handles it.
      const min = i.tasks !== undefined ? -1 : 0;
      const bad = (t.data as Int32Array).find((v) => v < min || v >= i.max!);
      if (bad !== undefined) problems.push(`${i.name} holds ${bad}, outside ${min}..${i.max - 1}`);
    }
    const bad = options.allowNonFinite ? undefined : countNonFinite(t.data);
    if (bad) nonFinite.push(describeNonFinite(i.name, bad, t.data.length));
    out.set(i.name, { dtype: i.dtype, shape: t.shape, data: t.data });
  }
  if (problems.length === 0 && nonFinite.length > 0) {
    throw new WeightsError(
      "bad-entry",
      file.fileName,
      `${file.fileName}: ${nonFinite.join("; ")}; ${ALLOW_NONFINITE_HINT}`,
      nonFinite,
    );
  }
  const unexpected = file.names().filter((n) => !inputs.some((i) => i.name === n));
  for (const n of unexpected) problems.push(`unexpected ${n}`);
  if (problems.length > 0) {
    throw new WeightsError(
      "mismatch",
      file.fileName,
      `${file.fileName}: ${problems.length} problem${problems.length === 1 ? "" : "s"}: ${problems.join("; ")}`,
      problems,
    );
  }
  return out;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function toHost(t: TypedTensor): HostTensor {
  return { shape: [...t.shape], data: Float64Array.from(t.data as ArrayLike<number>) };
}

/** Runs on the CPU reference interpreter (float64); outputs are rounded to f32 like the GPU's. */
export function runReference(
  graph: IrGraph,
  weights: ReadonlyMap<string, TypedTensor>,
  inputs: ReadonlyMap<string, TypedTensor>,
): Map<string, TypedTensor> {
  const leaves = new Map<string, HostTensor>();
  for (const [k, v] of weights) leaves.set(k, toHost(v));
  for (const [k, v] of inputs) leaves.set(k, toHost(v));
  const { outputs } = interpret(graph, leaves);
  const out = new Map<string, TypedTensor>();
  for (const o of graph.outputs) {
    const t = outputs.get(o.name)!;
    const node = graph.nodes[o.node]!;
    out.set(o.name, {
      dtype: node.dtype,
      shape: t.shape,
      data: node.dtype === "i32" ? Int32Array.from(t.data) : Float32Array.from(t.data),
    });
  }
  return out;
}

/** Summary numbers of an output, to compare runs at a glance (`--json`). */
export function checksum(t: TypedTensor): {
  sum: number;
  mean: number;
  absMax: number;
  l2: number;
} {
  let sum = 0;
  let absMax = 0;
  let sq = 0;
  const data = t.data as ArrayLike<number>;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    sum += v;
    sq += v * v;
    absMax = Math.max(absMax, Math.abs(v));
  }
  const n = Math.max(1, t.data.length);
  return { sum, mean: sum / n, absMax, l2: Math.sqrt(sq) };
}
