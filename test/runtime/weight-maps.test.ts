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
