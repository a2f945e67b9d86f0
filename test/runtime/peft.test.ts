// PEFT adapter configs as PEFT reads them: pattern keys are regular expressions over module
// names (or their dotted suffixes), the scale is alpha / r or alpha / √r (use_rslora), and
// moec's own exported adapters (mixed ranks in rank_pattern) read back to the same scales.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { peftAdapterFiles, peftModuleScale, readPeftAdapter } from "../../runtime/peft.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-peft-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function writeFiles(dir: string, files: Map<string, Uint8Array | string>) {
  for (const [name, data] of files) {
    const to = path.join(dir, name);
    fs.mkdirSync(path.dirname(to), { recursive: true });
    fs.writeFileSync(to, data);
  }
}

describe("PEFT adapter configs", () => {
  it("moec's exported adapter with mixed ranks reads back to each module's rank and alpha", () => {
    const t = (shape: number[]) => ({ shape, data: new Float32Array(shape[0]! * shape[1]!) });
    const params = new Map([
      ["net.blocks.0.attn.q.lora_A.weight", t([4, 8])],
      ["net.blocks.0.attn.q.lora_B.weight", t([8, 4])],
      ["net.blocks.1.attn.q.lora_A.weight", t([2, 8])],
      ["net.blocks.1.attn.q.lora_B.weight", t([8, 2])],
    ]);
    const files = peftAdapterFiles(params, [
      { path: "net.blocks.0.attn.q", r: 4, alpha: 8 },
      { path: "net.blocks.1.attn.q", r: 2, alpha: 8 },
    ]);
    const dir = path.join(tmp, "export");
    writeFiles(dir, files);
    const { config } = readPeftAdapter(path.join(dir, "adapter"));
    expect(peftModuleScale(config, "blocks.0.attn.q")).toEqual({ r: 4, alpha: 8, scale: 2 });
    // "blocks.1.attn.q" as a pattern: its dots match themselves too.
    expect(peftModuleScale(config, "blocks.1.attn.q")).toMatchObject({ r: 2, scale: 4 });
  });

  it("per-task LoRAs export as one named adapter per task, modules without the task", () => {
    const params = new Map<string, { shape: number[]; data: Float32Array }>();
    const loras = ["en", "fr"].flatMap((task, i) =>
      ["q", "v"].map((m) => {
        const r = i + 2;
        const at = `net.blocks.0.attn.${m}.${task}`;
        params.set(`${at}.lora_A.weight`, {
          shape: [r, 8],
          data: new Float32Array(r * 8).fill(i + 1),
        });
        params.set(`${at}.lora_B.weight`, { shape: [8, r], data: new Float32Array(8 * r) });
        return { path: at, r, alpha: 8, task };
      }),
    );
    const files = peftAdapterFiles(params, loras);
    expect([...files.keys()].sort()).toEqual([
      "adapter-en/adapter_config.json",
      "adapter-en/adapter_model.safetensors",
      "adapter-fr/adapter_config.json",
      "adapter-fr/adapter_model.safetensors",
    ]);
    const dir = path.join(tmp, "per-task");
    writeFiles(dir, files);
    for (const [task, r, fill] of [
      ["en", 2, 1],
      ["fr", 3, 2],
    ] as const) {
      const { config, file } = readPeftAdapter(path.join(dir, `adapter-${task}`));
      expect(config.targets).toEqual(["q", "v"]);
      expect(peftModuleScale(config, "blocks.0.attn.v")).toEqual({ r, alpha: 8, scale: 8 / r });
      const a = file.read("blocks.0.attn.q.lora_A.weight");
      expect(a.shape).toEqual([r, 8]);
      expect(Array.from(a.data).every((x) => x === fill)).toBe(true);
    }
  });

  it("matches pattern keys as PEFT does: anchored at the end, after a dot or at the start", () => {
    const config = {
      r: 8,
      alpha: 16,
      rslora: false,
      targets: [],
      rankPattern: [],
      alphaPattern: [
        { key: "q", value: 4, regex: /^(?:.*\.)?(?:q)$/ },
        { key: "layers\\.[01]\\.v", value: 2, regex: /^(?:.*\.)?(?:layers\.[01]\.v)$/ },
      ],
    };
    expect(peftModuleScale(config, "model.layers.3.q").alpha).toBe(4);
    // "q" is no suffix of "seq" by names, and does not match "q_proj".
    expect(peftModuleScale(config, "model.layers.3.seq").alpha).toBe(16);
    expect(peftModuleScale(config, "model.q_proj").alpha).toBe(16);
    expect(peftModuleScale(config, "model.layers.1.v").alpha).toBe(2);
    expect(peftModuleScale(config, "model.layers.2.v").alpha).toBe(16);
    expect(peftModuleScale({ ...config, rslora: true }, "x.q").scale).toBeCloseTo(4 / Math.sqrt(8));
  });
});
