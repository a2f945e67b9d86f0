// WebGPU device access through Dawn's Node binding (npm package `webgpu`).
//
// This module (with the others under runtime/) is the only place that imports `webgpu`.
// Lifetime rules learned the hard way with dawn.node:
//   * The object returned by `create()` (the "gpu" object, which owns the Dawn instance) must
//     stay reachable while any adapter or device created from it is alive. If it is
//     garbage-collected first, the process segfaults or aborts inside Dawn.
//   * Even after `device.destroy()` Dawn still has callbacks queued (device-lost and friends)
//     that it delivers on a later turn of Node's event loop; collecting the gpu object before
//     they ran crashes too. `GpuContext.close()` therefore destroys the device, waits for
//     `device.lost` and one macrotask, and only then drops its references.
//   * Uncaptured errors are printed by Dawn itself unless the event is default-prevented; we
//     prevent that, record every error on the context and report it on stderr (or to the
//     caller's `onUncapturedError`), so errors are never lost and never printed twice.

import { chmodSync, mkdirSync } from "node:fs";

import { create, globals } from "webgpu";

/** Raised when no usable WebGPU adapter or device can be obtained, or a closed context is used. */
export class DeviceError extends Error {
  override readonly name = "DeviceError";
  readonly code: "no-adapter" | "device-request-failed" | "closed";

  constructor(code: DeviceError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export const NO_ADAPTER_MESSAGE =
  "no WebGPU adapter found: install a Vulkan driver (scripts/install-vulkan.sh installs Mesa's software one)";

/** An error that reached the device without an enclosing error scope. */
export interface RecordedGpuError {
  kind: "validation" | "out-of-memory" | "internal" | "unknown";
  message: string;
}

export interface OpenDeviceOptions {
  /**
   * Extra dawn.node flags passed to `create()`, each `key=value`, e.g. `"backend=vulkan"`,
   * `"adapter=llvmpipe"`, `"enable-dawn-features=dump_shaders"`.
   */
  dawnFlags?: string[];
  powerPreference?: GPUPowerPreference;
  /**
   * `"adapter"` (default) requests every limit at the adapter's maximum, so kernels can use
   * all the storage buffers / workgroup memory the hardware offers; `"default"` keeps the
   * WebGPU default limits (useful to check that generated code stays portable).
   */
  limits?: "adapter" | "default";
  /** Features the device must have; missing ones make openDevice throw a DeviceError. */
  requiredFeatures?: GPUFeatureName[];
  /** Features enabled when the adapter has them (e.g. "shader-f16", "timestamp-query"). */
  optionalFeatures?: GPUFeatureName[];
  /**
   * Called for every uncaptured GPU error (after it was recorded on the context). Defaults to a
   * one-line report on stderr.
   */
  onUncapturedError?: (error: RecordedGpuError) => void;
  label?: string;
}

export interface AdapterInfoSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
}

/** Names of the limits `describeAdapter` (and `moec doctor`) report. */
export const KEY_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
] as const;

export type KeyLimitName = (typeof KEY_LIMITS)[number];

/** A device opened with openDevice(). Call close() when done so the process can exit cleanly. */
export class GpuContext {
  /** The `create()` result; held here so Dawn's instance outlives the adapter and device. */
  #gpu: GPU | null;
  #adapter: GPUAdapter | null;
  #device: GPUDevice | null;
  #closing: Promise<void> | null = null;
  readonly #siblings = new Set<GPUDevice>();

  readonly info: AdapterInfoSummary;
  /** Backend Dawn was asked to use ("vulkan", "metal", "d3d12", ...). */
  readonly backend: string;
  /** True for CPU implementations (lavapipe/llvmpipe, SwiftShader, WARP, ...). */
  readonly isSoftware: boolean;
  /** The device's limits (as granted), as a plain object. */
  readonly limits: Readonly<Record<string, number>>;
  /** The adapter's maximum limits, as a plain object. */
  readonly adapterLimits: Readonly<Record<string, number>>;
  /** Features enabled on the device, sorted. */
  readonly features: readonly string[];
  /** Features the adapter supports, sorted. */
  readonly adapterFeatures: readonly string[];
  /** Every uncaptured error the device raised, oldest first. */
  readonly uncapturedErrors: RecordedGpuError[] = [];
  /** Set once the device is lost (including by close()). */
  lostInfo: { reason: string; message: string } | null = null;

  /** @internal use openDevice() */
  constructor(
    gpu: GPU,
    adapter: GPUAdapter,
    device: GPUDevice,
    backend: string,
    onUncapturedError: (error: RecordedGpuError) => void,
  ) {
    this.#gpu = gpu;
    this.#adapter = adapter;
    this.#device = device;
    this.backend = backend;
    const info = adapter.info;
    this.info = {
      vendor: info.vendor ?? "",
      architecture: info.architecture ?? "",
      device: info.device ?? "",
      description: info.description ?? "",
    };
    this.isSoftware = isSoftwareAdapter(adapter);
    this.limits = Object.freeze(limitsToObject(device.limits));
    this.adapterLimits = Object.freeze(limitsToObject(adapter.limits));
    this.features = Object.freeze([...device.features].sort());
    this.adapterFeatures = Object.freeze([...adapter.features].sort());

    device.addEventListener("uncapturederror", (event) => {
      // Keep Dawn from printing it a second time; we record and report it ourselves.
      event.preventDefault();
      const recorded = toRecordedError(event.error);
      this.uncapturedErrors.push(recorded);
      onUncapturedError(recorded);
    });
    void device.lost.then((lost) => {
      this.lostInfo = { reason: lost.reason, message: lost.message };
      if (lost.reason !== "destroyed") {
        process.stderr.write(
          `moec: WebGPU device lost (${lost.reason}): ${oneLine(lost.message)}\n`,
        );
      }
    });
  }

  get gpu(): GPU {
    return this.#live(this.#gpu);
  }

  get adapter(): GPUAdapter {
    return this.#live(this.#adapter);
  }

  get device(): GPUDevice {
    return this.#live(this.#device);
  }

  get closed(): boolean {
    return this.#closing !== null;
  }

  /**
   * Destroys the device and drops every reference to Dawn objects held here. Callers must
   * drop their own references to the device and objects created from it too. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    const device = this.#device;
    this.#closing = (async () => {
      for (const sibling of [...this.#siblings]) {
        sibling.destroy();
        await sibling.lost;
      }
      if (device) {
        device.destroy();
        await device.lost;
        // Dawn delivers the rest of its destroy callbacks on a later macrotask; the gpu object
        // must still be alive when it does.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      this.#device = null;
      this.#adapter = null;
      this.#gpu = null;
    })();
    return this.#closing;
  }

  /**
   * A second device on the same physical adapter, with this device's limits and features: a
   * software driver compiles a shader at its first dispatch, on the device's one queue thread,
   * so kernels are compiled in parallel by dispatching them on siblings (runtime/compile-kernels.ts).
   * The caller destroys it; close() destroys any left.
   */
  async openSibling(): Promise<GPUDevice> {
    const adapter = await this.gpu.requestAdapter();
    if (!adapter) throw new DeviceError("no-adapter", NO_ADAPTER_MESSAGE);
    const device = await adapter.requestDevice({
      label: "moec sibling",
      requiredFeatures: this.features as GPUFeatureName[],
      requiredLimits: { ...this.limits },
    });
    this.#siblings.add(device);
    void device.lost.then(() => this.#siblings.delete(device));
    return device;
  }

  #live<T>(value: T | null): T {
    if (value === null || this.#closing) {
      throw new DeviceError("closed", "the WebGPU device was closed");
    }
    return value;
  }
}

/**
 * Opens the default WebGPU adapter and a device on it. Throws DeviceError("no-adapter") when
 * there is none (e.g. no Vulkan driver installed).
 */
export async function openDevice(opts: OpenDeviceOptions = {}): Promise<GpuContext> {
  ensureXdgRuntimeDir();
  installGlobals();

  const flags = opts.dawnFlags ?? [];
  const gpu = create(flags);
  // From here on `gpu` must stay referenced until every adapter/device made from it is gone.
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter(
      opts.powerPreference ? { powerPreference: opts.powerPreference } : {},
    );
  } catch (cause) {
    // dawn.node rejects (rather than resolving null) for a bad backend=/adapter= flag.
    throw new DeviceError("no-adapter", `${NO_ADAPTER_MESSAGE} (${oneLine(errorMessage(cause))})`, {
      cause,
    });
  }
  if (!adapter) {
    throw new DeviceError("no-adapter", NO_ADAPTER_MESSAGE);
  }

  const available = new Set<string>(adapter.features);
  const missing = (opts.requiredFeatures ?? []).filter((f) => !available.has(f));
  if (missing.length > 0) {
    throw new DeviceError(
      "device-request-failed",
      `WebGPU adapter lacks required feature(s): ${missing.join(", ")}`,
    );
  }
  const features = new Set<GPUFeatureName>(opts.requiredFeatures ?? []);
  for (const f of opts.optionalFeatures ?? []) {
    if (available.has(f)) features.add(f);
  }

  const descriptor: GPUDeviceDescriptor = {
    label: opts.label ?? "moec",
    requiredFeatures: [...features],
  };
  if ((opts.limits ?? "adapter") === "adapter") {
    descriptor.requiredLimits = limitsToObject(adapter.limits);
  }

  let device: GPUDevice;
  try {
    device = await adapter.requestDevice(descriptor);
  } catch (cause) {
    // Never let the gpu object be collected before the adapter made from it.
    retired.push({ gpu, adapter });
    throw new DeviceError(
      "device-request-failed",
      `could not create a WebGPU device on ${describeInfo(adapter)}: ${oneLine(errorMessage(cause))}`,
      { cause },
    );
  }

  return new GpuContext(
    gpu,
    adapter,
    device,
    backendFor(flags),
    opts.onUncapturedError ?? reportToStderr,
  );
}

/** Dawn objects from failed openDevice() attempts, kept alive on purpose (see top of file). */
const retired: unknown[] = [];

/** Lines of text describing the adapter, for `moec doctor`. */
export function describeAdapter(ctx: GpuContext): string[] {
  const lines = [
    `adapter: ${adapterName(ctx)}`,
    `vendor: ${ctx.info.vendor || "(unknown)"}${ctx.info.architecture ? ` (${ctx.info.architecture})` : ""}`,
    `backend: ${ctx.backend}`,
    `software: ${ctx.isSoftware ? "yes (CPU emulation; expect low performance)" : "no"}`,
    "limits:",
  ];
  for (const name of KEY_LIMITS) {
    lines.push(`  ${name}: ${formatLimit(name, ctx.limits[name])}`);
  }
  lines.push(`features: ${ctx.features.length > 0 ? ctx.features.join(", ") : "(none enabled)"}`);
  lines.push(
    `adapter features: ${ctx.adapterFeatures.length > 0 ? ctx.adapterFeatures.join(", ") : "(none)"}`,
  );
  return lines;
}

/** One line naming the adapter, e.g. "llvmpipe: Mesa 25.0.7 (LLVM 15.0.6) [mesa, vulkan, software]". */
export function adapterSummary(ctx: GpuContext): string {
  const tags = [ctx.info.vendor, ctx.backend, ctx.isSoftware ? "software" : "hardware"].filter(
    (t) => t !== "",
  );
  return `${adapterName(ctx)} [${tags.join(", ")}]`;
}

// ---------------------------------------------------------------------------------------------

function adapterName(ctx: GpuContext): string {
  return ctx.info.description || ctx.info.device || "(unnamed adapter)";
}

function describeInfo(adapter: GPUAdapter): string {
  const info = adapter.info;
  return info.description || info.device || "the WebGPU adapter";
}

const SOFTWARE_NAMES = /llvmpipe|lavapipe|swiftshader|softpipe|microsoft basic render|warp/i;

function isSoftwareAdapter(adapter: GPUAdapter): boolean {
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  // Older spec drafts put isFallbackAdapter on the adapter itself.
  const legacy = (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter;
  if (info.isFallbackAdapter === true || legacy === true) return true;
  if (info.architecture === "software") return true;
  return SOFTWARE_NAMES.test(`${info.device} ${info.description}`);
}

function limitsToObject(limits: GPUSupportedLimits): Record<string, number> {
  const out: Record<string, number> = {};
  // dawn.node exposes limits as enumerable getters on the prototype.
  for (const key in limits) {
    const value = (limits as unknown as Record<string, unknown>)[key];
    if (typeof value === "number") out[key] = value;
  }
  return out;
}

function formatLimit(name: string, value: number | undefined): string {
  if (value === undefined) return "(not reported)";
  if (/Size$/.test(name) && value >= 1024) {
    return `${value} (${formatBytes(value)})`;
  }
  return String(value);
}

function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

function backendFor(flags: readonly string[]): string {
  for (const f of flags) {
    const m = /^backend=(.*)$/.exec(f);
    if (m) return m[1]!.toLowerCase();
  }
  const env = process.env.DAWNNODE_BACKEND;
  if (env) return env.toLowerCase();
  // dawn.node's defaults per platform.
  switch (process.platform) {
    case "win32":
      return "d3d12";
    case "darwin":
      return "metal";
    default:
      return "vulkan";
  }
}

function toRecordedError(error: GPUError): RecordedGpuError {
  // Classify by constructor name so this works whether or not the globals were installed.
  const kinds: Record<string, RecordedGpuError["kind"]> = {
    GPUValidationError: "validation",
    GPUOutOfMemoryError: "out-of-memory",
    GPUInternalError: "internal",
  };
  return {
    kind: kinds[error.constructor?.name ?? ""] ?? "unknown",
    message: error.message,
  };
}

function reportToStderr(error: RecordedGpuError): void {
  process.stderr.write(`moec: uncaptured WebGPU ${error.kind} error: ${oneLine(error.message)}\n`);
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, " ").trim();
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Makes the WebGPU globals (GPUBufferUsage, GPUMapMode, GPUShaderStage, GPUValidationError, ...)
 * available on globalThis, as in a browser. Existing globals are left alone. Idempotent.
 */
export function installGlobals(): void {
  const g = globalThis as Record<string, unknown>;
  for (const [name, value] of Object.entries(globals as Record<string, unknown>)) {
    if (!(name in g)) g[name] = value;
  }
}

/** Mesa's Vulkan WSI warns when XDG_RUNTIME_DIR is unset; give it a private one. */
function ensureXdgRuntimeDir(): void {
  if (process.env.XDG_RUNTIME_DIR || process.platform === "win32") return;
  const uid = typeof process.getuid === "function" ? process.getuid() : 0;
  const dir = `/tmp/xdg-runtime-${uid}`;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    process.env.XDG_RUNTIME_DIR = dir;
  } catch {
    // Not fatal: the driver only warns without it.
  }
}
