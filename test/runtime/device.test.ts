// Real-GPU smoke test of runtime/device.ts. It needs a WebGPU adapter (lavapipe is enough) and
// fails loudly, never skips, when there is none: run scripts/setup.sh first.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  DeviceError,
  GpuContext,
  KEY_LIMITS,
  RecordedGpuError,
  adapterSummary,
  describeAdapter,
  openDevice,
} from "../../runtime/device.js";

// The minimums WebGPU guarantees for the limits moec relies on.
const WEBGPU_DEFAULT_LIMITS: Record<(typeof KEY_LIMITS)[number], number> = {
  maxBufferSize: 268_435_456,
  maxStorageBufferBindingSize: 134_217_728,
  maxComputeWorkgroupStorageSize: 16_384,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupSizeX: 256,
  maxComputeWorkgroupSizeY: 256,
  maxComputeWorkgroupSizeZ: 64,
  maxComputeWorkgroupsPerDimension: 65_535,
  maxStorageBuffersPerShaderStage: 8,
};

describe("runtime/device", () => {
  let opened: GpuContext | undefined;
  let openError = "openDevice() was not called";
  const uncaptured: RecordedGpuError[] = [];

  beforeAll(async () => {
    try {
      opened = await openDevice({
        onUncapturedError: (e) => uncaptured.push(e),
      });
    } catch (e) {
      openError = e instanceof Error ? e.message : String(e);
    }
  });

  afterAll(async () => {
    // Normally already closed by the last test; close() is idempotent.
    await opened?.close();
  });

  /** The device under test; every test fails (none is skipped) when there is no adapter. */
  function gpu(): GpuContext {
    if (!opened) {
      throw new Error(`GPU tests need a WebGPU adapter (run scripts/setup.sh): ${openError}`);
    }
    return opened;
  }

  it("opens a device and describes its adapter", () => {
    const ctx = gpu();
    expect(ctx.device).toBeDefined();
    expect(ctx.info.description || ctx.info.device).not.toBe("");
    expect(typeof ctx.isSoftware).toBe("boolean");
    expect(adapterSummary(ctx)).not.toContain("\n");
    const lines = describeAdapter(ctx);
    for (const name of KEY_LIMITS) {
      expect(lines.some((l) => l.includes(name))).toBe(true);
    }
    expect(lines.some((l) => l.startsWith("backend: "))).toBe(true);
    expect(lines.some((l) => l.startsWith("features: "))).toBe(true);
  });

  it("reports sane limits as a plain object", () => {
    const ctx = gpu();
    expect(Object.getPrototypeOf(ctx.limits)).toBe(Object.prototype);
    for (const name of KEY_LIMITS) {
      const value = ctx.limits[name];
      expect(Number.isSafeInteger(value), `${name} = ${value}`).toBe(true);
      expect(value, name).toBeGreaterThanOrEqual(WEBGPU_DEFAULT_LIMITS[name]);
      expect(value, name).toBeLessThanOrEqual(ctx.adapterLimits[name]!);
    }
    expect(ctx.limits.maxStorageBufferBindingSize).toBeLessThanOrEqual(ctx.limits.maxBufferSize!);
    expect(ctx.limits.maxComputeWorkgroupSizeX).toBeLessThanOrEqual(
      ctx.limits.maxComputeInvocationsPerWorkgroup!,
    );
    // openDevice asks for the adapter's limits by default.
    expect(ctx.limits).toEqual(ctx.adapterLimits);
  });

  it("runs a compute shader: y[i] = x[i] * 2 + 1", async () => {
    const ctx = gpu();
    const device = ctx.device;
    const n = 7;
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = Math.random() * 200 - 100;
    const bytes = n * Float32Array.BYTES_PER_ELEMENT;

    device.pushErrorScope("validation");
    const module = device.createShaderModule({
      label: "affine",
      code: `
        @group(0) @binding(0) var<storage, read> x: array<f32>;
        @group(0) @binding(1) var<storage, read_write> y: array<f32>;

        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
          let i = gid.x;
          if (i < arrayLength(&y)) {
            y[i] = x[i] * 2.0 + 1.0;
          }
        }
      `,
    });
    const info = await module.getCompilationInfo();
    expect(info.messages.filter((m) => m.type === "error")).toEqual([]);

    const input = device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(input, 0, x);
    // Poison the output so a shader that writes nothing cannot pass.
    const output = device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      mappedAtCreation: true,
    });
    new Float32Array(output.getMappedRange()).fill(Number.NaN);
    output.unmap();
    const staging = device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });

    const pipeline = device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    const bindGroup = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: input } },
        { binding: 1, resource: { buffer: output } },
      ],
    });
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(Math.ceil(n / 64));
    pass.end();
    encoder.copyBufferToBuffer(output, 0, staging, 0, bytes);
    device.queue.submit([encoder.finish()]);
    const scopeError = await device.popErrorScope();
    expect(scopeError?.message ?? null).toBeNull();

    await staging.mapAsync(GPUMapMode.READ);
    const y = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    for (const b of [input, output, staging]) b.destroy();

    const expected = Array.from(x, (v) => Math.fround(v * 2 + 1));
    for (let i = 0; i < n; i++) {
      expect(Number.isNaN(y[i]!), `y[${i}] still holds the NaN poison`).toBe(false);
      expect(
        Math.abs(y[i]! - expected[i]!),
        `y[${i}] = ${y[i]}, expected ${expected[i]} (x = ${x[i]})`,
      ).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(expected[i]!)));
    }
  });

  it("reports a WGSL syntax error with line and column", async () => {
    const ctx = gpu();
    const device = ctx.device;
    device.pushErrorScope("validation");
    const module = device.createShaderModule({
      label: "broken",
      code: ["@compute @workgroup_size(1)", "fn main() {", "  let a = 1 +;", "}"].join("\n"),
    });
    const info = await module.getCompilationInfo();
    const scopeError = await device.popErrorScope();

    const errors = info.messages.filter((m) => m.type === "error");
    expect(errors.length, "getCompilationInfo reported no error").toBeGreaterThan(0);
    const first = errors[0]!;
    expect(first.lineNum).toBe(3);
    expect(first.linePos).toBeGreaterThan(0);
    expect(first.message).not.toBe("");
    // The error scope saw it too, so it was neither swallowed nor left uncaptured.
    expect(scopeError).not.toBeNull();
    expect(scopeError!.message).toMatch(/error/i);
  });

  it("records uncaptured errors instead of swallowing them", async () => {
    const ctx = gpu();
    const device = ctx.device;
    const before = ctx.uncapturedErrors.length;
    // MAP_READ may only be combined with COPY_DST: a validation error outside any error scope.
    device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE,
    });
    await device.queue.onSubmittedWorkDone();
    const deadline = Date.now() + 10_000;
    while (ctx.uncapturedErrors.length === before && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(ctx.uncapturedErrors.length).toBe(before + 1);
    const recorded = ctx.uncapturedErrors[before]!;
    expect(recorded.kind).toBe("validation");
    expect(recorded.message).toMatch(/usage/i);
    expect(uncaptured).toContain(recorded);
  });

  it("a process that opens and closes a device exits by itself", () => {
    const deviceModule = fileURLToPath(new URL("../../runtime/device.ts", import.meta.url));
    const script = `
      const { openDevice } = await import(${JSON.stringify(deviceModule)});
      const ctx = await openDevice({ limits: "default" });
      const b = ctx.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
      b.destroy();
      await ctx.close();
      let threw = "";
      try { ctx.device; } catch (e) { threw = e.name; }
      console.log(JSON.stringify({
        storageBuffers: ctx.limits.maxStorageBuffersPerShaderStage,
        closed: ctx.closed,
        lost: ctx.lostInfo && ctx.lostInfo.reason,
        threw,
      }));
    `;
    const child = spawnSync(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", script],
      { encoding: "utf8", timeout: 30_000 },
    );
    expect(child.error, "child did not exit within 30 s").toBeUndefined();
    expect(child.status, child.stderr).toBe(0);
    expect(JSON.parse(child.stdout)).toEqual({
      storageBuffers: 8, // limits: "default" keeps WebGPU's default limits
      closed: true,
      lost: "destroyed",
      threw: "DeviceError",
    });
  });

  it("closes the device", async () => {
    const ctx = gpu();
    await ctx.close();
    expect(ctx.closed).toBe(true);
    expect(ctx.lostInfo?.reason).toBe("destroyed");
    expect(() => ctx.device).toThrow(DeviceError);
    expect(uncaptured.length).toBe(ctx.uncapturedErrors.length);
  });
});
