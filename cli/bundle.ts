/**
 * Compiled bundles (`moec compile -o DIR`): `manifest.json` (model, sizes, inputs, outputs,
 * parameters, kernels, and the sha256 of every other file), `ir.json` (the lowered graph),
 * `plan.json` (buffers and dispatches) and one `.wgsl` file per kernel under `kernels/`.
 * Written as a versioned directory (`writeDirVersioned`): `DIR` names a whole bundle at every
 * moment, also while a compile replaces it. Read back only after every file matches its hash
 * and the plan's launches fit its buffers, so a damaged bundle is a one-line error, never a
 * run with wrong output.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { type CompiledProgram, compileGraph } from "../compiler/kernels/compile-graph.js";
import type { IrGraph } from "../compiler/ir/graph.js";
import { WEBGPU_DEFAULT_LIMITS } from "../compiler/kernels/plan-buffers.js";
import { DEFAULT_TUNING } from "../compiler/kernels/wgsl/variants.js";
import type { LoweredInput, LoweredModel } from "../compiler/lower/lower-model.js";
import { resolveVersionedDir, writeDirAtomic, writeDirVersioned } from "../runtime/atomic-write.js";
import { CliError, displayPath } from "./report.js";

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
  /**
   * Every other file of the bundle → the sha256 (hex) of its bytes, as compiled. Bundles from
   * before it was added have none and are read unchecked.
   */
  files?: Record<string, string>;
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
  const files = new Map<string, string>([
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
  const manifest = manifestFor(lowered, source, code);
  manifest.files = Object.fromEntries([...files].map(([f, text]) => [f, sha256(text)]));
  files.set("manifest.json", JSON.stringify(manifest, null, 2) + "\n");
  // Windows makes symlinks a privilege: there a bundle is replaced whole (two renames).
  const write = process.platform === "win32" ? writeDirAtomic : writeDirVersioned;
  write(dir, files, {
    // Never replace a directory that is not a bundle (a mistyped -o).
    mayReplace: (existing) => fs.existsSync(path.join(existing, "manifest.json")),
  });
}

function sha256(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
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

/**
 * Reads a bundle and checks it: each file against the manifest's hash, the plan against
 * itself (launches inside their buffers). Anything wrong is a CliError naming the file.
 */
export function readBundle(dir: string): LoadedBundle {
  // One version throughout, even if a compile swaps in another meanwhile.
  const base = resolveVersionedDir(dir);
  const shown = (file: string) => displayPath(path.join(dir, file));
  const read = (file: string): Buffer => {
    try {
      return fs.readFileSync(path.join(base, file));
    } catch {
      throw new CliError(`${displayPath(dir)} is not a moec bundle: ${file} is missing`);
    }
  };
  const parse = <T>(file: string, bytes: Buffer = read(file)): T => {
    try {
      return JSON.parse(bytes.toString("utf8")) as T;
    } catch {
      throw new CliError(`${shown(file)}: not valid JSON`);
    }
  };
  const manifest = parse<BundleManifest>("manifest.json");
  if (typeof manifest !== "object" || manifest === null || manifest.format !== BUNDLE_FORMAT)
    throw new CliError(`${shown("manifest.json")}: not a moec bundle manifest`);
  if (manifest.version !== BUNDLE_VERSION) {
    throw new CliError(
      `${displayPath(dir)}: bundle format version ${manifest.version}; this moec reads version ${BUNDLE_VERSION}`,
    );
  }
  const hashes = manifest.files;
  if (hashes !== undefined && (typeof hashes !== "object" || hashes === null)) {
    throw new CliError(`${shown("manifest.json")}: \`files\` is not a map of hashes`);
  }
  /** A file's bytes, once they match the manifest's hash (when it has hashes). */
  const readChecked = (file: string): Buffer => {
    const bytes = read(file);
    if (hashes) {
      const want = Object.hasOwn(hashes, file) ? hashes[file] : undefined;
      if (want === undefined)
        throw new CliError(`${shown(file)}: not listed in the bundle's manifest; recompile it`);
      if (sha256(bytes) !== want) {
        throw new CliError(
          `${shown(file)}: does not match the bundle's manifest (damaged or edited since it was compiled); recompile it`,
        );
      }
    }
    return bytes;
  };
  if (!Array.isArray(manifest.kernels) || !Array.isArray(manifest.inputs))
    throw new CliError(`${shown("manifest.json")}: not a moec bundle manifest`);
  const graph = parse<IrGraph>("ir.json", readChecked("ir.json"));
  const bundle: LoadedBundle = {
    name: manifest.model,
    graph,
    inputs: manifest.inputs,
    dims: new Map(Object.entries(manifest.dims ?? {})),
    manifest,
  };
  if (fs.existsSync(path.join(base, "plan.json"))) {
    const plan = parse<StoredPlan>("plan.json", readChecked("plan.json"));
    const kernels = manifest.kernels.map((k) => {
      if (typeof k?.file !== "string" || typeof k.name !== "string")
        throw new CliError(`${shown("manifest.json")}: a kernel without a name or file`);
      return { name: k.name, wgsl: readChecked(k.file).toString("utf8") };
    });
    checkPlan(plan, kernels.length, shown("plan.json"));
    bundle.code = { plan, kernels, ...(manifest.memory ? { memory: manifest.memory } : {}) };
  } else if (hashes && Object.hasOwn(hashes, "plan.json")) {
    throw new CliError(`${displayPath(dir)} is not a moec bundle: plan.json is missing`);
  }
  return bundle;
}

const positiveInt = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) > 0;
const naturalInt = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;

/**
 * The plan is what the device is told to do: a launch of zero workgroups or a binding past its
 * buffer's end runs "successfully" with wrong output, so each is refused here. Also catches a
 * plan written by hand or by another tool, which no hash vouches for.
 */
function checkPlan(plan: StoredPlan, kernelFiles: number, file: string): void {
  function fail(what: string): never {
    throw new CliError(`${file}: ${what}; recompile the bundle`);
  }
  if (typeof plan !== "object" || plan === null) fail("not a plan");
  for (const key of ["kernels", "buffers", "inputs", "params", "outputs"] as const) {
    if (!Array.isArray(plan[key])) fail(`\`${key}\` is missing`);
  }
  if (plan.kernels.length !== kernelFiles) {
    fail(`lists ${plan.kernels.length} kernels, but the bundle has ${kernelFiles} kernel files`);
  }
  const bytes = plan.buffers.map((b, i) => {
    if (typeof b !== "object" || b === null || b.id !== i || !positiveInt(b.bytes))
      fail(`buffer ${i} is malformed`);
    return b.bytes;
  });
  const inBuffer = (where: string, buffer: unknown, offset: unknown, size: number): void => {
    if (!naturalInt(buffer) || buffer >= bytes.length) fail(`${where}: no buffer ${buffer}`);
    if (!naturalInt(offset) || offset + size > bytes[buffer]!) {
      fail(
        `${where}: bytes ${String(offset)}..${Number(offset) + size} lie outside buffer ${buffer} (${bytes[buffer]} bytes)`,
      );
    }
  };
  plan.kernels.forEach((k, i) => {
    const at = `kernel ${i}${typeof k?.name === "string" ? ` (${k.name})` : ""}`;
    if (typeof k !== "object" || k === null || typeof k.entryPoint !== "string")
      fail(`${at} is malformed`);
    if (!Array.isArray(k.grid) || k.grid.length !== 3 || !k.grid.every(positiveInt))
      fail(`${at}: dispatch grid ${JSON.stringify(k.grid)} is not three positive counts`);
    if (
      !Array.isArray(k.workgroupSize) ||
      k.workgroupSize.length !== 3 ||
      !k.workgroupSize.every(positiveInt)
    )
      fail(`${at}: workgroup size ${JSON.stringify(k.workgroupSize)} is not three positive counts`);
    if (!Array.isArray(k.bindings)) fail(`${at}: \`bindings\` is missing`);
    for (const b of k.bindings) {
      const where = `${at} binding ${String(b?.binding)}`;
      if (!positiveInt(b?.byteSize) || b.byteSize % 4 !== 0)
        fail(`${where}: byte size ${String(b?.byteSize)} is not a positive multiple of 4`);
      // WebGPU's minStorageBufferOffsetAlignment (256 by default, the bundle's target).
      if (!naturalInt(b.byteOffset) || b.byteOffset % 256 !== 0)
        fail(`${where}: byte offset ${String(b.byteOffset)} is not a multiple of 256`);
      inBuffer(where, b.buffer, b.byteOffset, b.byteSize);
    }
  });
  for (const key of ["inputs", "params", "outputs"] as const) {
    for (const t of plan[key]) {
      const where = `${key.replace(/s$/, "")} ${String(t?.name)}`;
      if (!Array.isArray(t?.shape) || !t.shape.every(naturalInt)) fail(`${where}: bad shape`);
      const size = t.shape.reduce((a, b) => a * b, 1) * 4;
      if (!naturalInt(t.byteOffset) || t.byteOffset % 4 !== 0)
        fail(`${where}: byte offset ${String(t.byteOffset)} is not a multiple of 4`);
      inBuffer(where, t.buffer, t.byteOffset, size);
    }
  }
}

/**
 * A failure running a bundle's code (a WGSL compile or pipeline error in a kernel that no hash
 * caught: a bundle edited together with its manifest) is the bundle's fault, not moec's: it is
 * thrown again as a one-line user error. Anything else returns, for the caller to handle.
 */
export function throwIfBundleFault(dir: string, err: unknown): void {
  if (err instanceof Error && err.name === "ShaderError") {
    throw new CliError(`${displayPath(dir)}: ${err.message.split("\n")[0]}; recompile the bundle`);
  }
}
