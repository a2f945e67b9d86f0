// Exit codes blame the right party: a path, a size, a damaged file or cache the user gave is
// exit 1 (2 for usage) with a one-line cause, never 3 ("internal error, please report it");
// and a run too large for the device or for host memory fails before any weight is made.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { IrBuilder } from "../../compiler/ir/builder.js";
import { compileGraph } from "../../compiler/kernels/compile-graph.js";
import { LimitError } from "../../compiler/kernels/plan-buffers.js";
import { adapterKey, loadTuning } from "../../runtime/autotune.js";
import { DEFAULT_TUNING } from "../../compiler/kernels/wgsl/variants.js";
import { moecNodeArgs, root } from "./moec-cli.js";

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** `moec ARGS` with `env` added, killed after `timeoutMs` (code null then). */
function moec(
  args: readonly string[],
  options: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<Result> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...moecNodeArgs, ...args], {
      cwd: root,
      env: { ...process.env, ...options.env },
      timeout: options.timeoutMs ?? 240_000,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.on("error", reject);
    child.on("close", (code) =>
      resolve({
        code,
        stdout,
        // Dawn's adapter warnings are the driver's lines, not moec's.
        stderr: stderr.replace(/Warning: .*\n/g, ""),
        seconds: (performance.now() - t0) / 1000,
      }),
    );
  });
}

/** A user error: exit `code`, one line on stderr naming the cause, no "internal error". */
function expectUserError(r: Result, pattern: RegExp, code = 1): void {
  expect(r.stderr).not.toContain("internal error");
  expect(r.stderr.trim().split("\n")).toHaveLength(1);
  expect(r.stderr).toMatch(pattern);
  expect(r.code).toBe(code);
}

const tiny = "examples/tiny-transformer.moe";
const small = ["--dim", "B=1", "--dim", "T=4"];
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-exits-"));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** 16 labelled sequences for tiny-transformer's `Label` program (`moec data gen related`). */
async function labelData(name: string): Promise<string> {
  const data = path.join(dir, name);
  const gen = await moec(
    ["data", "gen", "related", "--tasks", "1", "--classes", "10", "--length", "8"].concat([
      "--count",
      "16",
      "-o",
      data,
    ]),
  );
  expect(gen.code).toBe(0);
  return data;
}

describe("outputs that cannot be written are the user's error, found before any work", () => {
  it("compile -o: a missing folder, a file in the way, a folder that is not a bundle, /proc", async () => {
    const file = path.join(dir, "a-file");
    fs.writeFileSync(file, "mine");
    const folder = path.join(dir, "not-a-bundle");
    fs.mkdirSync(folder, { recursive: true });
    const [missing, onFile, onFolder, proc] = await Promise.all(
      [path.join(dir, "no/such/x.moec"), file, folder, "/proc/x.moec"].map((out) =>
        moec(["compile", tiny, ...small, "-o", out]),
      ),
    );
    expectUserError(missing!, /-o .*no\/such\/x\.moec: the folder .*no\/such does not exist/);
    expectUserError(onFile!, /-o .*a-file: is a file, and a moec bundle is a folder/);
    expectUserError(onFolder!, /-o .*not-a-bundle: exists and is not a moec bundle/);
    expectUserError(proc!, /-o \/proc\/x\.moec: cannot write there/);
    expect(fs.readFileSync(file, "utf8")).toBe("mine");
    expect(fs.readdirSync(folder)).toEqual([]);
  });

  it("run -o and --trace-routing: a folder, a missing folder, /proc", async () => {
    const [onFolder, missing, proc] = await Promise.all([
      moec(["run", tiny, ...small, "-o", dir]),
      moec(["run", tiny, ...small, "-o", path.join(dir, "no/out.safetensors")]),
      moec(["run", tiny, ...small, "--trace-routing", "/proc/trace.safetensors"]),
    ]);
    expectUserError(onFolder, /-o .*: is a folder; give a file name/);
    expectUserError(missing, /-o .*no\/out\.safetensors: the folder .*no does not exist/);
    expectUserError(proc, /--trace-routing \/proc\/trace\.safetensors: cannot write there/);
    // Refused before the model ran: nothing was printed about it.
    for (const r of [onFolder, missing, proc]) expect(r.stdout).toBe("");
  });

  it("train --out onto a file stops before training", async () => {
    const file = path.join(dir, "run-file");
    fs.writeFileSync(file, "mine");
    const data = await labelData("labels.safetensors");
    const r = await moec(
      ["train", tiny, "--data", data, "--steps", "1", "--batch", "4"].concat(["--out", file]),
    );
    expectUserError(r, /--out .*run-file: is a file, and a run directory is a folder/);
    expect(fs.readFileSync(file, "utf8")).toBe("mine");
  });
  it("any command writing into a folder that does not exist (moec data gen -o)", async () => {
    const out = path.join(dir, "no", "such", "data.safetensors");
    const r = await moec(["data", "gen", "symbols", "--count", "4", "-o", out]);
    expectUserError(r, /no\/such\/data\.safetensors: no such file or directory$/m);
    expect(fs.existsSync(path.join(dir, "no"))).toBe(false);
  });
});

describe("sizes too large for the device fail at once (exit 1), before any weight is made", () => {
  it("compile --dim B=2147483648 and B=99999999999999999999", async () => {
    const [big, huge] = await Promise.all(
      ["B=2147483648", "B=99999999999999999999"].map((b) =>
        moec(["compile", tiny, "--dim", b, "--dim", "T=8", "--emit", "plan"]),
      ),
    );
    expectUserError(
      big!,
      /tensor input x \[2147483648, 8, 16\] f32 needs \d+ bytes, over maxBufferSize/,
    );
    expectUserError(
      huge!,
      /tensor input x \[(1e\+20|100000000000000000000), 8, 16\] .* over maxBufferSize/,
    );
  });

  // Before: 58-105 s and 6 GiB of random inputs, then the same error (exit 3); and 80-200 s and
  // 8 GiB of generated embedding. The timeouts leave room for a loaded machine, not for that.
  it("run --dim T=100000000, --dim B=2147483648 and an 8 GiB embedding", async () => {
    const [long, wide, embedding] = await Promise.all([
      moec(["run", tiny, "--dim", "B=1", "--dim", "T=100000000"], { timeoutMs: 30_000 }),
      moec(["run", tiny, "--dim", "B=2147483648", "--dim", "T=8"], { timeoutMs: 30_000 }),
      moec(
        ["run", "examples/gpt2.moe", "--model", "GPT2Mini", "--set", "vocab=33554432", ...small],
        { timeoutMs: 30_000 },
      ),
    ]);
    expectUserError(
      long,
      /tensor input x \[1, 100000000, 16\] f32 needs 6400000000 bytes, over maxBufferSize/,
    );
    expectUserError(wide, /tensor input x \[2147483648, 8, 16\] .* over maxBufferSize/);
    expectUserError(
      embedding,
      /tensor param gpt\.wte\.weight \[33554432, 64\] f32 needs 8589934592 bytes, over maxBufferSize/,
    );
  }, 60_000);

  // Before: the initial parameters (8 GiB here) were generated first, then the limit (exit 3).
  it("train with a head of 8 GiB", async () => {
    const data = await labelData("labels-large.safetensors");
    const out = path.join(dir, "large-run");
    const r = await moec(
      ["train", tiny, "--data", data, "--steps", "1", "--batch", "4", "--out", out].concat([
        "--set",
        "classes=67108864",
      ]),
      { timeoutMs: 30_000 },
    );
    expectUserError(r, /over maxBufferSize/);
    expect(fs.existsSync(path.join(out, "ckpt-1"))).toBe(false);
  }, 60_000);

  it("run --backend reference past free host memory", async () => {
    const r = await moec(
      ["run", tiny, "--backend", "reference", "--dim", "B=99999999999999999999", "--dim", "T=8"],
      { timeoutMs: 30_000 },
    );
    expectUserError(r, /the run needs .* GiB of host memory .* but only .* is free/);
  });
});

describe("damaged files are the user's error (exit 1)", () => {
  it("a weights file whose header nests a shape 100,000 deep", async () => {
    const deep = "[".repeat(100_000) + "]".repeat(100_000);
    const header = Buffer.from(`{"x":{"dtype":"F32","shape":${deep},"data_offsets":[0,0]}}`);
    const bytes = Buffer.alloc(8 + header.length);
    bytes.writeBigUInt64LE(BigInt(header.length), 0);
    header.copy(bytes, 8);
    const file = path.join(dir, "deep.safetensors");
    fs.writeFileSync(file, bytes);
    const r = await moec(["run", tiny, ...small, "--weights", file]);
    expectUserError(
      r,
      /deep\.safetensors: tensor "x": shape must be a list of non-negative integers, found \[\[\[/,
    );
  });

  it("a bundle with garbage WGSL, and one with a parameter's offset past its buffer", async () => {
    const good = path.join(dir, "good.moec");
    expect((await moec(["compile", tiny, ...small, "-o", good])).code).toBe(0);
    const wgsl = path.join(dir, "wgsl.moec");
    const offset = path.join(dir, "offset.moec");
    // As `cp -r` copies: the bundle's links stay relative to the copy.
    fs.cpSync(good, wgsl, { recursive: true, verbatimSymlinks: true });
    fs.cpSync(good, offset, { recursive: true, verbatimSymlinks: true });
    const kernel = path.join(wgsl, "kernels", fs.readdirSync(path.join(wgsl, "kernels"))[0]!);
    fs.writeFileSync(kernel, "garbage {{{");
    const planFile = path.join(offset, "plan.json");
    const plan = JSON.parse(fs.readFileSync(planFile, "utf8"));
    plan.params[0].byteOffset = 1_000_000_000;
    fs.writeFileSync(planFile, JSON.stringify(plan));
    const [badWgsl, badOffset] = await Promise.all([moec(["run", wgsl]), moec(["run", offset])]);
    // The manifest's hashes catch both before anything runs (test/cli/bundle.test.ts checks
    // the plan and WGSL checks behind them, on bundles whose manifest was rewritten to match).
    expectUserError(badWgsl, /wgsl\.moec\/kernels\/\S+: does not match the bundle's manifest/);
    expectUserError(badOffset, /offset\.moec\/plan\.json: does not match the bundle's manifest/);
  });
});

describe("a damaged tuning cache is ignored with one warning and rewritten", () => {
  const info = { vendor: "v", architecture: "a", device: "d", description: "test adapter" };
  const ctx = { info } as Parameters<typeof loadTuning>[0];

  it("keeps the valid entries and drops the rest (unknown variants, wrong types)", () => {
    const cacheDir = fs.mkdtempSync(path.join(dir, "cache-"));
    const file = path.join(cacheDir, "autotune.json");
    const other = { ...info, device: "other" };
    const good = { tuning: DEFAULT_TUNING, measured: {}, date: "2026-01-01" };
    const bad = {
      tuning: { ...DEFAULT_TUNING, matmul: { nn: { name: "x", tm: 0 }, nt: 1 } },
      measured: {},
      date: "2026-01-01",
    };
    const entries = { [adapterKey({ info: other })]: good, [adapterKey(ctx)]: bad };
    fs.writeFileSync(file, JSON.stringify({ version: 1, entries }));
    const warnings: string[] = [];
    expect(loadTuning(ctx, cacheDir, (l) => warnings.push(l))).toBeUndefined();
    expect(warnings).toEqual([
      `ignoring the damaged tuning cache ${file} (an entry with unknown kernel variants); rewrote it without the damage`,
    ]);
    const rewritten = JSON.parse(fs.readFileSync(file, "utf8"));
    expect(Object.keys(rewritten.entries)).toEqual([adapterKey({ info: other })]);
    expect(loadTuning({ info: other }, cacheDir, (l) => warnings.push(l))).toEqual(DEFAULT_TUNING);
    expect(warnings).toHaveLength(1); // clean now: no second warning
    for (const text of ['{"version":1,"entries":null}', "[1,2]", "{not json"]) {
      fs.writeFileSync(file, text);
      const seen: string[] = [];
      expect(loadTuning(ctx, cacheDir, (l) => seen.push(l))).toBeUndefined();
      expect(seen).toHaveLength(1);
      expect(JSON.parse(fs.readFileSync(file, "utf8"))).toEqual({ version: 1, entries: {} });
    }
  });

  it("moec run with a valid-JSON, wrong-content cache for this adapter succeeds, and warns once", async () => {
    const doctor = await moec(["doctor", "--json"]);
    expect(doctor.code).toBe(0);
    const adapter = JSON.parse(doctor.stdout).adapter as typeof info;
    const cacheDir = fs.mkdtempSync(path.join(dir, "cache-"));
    const file = path.join(cacheDir, "autotune.json");
    const entry = { tuning: { matmul: "fast", mapThreads: -1 }, measured: {}, date: "x" };
    fs.writeFileSync(
      file,
      JSON.stringify({ version: 1, entries: { [adapterKey({ info: adapter })]: entry } }),
    );
    const env = { MOEC_CACHE_DIR: cacheDir };
    const first = await moec(["run", tiny, ...small], { env });
    expect(first.stderr).not.toContain("internal error");
    expect(first.code).toBe(0);
    expect(first.stderr.trim().split("\n")).toEqual([
      `moec: warning: ignoring the damaged tuning cache ${file} (an entry with unknown kernel variants); rewrote it without the damage`,
    ]);
    const second = await moec(["run", tiny, ...small], { env });
    expect(second.code).toBe(0);
    expect(second.stderr.trim()).toBe("");
  }, 180_000);
});

describe("the plan's limits", () => {
  it("refuses a tensor past u32 indexing even where maxBufferSize would allow it", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2 ** 16, 2 ** 16 + 1]);
    b.output("y", b.unary("exp", x));
    const limits = { maxBufferSize: 2 ** 40, maxStorageBufferBindingSize: 2 ** 31 };
    expect(() => compileGraph(b.finish(), limits)).toThrow(
      new LimitError(
        "tensor input x [65536, 65537] f32 has 4295032832 elements, over the 4294967295 that 32-bit kernel indices reach",
        "maxBufferSize",
      ),
    );
  });
});
