/**
 * Compiled bundles (`moec compile -o DIR`): `manifest.json` (model, sizes, inputs, outputs,
 * parameters, kernels), `ir.json` (the lowered graph), `plan.json` (buffers and dispatches)
 * and one `.wgsl` file per kernel under `kernels/`. Written atomically as a whole directory.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { type CompiledProgram, compileGraph } from "../compiler/kernels/compile-graph.js";
import type { IrGraph } from "../compiler/ir/graph.js";
import { WEBGPU_DEFAULT_LIMITS } from "../compiler/kernels/plan-buffers.js";
import { DEFAULT_TUNING } from "../compiler/kernels/wgsl/variants.js";
import type { LoweredInput, LoweredModel } from "../compiler/lower/lower-model.js";
import { type FileData, writeDirAtomic } from "../runtime/atomic-write.js";
import { CliError } from "./report.js";

export const BUNDLE_FORMAT = "moec-bundle";
export const BUNDLE_VERSION = 1;

/** The manifest's JSON shape (documented in docs/bundle.md). */
export interface BundleManifest {
  format: typeof BUNDLE_FORMAT;
  version: number;
  model: string;
  source: string;
  dims: Record<string, number>;
  inputs: LoweredInput[];
  outputs: { name: string; dtype: string; shape: number[] }[];
  parameters: { name: string; shape: number[]; dtype: string; trainable: boolean; init: string }[];
  kernels: { name: string; file: string }[];
  /** Bytes of device memory the plan needs at peak, and the sum of all tensors' sizes. */
  memory?: { peakBytes: number; tensorBytes: number };
}

/** The parts of a compiled program the executor runs. */
export type RunnableProgram = Pick<
  CompiledProgram,
  "kernels" | "buffers" | "inputs" | "params" | "outputs" | "memory"
>;

/** plan.json: the runnable program without the kernels' WGSL text (that is in kernels/). */
export interface StoredPlan {
  kernels: Omit<CompiledProgram["kernels"][number], "wgsl">[];
  buffers: CompiledProgram["buffers"];
  inputs: CompiledProgram["inputs"];
  params: CompiledProgram["params"];
  outputs: CompiledProgram["outputs"];
  memory: CompiledProgram["memory"];
}

/** Kernels and plan from the code generator, in a serialisable form. */
export interface BundleCode {
  kernels: { name: string; wgsl: string }[];
  plan: StoredPlan;
  memory?: { peakBytes: number; tensorBytes: number };
}

/**
 * Fuse → plan → emit for a bundle: against WebGPU's default limits and the default kernel
 * variants, so the bundle runs on any adapter.
 */
export function compileForBundle(graph: IrGraph): BundleCode {
  const program = compileGraph(graph, WEBGPU_DEFAULT_LIMITS, DEFAULT_TUNING);
  const { kernels, buffers, inputs, params, outputs, memory } = program;
  return {
    kernels: kernels.map((k) => ({ name: k.name, wgsl: k.wgsl })),
    plan: {
      kernels: kernels.map(({ wgsl: _wgsl, ...meta }) => meta),
      buffers,
      inputs,
      params,
      outputs,
      memory,
    },
    memory: { peakBytes: memory.peakBytes, tensorBytes: memory.totalBytes },
  };
}

/** Rebuilds the runnable program from a bundle's plan and kernel texts. */
export function programFromBundle(code: BundleCode): RunnableProgram {
  const { plan, kernels } = code;
  if (plan.kernels.length !== kernels.length) {
    throw new CliError(
      `the bundle's plan lists ${plan.kernels.length} kernels, but it has ${kernels.length} kernel files`,
    );
  }
  return { ...plan, kernels: plan.kernels.map((k, i) => ({ ...k, wgsl: kernels[i]!.wgsl })) };
}

export function manifestFor(
  lowered: LoweredModel,
  source: string,
  code: BundleCode | undefined,
): BundleManifest {
  const g = lowered.graph;
  return {
    format: BUNDLE_FORMAT,
    version: BUNDLE_VERSION,
    model: lowered.name,
    source,
    dims: Object.fromEntries(lowered.dims),
    inputs: lowered.inputs,
    outputs: g.outputs.map((o) => ({
      name: o.name,
      dtype: g.nodes[o.node]!.dtype,
      shape: g.nodes[o.node]!.shape,
    })),
    parameters: g.nodes.flatMap((n) =>
      n.op === "param"
        ? [{ name: n.name, shape: n.shape, dtype: n.dtype, trainable: n.trainable, init: n.init }]
        : [],
    ),
    kernels: (code?.kernels ?? []).map((k, i) => ({ name: k.name, file: kernelFile(i, k.name) })),
    ...(code?.memory ? { memory: code.memory } : {}),
  };
}

function kernelFile(index: number, name: string): string {
  return `kernels/${String(index).padStart(3, "0")}-${name.replace(/[^A-Za-z0-9_.-]/g, "_")}.wgsl`;
}

export function writeBundle(
  dir: string,
  lowered: LoweredModel,
  source: string,
  code: BundleCode | undefined,
): void {
  const manifest = manifestFor(lowered, source, code);
  const files = new Map<string, FileData>([
    ["manifest.json", JSON.stringify(manifest, null, 2) + "\n"],
    // Nodes and outputs only: origins name this machine's source paths, which a bundle outlives.
    [
      "ir.json",
      JSON.stringify({ nodes: lowered.graph.nodes, outputs: lowered.graph.outputs }) + "\n",
    ],
  ]);
  if (code) {
    files.set("plan.json", JSON.stringify(code.plan, null, 2) + "\n");
    code.kernels.forEach((k, i) => files.set(kernelFile(i, k.name), k.wgsl));
  }
  writeDirAtomic(dir, files, {
    // Never replace a directory that is not a bundle (a mistyped -o).
    mayReplace: (existing) => fs.existsSync(path.join(existing, "manifest.json")),
  });
}

/** A bundle read back: enough to run it. */
export interface LoadedBundle {
  name: string;
  graph: IrGraph;
  inputs: LoweredInput[];
  dims: Map<string, number>;
  manifest: BundleManifest;
  code?: BundleCode;
}

export function readBundle(dir: string): LoadedBundle {
  const read = (file: string): string => {
    try {
      return fs.readFileSync(path.join(dir, file), "utf8");
    } catch {
      throw new CliError(`${dir} is not a moec bundle: ${file} is missing`);
    }
  };
  const parse = <T>(file: string): T => {
    try {
      return JSON.parse(read(file)) as T;
    } catch (err) {
      if (err instanceof CliError) throw err;
      throw new CliError(`${path.join(dir, file)}: not valid JSON`);
    }
  };
  const manifest = parse<BundleManifest>("manifest.json");
  if (manifest.format !== BUNDLE_FORMAT)
    throw new CliError(`${dir}/manifest.json: not a moec bundle manifest`);
  if (manifest.version !== BUNDLE_VERSION) {
    throw new CliError(
      `${dir}: bundle format version ${manifest.version}; this moec reads version ${BUNDLE_VERSION}`,
    );
  }
  const graph = parse<IrGraph>("ir.json");
  const bundle: LoadedBundle = {
    name: manifest.model,
    graph,
    inputs: manifest.inputs,
    dims: new Map(Object.entries(manifest.dims)),
    manifest,
  };
  if (fs.existsSync(path.join(dir, "plan.json"))) {
    bundle.code = {
      plan: parse<StoredPlan>("plan.json"),
      kernels: manifest.kernels.map((k) => ({ name: k.name, wgsl: read(k.file) })),
      ...(manifest.memory ? { memory: manifest.memory } : {}),
    };
  }
  return bundle;
}
