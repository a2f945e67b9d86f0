// --weights-map hf-gpt2: a checkpoint in Hugging Face's GPT-2 layout (keys, Conv1D [in, out]
// weights, fused c_attn, mask buffers, tied lm_head), written here from moec's own weights,
// loads into examples/gpt2.moe and gives the same outputs as the native weights; likewise
// hf-mixtral (routers, w1/w2/w3 experts) into examples/mixtral.moe.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { executeRun } from "../../cli/run-command.js";
import { CliError } from "../../cli/report.js";
import { lowerFromSource } from "../../cli/model-options.js";
import { prepareWeights } from "../../runtime/run-model.js";
import { type TensorToWrite, writeSafetensorsFile } from "../../runtime/safetensors.js";
import { weightsToSafetensors } from "../../runtime/weights.js";

const root = path.join(import.meta.dirname, "../..");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-maps-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const example = path.join(root, "examples/gpt2.moe");
const dims = ["B=1", "T=5"];

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c]!;
  return out;
}

describe("hf-gpt2 weight map", () => {
  const { lowered } = lowerFromSource(example, { dim: dims, model: "GPT2Mini" });
  const ours = prepareWeights(lowered.graph, undefined, 11);
  const get = (name: string) => ours.get(`gpt.${name}`)!;
  const d = get("wte.weight").shape[1]!;
  const layers = [...ours.keys()].filter((k) => /h\.\d+\.layer\.ln_1\.weight$/.test(k)).length;

  // Hugging Face's layout, built from moec's weights by hand.
  const hf = new Map<string, TensorToWrite>();
  const f32 = (shape: number[], data: Float32Array): TensorToWrite => ({
    dtype: "F32",
    shape,
    data,
  });
  hf.set(
    "transformer.wte.weight",
    f32(get("wte.weight").shape, get("wte.weight").data as Float32Array),
  );
  hf.set(
    "transformer.wpe.weight",
    f32(get("wpe.weight").shape, get("wpe.weight").data as Float32Array),
  );
  hf.set("lm_head.weight", f32(get("wte.weight").shape, get("wte.weight").data as Float32Array));
  for (const n of ["weight", "bias"])
    hf.set(`transformer.ln_f.${n}`, f32([d], get(`ln_f.${n}`).data as Float32Array));
  for (let i = 0; i < layers; i++) {
    const L = (s: string) => get(`h.${i}.layer.${s}`).data as Float32Array;
    const h = `transformer.h.${i}.`;
    for (const n of ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"])
      hf.set(h + n, f32([d], L(n)));
    const cAttn = new Float32Array(d * 3 * d);
    ["q", "k", "v"].forEach((p, j) => {
      const w = L(`attn.${p}.weight`); // [out, in]
      for (let r = 0; r < d; r++)
        for (let c = 0; c < d; c++) cAttn[r * 3 * d + j * d + c] = w[c * d + r]!;
    });
    hf.set(h + "attn.c_attn.weight", f32([d, 3 * d], cAttn));
    hf.set(
      h + "attn.c_attn.bias",
      f32(
        [3 * d],
        Float32Array.from([...L("attn.q.bias"), ...L("attn.k.bias"), ...L("attn.v.bias")]),
      ),
    );
    hf.set(h + "attn.c_proj.weight", f32([d, d], transpose(L("attn.o.weight"), d, d)));
    hf.set(h + "attn.c_proj.bias", f32([d], L("attn.o.bias")));
    hf.set(h + "mlp.c_fc.weight", f32([d, 4 * d], transpose(L("mlp.up.weight"), 4 * d, d)));
    hf.set(h + "mlp.c_fc.bias", f32([4 * d], L("mlp.up.bias")));
    hf.set(h + "mlp.c_proj.weight", f32([4 * d, d], transpose(L("mlp.down.weight"), d, 4 * d)));
    hf.set(h + "mlp.c_proj.bias", f32([d], L("mlp.down.bias")));
    hf.set(h + "attn.bias", f32([1, 1, 8, 8], new Float32Array(64).fill(1)));
  }
  const hfFile = path.join(tmp, "hf-gpt2.safetensors");
  writeSafetensorsFile(hfFile, hf);
  const nativeFile = path.join(tmp, "native.safetensors");
  writeSafetensorsFile(nativeFile, weightsToSafetensors(ours));

  it("loads Hugging Face GPT-2 keys and layouts and computes the same outputs", async () => {
    const base = { backend: "reference", dim: dims, model: "GPT2Mini", seed: "2" };
    const viaMap = await executeRun(example, { ...base, weights: hfFile, weightsMap: "hf-gpt2" });
    const native = await executeRun(example, { ...base, weights: nativeFile });
    const a = viaMap.outputs.get("logits")!.data;
    const b = native.outputs.get("logits")!.data;
    expect(a.length).toBe(b.length);
    for (let i = 0; i < a.length; i++) expect(a[i]).toBe(b[i]);
  });

  it("reports a checkpoint of another size by moec name, before reading data", async () => {
    const other = new Map(hf);
    other.set("transformer.h.0.mlp.c_fc.weight", f32([d, 2 * d], new Float32Array(2 * d * d)));
    other.delete("transformer.h.1.ln_2.bias");
    const file = path.join(tmp, "hf-bad.safetensors");
    writeSafetensorsFile(file, other);
    const run = executeRun(example, {
      backend: "reference",
      dim: dims,
      model: "GPT2Mini",
      weights: file,
      weightsMap: "hf-gpt2",
    });
    await expect(run).rejects.toThrow(CliError);
    await expect(run).rejects.toThrow(
      /2 problems: missing gpt\.h\.1\.layer\.ln_2\.bias \[64\]; gpt\.h\.0\.layer\.mlp\.up\.weight has shape \[128, 64\], expected \[256, 64\]/,
    );
  });

  it("loads a pretrained GPT-2 under new per-task adapters with --init-missing", async () => {
    const opts = {
      backend: "reference",
      dim: ["B=2", "T=3"],
      set: ["layers=2", "d=64", "heads=4", "vocab=512", "context=128"],
      weights: hfFile,
      weightsMap: "hf-gpt2",
    };
    const adapters = path.join(root, "examples/gpt2-adapters.moe");
    await expect(executeRun(adapters, opts)).rejects.toThrow(
      /missing h\.0\.adapter\.translate\.ln\.weight/,
    );
    const r = await executeRun(adapters, { ...opts, initMissing: true });
    expect(r.outputs.get("logits")!.shape).toEqual([2, 3, 512]);
  });

  describe("PEFT LoRA adapters (--adapter)", () => {
    // GPT2Mini with LoRA on every projection, placed by target patterns; its parameters are
    // GPT2Mini's under the same names, plus the adapters'.
    const source = path.join(tmp, "gpt2-lora.moe");
    fs.writeFileSync(
      source,
      `import "${path.join(root, "examples/gpt2.moe")}" { GPT2 }
import std.adapt { LoRA }
model Tuned() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 512]
  gpt = frozen GPT2(2, 64, 4, 512, 128) with LoRA(
    r: 4,
    alpha: 8.0,
    targets: ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"],
  )
  logits = gpt(tokens)
}
`,
    );
    const rand = (n: number, seed: number) => {
      let a = seed;
      return Float32Array.from({ length: n }, () => {
        a = (a * 1103515245 + 12345) % 2147483648;
        return (a / 2147483648 - 0.5) * 0.2;
      });
    };
    // PEFT's files: keys and config exactly as PEFT saves a LoRA on GPT2LMHeadModel.
    const modules: [string, number, number][] = [
      ["attn.c_attn", d, 3 * d],
      ["attn.c_proj", d, d],
      ["mlp.c_fc", d, 4 * d],
      ["mlp.c_proj", 4 * d, d],
    ];
    const peft = new Map<string, TensorToWrite>();
    let seed = 7;
    for (let i = 0; i < layers; i++)
      for (const [m, inF, outF] of modules) {
        const key = `base_model.model.transformer.h.${i}.${m}`;
        peft.set(`${key}.lora_A.weight`, f32([4, inF], rand(4 * inF, seed++)));
        peft.set(`${key}.lora_B.weight`, f32([outF, 4], rand(4 * outF, seed++)));
      }
    const config = {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: "gpt2",
      r: 4,
      lora_alpha: 8,
      lora_dropout: 0.05,
      fan_in_fan_out: true,
      bias: "none",
      target_modules: ["c_attn", "c_proj", "c_fc"],
    };
    const writeAdapter = (name: string, tensors: Map<string, TensorToWrite>, cfg: object) => {
      const dir = path.join(tmp, name);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, "adapter_config.json"), JSON.stringify(cfg));
      writeSafetensorsFile(path.join(dir, "adapter_model.safetensors"), tensors);
      return dir;
    };
    const adapterDir = writeAdapter("peft", peft, config);
    const base = { backend: "reference", dim: dims, seed: "2", weights: hfFile };

    it("loads by PEFT's names and equals the base with the adapters merged by hand", async () => {
      // The reference: W + (alpha / r)·Aᵀ·Bᵀ in Hugging Face's Conv1D [in, out] layout,
      // computed here, run through GPT2Mini without adapters.
      const merged = new Map(hf);
      for (let i = 0; i < layers; i++)
        for (const [m, inF, outF] of modules) {
          const key = `transformer.h.${i}.${m}`;
          const A = peft.get(`base_model.model.${key}.lora_A.weight`)!.data as Float32Array;
          const B = peft.get(`base_model.model.${key}.lora_B.weight`)!.data as Float32Array;
          const W = Float32Array.from(hf.get(`${key}.weight`)!.data as Float32Array);
          for (let a = 0; a < inF; a++)
            for (let b = 0; b < outF; b++) {
              let delta = 0;
              for (let k = 0; k < 4; k++) delta += A[k * inF + a]! * B[b * 4 + k]!;
              W[a * outF + b]! += (8 / 4) * delta;
            }
          merged.set(`${key}.weight`, f32([inF, outF], W));
        }
      const mergedFile = path.join(tmp, "hf-gpt2-merged.safetensors");
      writeSafetensorsFile(mergedFile, merged);
      const want = await executeRun(example, {
        ...base,
        model: "GPT2Mini",
        weights: mergedFile,
        weightsMap: "hf-gpt2",
      });
      const got = await executeRun(source, {
        ...base,
        weightsMap: "hf-gpt2",
        adapter: [adapterDir],
      });
      const a = got.outputs.get("logits")!.data;
      const b = want.outputs.get("logits")!.data;
      let num = 0;
      let den = 0;
      for (let i = 0; i < a.length; i++) {
        num += (a[i]! - b[i]!) ** 2;
        den += b[i]! ** 2;
      }
      expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
      // And the adapters changed something: the base alone differs.
      const plain = await executeRun(example, {
        ...base,
        model: "GPT2Mini",
        weightsMap: "hf-gpt2",
      });
      expect(plain.outputs.get("logits")!.data[0]).not.toBeCloseTo(a[0]!, 4);
    });

    it("names each mismatch: scale, untargeted module, shape, missing config", async () => {
      const run = (dir: string) =>
        executeRun(source, { ...base, weightsMap: "hf-gpt2", adapter: [dir] });
      await expect(run(writeAdapter("alpha", peft, { ...config, lora_alpha: 16 }))).rejects.toThrow(
        /adapter_config.json has r 4, lora_alpha 16 for gpt\.h\.0\.layer\.attn\.q \(PEFT module transformer\.h\.0\.attn\.c_attn\): scale 4; the model's LoRA there has r 4, alpha 8: scale 2/,
      );
      const untargeted = new Map(peft);
      untargeted.set(
        "base_model.model.transformer.h.0.attn.c_proj.lora_A.default.weight",
        f32([4, d], rand(4 * d, 99)),
      );
      untargeted.delete("base_model.model.transformer.h.0.attn.c_proj.lora_A.weight");
      const noO = source.replace(".moe", "-no-o.moe");
      fs.writeFileSync(noO, fs.readFileSync(source, "utf8").replace(', "attn.o"', ""));
      await expect(
        executeRun(noO, { ...base, weightsMap: "hf-gpt2", adapter: [adapterDir] }),
      ).rejects.toThrow(/the model has no LoRA on: gpt\.h\.0\.layer\.attn\.o\.lora_A\.weight/);
      const wrong = new Map(peft);
      wrong.set(
        "base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight",
        f32([3, d], rand(3 * d, 5)),
      );
      await expect(run(writeAdapter("shape", wrong, config))).rejects.toThrow(
        /r is 4 for transformer\.h\.1\.mlp\.c_fc, but its lora_A has rank 3/,
      );
      await expect(run(tmp)).rejects.toThrow(/no adapter_config.json \(not a PEFT adapter\)/);
      // An adapter name inside the keys (lora_A.default.weight) is PEFT's too.
      await expect(run(writeAdapter("named", untargeted, config))).resolves.toBeDefined();
    });

    it("honours alpha_pattern, rank_pattern and use_rslora as PEFT computes the scale", async () => {
      const run = (dir: string, extra: object = {}) =>
        executeRun(source, { ...base, weightsMap: "hf-gpt2", adapter: [dir], ...extra });
      const logits = async (dir: string) => (await run(dir)).outputs.get("logits")!.data;
      const want = await logits(adapterDir);
      // A regular expression over module names gives every module alpha 8: scale 8 / 4 = 2.
      const regex = writeAdapter("regex", peft, {
        ...config,
        lora_alpha: 32,
        alpha_pattern: { "c_attn|c_proj|c_fc": 8 },
        rank_pattern: { "h\\.\\d+\\.mlp\\.c_fc": 4 },
      });
      expect(await logits(regex)).toEqual(want);
      // Rank-stabilised: alpha / √r = 4 / 2 = 2, the model's 8 / 4.
      const rs = writeAdapter("rslora", peft, { ...config, lora_alpha: 4, use_rslora: true });
      expect(await logits(rs)).toEqual(want);
      // One layer with its own alpha (4× the scale the model has there) is refused, by key.
      const own = writeAdapter("own-alpha", peft, {
        ...config,
        alpha_pattern: { "transformer\\.h\\.1\\.attn\\.c_attn": 32 },
      });
      await expect(run(own)).rejects.toThrow(
        /has r 4, lora_alpha 32 for gpt\.h\.1\.layer\.attn\.q \(PEFT module transformer\.h\.1\.attn\.c_attn; alpha_pattern "transformer.+c_attn"\): scale 8; the model's LoRA there has r 4, alpha 8: scale 2/,
      );
      // A key that matches no module, or two keys that disagree, are refused by name.
      const none = writeAdapter("no-match", peft, { ...config, alpha_pattern: { q_proj: 8 } });
      await expect(run(none)).rejects.toThrow(
        /alpha_pattern key "q_proj" matches no module of the adapter/,
      );
      const both = writeAdapter("two-keys", peft, {
        ...config,
        alpha_pattern: { c_attn: 8, "h.0.attn.c_attn": 16 },
      });
      await expect(run(both)).rejects.toThrow(
        /alpha_pattern keys "c_attn" and "h.0.attn.c_attn" both match module transformer\.h\.0\.attn\.c_attn with different values \(8, 16\)/,
      );
    });

    it("never initialises an adapter's own weights, even with --init-missing", async () => {
      const run = (dir: string) =>
        executeRun(source, { ...base, weightsMap: "hf-gpt2", adapter: [dir], initMissing: true });
      const noB = new Map([...peft].filter(([k]) => !k.endsWith("h.1.mlp.c_fc.lora_B.weight")));
      await expect(run(writeAdapter("no-b", noB, config))).rejects.toThrow(
        /module transformer\.h\.1\.mlp\.c_fc has lora_A but no lora_B; an adapter's own weights are never initialised/,
      );
      const empty = writeAdapter("empty", new Map<string, TensorToWrite>(), config);
      await expect(run(empty)).rejects.toThrow(/no LoRA weights \(lora_A, lora_B\) in the adapter/);
    });

    it("compares target_modules with the model's LoRA placement", async () => {
      // The adapter adapts c_attn only; the model has LoRA on every projection.
      const attnOnly = new Map([...peft].filter(([k]) => k.includes(".attn.c_attn.")));
      const dir = writeAdapter("attn-only", attnOnly, { ...config, target_modules: ["c_attn"] });
      await expect(
        executeRun(source, { ...base, weightsMap: "hf-gpt2", adapter: [dir], initMissing: true }),
      ).rejects.toThrow(
        /the model has LoRA on gpt\.h\.0\.layer\.attn\.o, gpt\.h\.0\.layer\.mlp\.up, gpt\.h\.0\.layer\.mlp\.down, \.\.\. \(6 in all\), which the adapter \(its target_modules: c_attn\) does not adapt/,
      );
      // Weights for a module target_modules does not name: the config and weights disagree.
      const stray = writeAdapter("stray", peft, { ...config, target_modules: ["c_attn", "c_fc"] });
      await expect(
        executeRun(source, { ...base, weightsMap: "hf-gpt2", adapter: [stray] }),
      ).rejects.toThrow(
        /the adapter has weights for transformer\.h\.0\.attn\.c_proj, which its target_modules \(c_attn, c_fc\) do not name/,
      );
    });
  });

  it("rejects an unknown map name", async () => {
    await expect(
      executeRun(example, {
        backend: "reference",
        dim: dims,
        model: "GPT2Mini",
        weights: hfFile,
        weightsMap: "hf-llama",
      }),
    ).rejects.toThrow('unknown --weights-map "hf-llama"; maps: hf-gpt2, hf-mixtral');
  });
});

describe("hf-mixtral weight map", () => {
  const mixtral = path.join(root, "examples/mixtral.moe");
  const mdims = ["B=2", "T=4"];
  const { lowered } = lowerFromSource(mixtral, { dim: mdims });
  const ours = prepareWeights(lowered.graph, undefined, 5);
  // Hugging Face's names for moec's seeded weights, written by hand from the HF layout.
  const hf = new Map<string, TensorToWrite>();
  const put = (theirs: string, name: string) => {
    const t = ours.get(name)!;
    hf.set(theirs, { dtype: "F32", shape: t.shape, data: t.data as Float32Array });
  };
  put("model.embed_tokens.weight", "embed_tokens.weight");
  put("model.norm.weight", "norm.weight");
  put("lm_head.weight", "lm_head.weight");
  for (let i = 0; i < 2; i++) {
    const L = `model.layers.${i}.`;
    const l = `layers.${i}.`;
    put(`${L}input_layernorm.weight`, `${l}input_layernorm.weight`);
    put(`${L}post_attention_layernorm.weight`, `${l}post_attention_layernorm.weight`);
    for (const p of ["q", "k", "v", "o"])
      put(`${L}self_attn.${p}_proj.weight`, `${l}self_attn.${p}.weight`);
    put(`${L}block_sparse_moe.gate.weight`, `${l}block_sparse_moe.router.gate.weight`);
    for (let e = 0; e < 8; e++) {
      const E = `${L}block_sparse_moe.experts.${e}.`;
      const ex = `${l}block_sparse_moe.experts.${e}.`;
      put(`${E}w1.weight`, `${ex}gate.weight`);
      put(`${E}w2.weight`, `${ex}down.weight`);
      put(`${E}w3.weight`, `${ex}up.weight`);
    }
  }
  hf.set("model.layers.0.self_attn.rotary_emb.inv_freq", {
    dtype: "F32",
    shape: [8],
    data: new Float32Array(8).fill(1),
  });
  const hfFile = path.join(tmp, "hf-mixtral.safetensors");
  writeSafetensorsFile(hfFile, hf);

  it("loads Mixtral's keys (routers, w1/w2/w3 experts) and computes the same outputs", async () => {
    const nativeFile = path.join(tmp, "mixtral-native.safetensors");
    writeSafetensorsFile(nativeFile, weightsToSafetensors(ours));
    const base = { backend: "reference", dim: mdims, seed: "1" };
    const viaMap = await executeRun(mixtral, {
      ...base,
      weights: hfFile,
      weightsMap: "hf-mixtral",
    });
    const native = await executeRun(mixtral, { ...base, weights: nativeFile });
    expect([...viaMap.outputs.get("logits")!.data]).toEqual([
      ...native.outputs.get("logits")!.data,
    ]);
  });

  it("names a missing expert and a grouped-query k_proj by moec name", async () => {
    const bad = new Map(hf);
    bad.delete("model.layers.1.block_sparse_moe.experts.7.w2.weight");
    bad.set("model.layers.0.self_attn.k_proj.weight", {
      dtype: "F32",
      shape: [32, 64],
      data: new Float32Array(32 * 64),
    });
    const file = path.join(tmp, "hf-mixtral-bad.safetensors");
    writeSafetensorsFile(file, bad);
    const run = executeRun(mixtral, {
      backend: "reference",
      dim: mdims,
      weights: file,
      weightsMap: "hf-mixtral",
    });
    await expect(run).rejects.toThrow(
      /missing layers\.1\.block_sparse_moe\.experts\.7\.down\.weight \[64, 128\].*layers\.0\.self_attn\.k\.weight has shape \[32, 64\], expected \[64, 64\]/,
    );
  });

  it("refuses a model without Mixtral's layout", async () => {
    await expect(
      executeRun(example, {
        backend: "reference",
        dim: dims,
        model: "GPT2Mini",
        weights: hfFile,
        weightsMap: "hf-mixtral",
      }),
    ).rejects.toThrow(/needs a model with Mixtral's layout/);
  });
});
