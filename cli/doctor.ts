// `moec doctor`: reports the WebGPU adapter moec would run on (cli/main.ts wires the command).
import { createRequire } from "node:module";

import {
  DeviceError,
  GpuContext,
  KEY_LIMITS,
  describeAdapter,
  openDevice,
} from "../runtime/device.js";

export const DOCTOR_EXIT_OK = 0;
export const DOCTOR_EXIT_NO_DEVICE = 3;

export interface DoctorReport {
  ok: boolean;
  node: string;
  platform: string;
  webgpuPackage: string | null;
  adapter?: {
    vendor: string;
    architecture: string;
    device: string;
    description: string;
    backend: string;
    software: boolean;
  };
  limits?: Record<string, number>;
  allLimits?: Record<string, number>;
  features?: string[];
  adapterFeatures?: string[];
  uncapturedErrors?: string[];
  error?: { code: string; message: string };
}

/** Prints the adapter description (text, or JSON with `json`) and returns the exit code. */
export async function runDoctor(options: { json: boolean }): Promise<number> {
  const base = {
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    webgpuPackage: webgpuVersion(),
  };
  let ctx: GpuContext | undefined;
  try {
    ctx = await openDevice();
  } catch (e) {
    const error = {
      code: e instanceof DeviceError ? e.code : "error",
      message: e instanceof Error ? e.message : String(e),
    };
    if (options.json) {
      print(JSON.stringify({ ok: false, ...base, error } satisfies DoctorReport, null, 2));
    } else {
      process.stderr.write(`moec doctor: ${error.message}\n`);
    }
    return DOCTOR_EXIT_NO_DEVICE;
  }

  try {
    const errors = ctx.uncapturedErrors.map((e) => `${e.kind}: ${e.message}`);
    if (options.json) {
      const limits: Record<string, number> = {};
      for (const name of KEY_LIMITS) {
        const v = ctx.limits[name];
        if (v !== undefined) limits[name] = v;
      }
      const report: DoctorReport = {
        ok: errors.length === 0,
        ...base,
        adapter: {
          ...ctx.info,
          backend: ctx.backend,
          software: ctx.isSoftware,
        },
        limits,
        allLimits: { ...ctx.limits },
        features: [...ctx.features],
        adapterFeatures: [...ctx.adapterFeatures],
        uncapturedErrors: errors,
      };
      print(JSON.stringify(report, null, 2));
    } else {
      print(
        [
          `node: ${base.node} (${base.platform}), webgpu package ${base.webgpuPackage ?? "(unknown)"}`,
          ...describeAdapter(ctx),
          ...errors.map((e) => `uncaptured error: ${e}`),
          errors.length === 0 ? "status: ok" : "status: device reported errors",
        ].join("\n"),
      );
    }
    return errors.length === 0 ? DOCTOR_EXIT_OK : DOCTOR_EXIT_NO_DEVICE;
  } finally {
    await ctx.close();
  }
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}

function webgpuVersion(): string | null {
  try {
    const require = createRequire(import.meta.url);
    const pkg = require("webgpu/package.json") as { version?: string };
    return pkg.version ?? null;
  } catch {
    return null;
  }
}
