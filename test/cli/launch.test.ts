// The `moec` launcher (cli/launch.ts): device commands run in a child whose stderr loses
// Dawn's adapter-limit lines and nothing else; exit codes and signals pass through; a child
// never outlives a launcher killed with SIGKILL; compile progress shows on a terminal only.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { dawnLineFilter } from "../../cli/dawn-lines.js";
import { compileProgress } from "../../cli/progress.js";
import { writeSafetensorsFile } from "../../runtime/safetensors.js";
import { root } from "./moec-cli.js";

const launcher = ["--import", "tsx", path.join(root, "cli/launch.ts")];
const direct = ["--import", "tsx", path.join(root, "cli/main.ts")];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-launch-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const DAWN =
  "Warning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16 to fit dynamic offset allocation limit.";

function filtered(chunks: string[]): { text: string; writes: string[] } {
  const writes: string[] = [];
  const f = dawnLineFilter((t) => writes.push(t));
  for (const c of chunks) f.push(c);
  f.end();
  return { text: writes.join(""), writes };
}

describe("dawnLineFilter", () => {
  it("drops Dawn's limit lines, whole or split across chunks, and keeps every other byte", () => {
    const storage = DAWN.replace("Uniform", "Storage");
    expect(filtered([`${DAWN}\n${storage}\nmoec: error\n`]).text).toBe("moec: error\n");
    expect(filtered([DAWN.slice(0, 12), `${DAWN.slice(12)}\n`, "done\n"]).text).toBe("done\n");
    const other = "Warning: maxDynamicSomething else\n";
    expect(filtered([other, "tail without newline"]).text).toBe(`${other}tail without newline`);
  });

  it("passes a partial line (a spinner frame) on at once unless it may become Dawn's line", () => {
    const { writes } = filtered(["\r⠋ compiling kernels 1/9", "\r⠙ compiling kernels 2/9"]);
    expect(writes).toEqual(["\r⠋ compiling kernels 1/9", "\r⠙ compiling kernels 2/9"]);
  });
});

describe("compileProgress", () => {
  it("draws only on an interactive terminal, never with --json or in CI", () => {
    const saved = { tty: process.stderr.isTTY, ci: process.env.CI, term: process.env.TERM };
    try {
      process.env.TERM = "xterm";
      delete process.env.CI;
      process.stderr.isTTY = true;
      expect(compileProgress(false)).toBeDefined();
      expect(compileProgress(true)).toBeUndefined();
      process.env.CI = "true";
      expect(compileProgress(false)).toBeUndefined();
      delete process.env.CI;
      process.stderr.isTTY = false;
      expect(compileProgress(false)).toBeUndefined();
    } finally {
      process.stderr.isTTY = saved.tty;
      for (const [k, v] of [
        ["CI", saved.ci],
        ["TERM", saved.term],
      ] as const)
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
    }
  });
});

describe("the launcher", () => {
  const args = ["run", "examples/tiny-transformer.moe", "--dim", "B=1", "--dim", "T=4"];

  it("runs device commands without Dawn's lines on stderr; the CLI alone prints them", () => {
    const viaLauncher = spawnSync(process.execPath, [...launcher, ...args], {
      cwd: root,
      encoding: "utf8",
    });
    expect(viaLauncher.status).toBe(0);
    expect(viaLauncher.stdout).toContain("model TinyTransformer");
    expect(viaLauncher.stderr).not.toContain("artificially reduced");
    // Dawn prints them on lavapipe and on real GPUs alike: without the filter they show.
    const alone = spawnSync(process.execPath, [...direct, ...args], {
      cwd: root,
      encoding: "utf8",
    });
    expect(alone.status).toBe(0);
    expect(alone.stderr).toContain("artificially reduced");
  });

  it("passes the exit code and the one-line error through", () => {
    const r = spawnSync(process.execPath, [...launcher, "run", "no-such-file.moe"], {
      cwd: root,
      encoding: "utf8",
    });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("no-such-file.moe");
  });

  it("a child never outlives a launcher killed with SIGKILL", async () => {
    const data = path.join(tmp, "seq.safetensors");
    const n = 16 * 5;
    const tokens = Int32Array.from({ length: n }, (_, i) => (i * 7 + 3) % 16);
    const targets = tokens.map((t) => (t * 5 + 1) % 16);
    writeSafetensorsFile(
      data,
      new Map([
        ["tokens", { dtype: "I32", shape: [16, 5], data: tokens }],
        ["targets", { dtype: "I32", shape: [16, 5], data: targets }],
      ]),
    );
    const model = path.join(tmp, "clf.moe");
    fs.writeFileSync(
      model,
      `import std.nn { Embedding, Linear }
import std.optim { AdamW }

train Fit() {
  in tokens: i32[B, T]
  in targets: i32[B, T]
  embed = Embedding(16, 8)
  head = Linear(8, 16)
  loss = cross_entropy(head(embed(tokens)), targets)
  optimizer = AdamW()
}
`,
    );
    const train = ["train", model, "--data", data, "--steps", "50000", "--batch", "4"];
    const parent = spawn(process.execPath, [...launcher, ...train, "--out", path.join(tmp, "r")], {
      cwd: root,
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    parent.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    const exited = new Promise((r) => parent.on("exit", r));
    // Steps are running once a progress line is out: the child is mid-training.
    const deadline = Date.now() + 120_000;
    while (!/step\s+\d+/.test(stderr) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    expect(stderr).toMatch(/step\s+\d+/);
    const children = execFileSync("pgrep", ["-P", String(parent.pid)], { encoding: "utf8" })
      .trim()
      .split("\n")
      .map(Number);
    expect(children).toHaveLength(1);
    parent.kill("SIGKILL");
    await exited;
    const alive = () => {
      try {
        process.kill(children[0]!, 0);
        return true;
      } catch {
        return false;
      }
    };
    const gone = Date.now() + 10_000;
    while (alive() && Date.now() < gone) await new Promise((r) => setTimeout(r, 20));
    expect(alive()).toBe(false);
  }, 180_000);

  it("shows compile progress on a terminal (a pseudo-terminal from `script`)", () => {
    // A fresh shader cache, so there is something to compile.
    const cache = fs.mkdtempSync(path.join(tmp, "mesa-"));
    const env: NodeJS.ProcessEnv = { ...process.env, MESA_SHADER_CACHE_DIR: cache, TERM: "xterm" };
    delete env.CI;
    const command = [process.execPath, ...launcher, ...args].map((a) => `'${a}'`).join(" ");
    // `script` gives the launcher a pseudo-terminal as a user's shell would.
    const onTerminal = spawnSync("script", ["-qec", command, "/dev/null"], {
      cwd: root,
      encoding: "utf8",
      env,
    });
    expect(onTerminal.status).toBe(0);
    expect(onTerminal.stdout).toMatch(/compiling kernels \d+\/\d+/);
    expect(onTerminal.stdout).toContain("model TinyTransformer");
    expect(onTerminal.stdout).not.toContain("artificially reduced");
  }, 180_000);
});
