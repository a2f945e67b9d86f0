/**
 * PEFT LoRA adapters (`moec run --adapter DIR`): a directory saved by Hugging Face PEFT with
 * `adapter_config.json` and `adapter_model.safetensors`. The keys are PEFT's
 * (`base_model.model.<module path>.lora_A.weight`, [r, in]; `lora_B.weight`, [out, r]); they
 * become module paths of the base checkpoint's layout, which a weights map (`--weights-map`)
 * then renames like the base weights, so adapter and base load by the same names.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import {
  type SafetensorsFile,
  type TensorToWrite,
  WeightsError,
  readSafetensorsFile,
  writeSafetensors,
} from "./safetensors.js";
import { renameCheckpoint } from "./weight-maps.js";

/** What moec uses of adapter_config.json. */
export interface PeftConfig {
  /** LoRA rank and alpha: the scale is alpha / r. */
  r: number;
  alpha: number;
  /** PEFT's target_modules (module names), for messages. */
  targets: string[];
  /** Per-module exceptions to r and lora_alpha (PEFT's rank_pattern, alpha_pattern). */
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
}

/** A module's rank and alpha under `config`: a pattern key matches the path's last names. */
export function peftScaleAt(config: PeftConfig, module: string): { r: number; alpha: number } {
  const at = (pattern: Record<string, number>) =>
    Object.entries(pattern).find(([k]) => module === k || module.endsWith(`.${k}`))?.[1];
  return { r: at(config.rankPattern) ?? config.r, alpha: at(config.alphaPattern) ?? config.alpha };
}

/** A `{ name: number }` object of adapter_config.json, or a one-line error. */
function numberPattern(file: string, key: string, v: unknown): Record<string, number> {
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v))
    throw configError(file, `${key} must be an object of module names to numbers`);
  for (const [k, x] of Object.entries(v))
    if (typeof x !== "number" || !(x > 0))
      throw configError(file, `${key}.${k} must be a positive number, found ${JSON.stringify(x)}`);
  return v as Record<string, number>;
}

function configError(file: string, why: string): WeightsError {
  return new WeightsError("bad-entry", file, `${file}: ${why}`);
}

/** Reads and checks a PEFT adapter directory; its tensors keep the base model's module paths. */
export function readPeftAdapter(dir: string): { config: PeftConfig; file: SafetensorsFile } {
  const configFile = path.join(dir, "adapter_config.json");
  if (!fs.existsSync(configFile))
    throw new WeightsError("io", configFile, `${dir}: no adapter_config.json (not a PEFT adapter)`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(configFile, "utf8"));
  } catch {
    throw configError(configFile, "not valid JSON");
  }
  if (typeof raw !== "object" || raw === null) throw configError(configFile, "not a JSON object");
  const c = raw as Record<string, unknown>;
  const type = c.peft_type ?? "LORA";
  if (type !== "LORA")
    throw configError(configFile, `peft_type ${JSON.stringify(type)}: only LoRA adapters load`);
  const r = c.r;
  const alpha = c.lora_alpha ?? r;
  if (typeof r !== "number" || !Number.isInteger(r) || r < 1)
    throw configError(configFile, `r must be a positive integer, found ${JSON.stringify(r)}`);
  if (typeof alpha !== "number" || !(alpha > 0))
    throw configError(configFile, `lora_alpha must be positive, found ${JSON.stringify(alpha)}`);
  if (c.use_dora === true) throw configError(configFile, "DoRA adapters (use_dora) do not load");
  if (c.use_rslora === true)
    throw configError(configFile, "rank-stabilised scaling (use_rslora) is not supported");
  const rawTargets = c.target_modules;
  if (typeof rawTargets === "string")
    throw configError(
      configFile,
      `target_modules is a regular expression (${JSON.stringify(rawTargets)}); list the modules instead`,
    );
  const targets = Array.isArray(rawTargets)
    ? rawTargets.filter((t): t is string => typeof t === "string")
    : [];
  const weightsFile = path.join(dir, "adapter_model.safetensors");
  if (!fs.existsSync(weightsFile)) {
    const pickle = fs.existsSync(path.join(dir, "adapter_model.bin"));
    throw new WeightsError(
      "io",
      weightsFile,
      pickle
        ? `${dir}: adapter_model.bin is a PyTorch pickle; save the adapter with safe_serialization=True`
        : `${dir}: no adapter_model.safetensors`,
    );
  }
  const file = readSafetensorsFile(weightsFile);
  // PEFT's keys: base_model.model.<module>.lora_A[.<adapter name>].weight
  const renamed = renameCheckpoint(file, (name: string) =>
    name.replace(/^base_model\.model\./, "").replace(/\.(lora_[AB])\.[^.]+\.weight$/, ".$1.weight"),
  );
  const rankPattern = numberPattern(configFile, "rank_pattern", c.rank_pattern);
  const alphaPattern = numberPattern(configFile, "alpha_pattern", c.alpha_pattern);
  return { config: { r, alpha, targets, rankPattern, alphaPattern }, file: renamed };
}

/** A LoRA a training run trained: its module path (under the program's binding), rank, alpha. */
export interface TrainedLora {
  path: string;
  r: number;
  alpha: number;
}

/**
 * The LoRA adapters of a training checkpoint in PEFT's layout, as files relative to the
 * checkpoint directory: per instance binding of the program (`net`), `adapter/` (or
 * `adapter-<binding>/` when several instances have adapters) with `adapter_config.json` and
 * `adapter_model.safetensors` keyed `base_model.model.<module>.lora_A.weight`, the module path
 * relative to that instance, so `moec run --adapter` and PEFT's `PeftModel.from_pretrained`
 * load it onto the base model. Mixed ranks go in PEFT's `rank_pattern` / `alpha_pattern`.
 */
export function peftAdapterFiles(
  params: ReadonlyMap<string, { shape: readonly number[]; data: Float32Array | Int32Array }>,
  loras: readonly TrainedLora[],
): Map<string, Uint8Array | string> {
  const byBinding = new Map<string, TrainedLora[]>();
  for (const l of loras) {
    const dot = l.path.indexOf(".");
    if (dot < 0) continue;
    const binding = l.path.slice(0, dot);
    byBinding.set(binding, [...(byBinding.get(binding) ?? []), l]);
  }
  const files = new Map<string, Uint8Array | string>();
  for (const [binding, list] of byBinding) {
    const dir = byBinding.size === 1 ? "adapter" : `adapter-${binding}`;
    const tensors = new Map<string, TensorToWrite>();
    for (const l of list) {
      const module = l.path.slice(binding.length + 1);
      for (const ab of ["lora_A", "lora_B"]) {
        const t = params.get(`${l.path}.${ab}.weight`);
        if (!t) continue;
        if (!(t.data instanceof Float32Array)) continue;
        tensors.set(`base_model.model.${module}.${ab}.weight`, {
          dtype: "F32",
          shape: [...t.shape],
          data: t.data,
        });
      }
    }
    if (tensors.size === 0) continue;
    const [first] = list;
    const rankPattern = Object.fromEntries(
      list.filter((l) => l.r !== first!.r).map((l) => [l.path.slice(binding.length + 1), l.r]),
    );
    const alphaPattern = Object.fromEntries(
      list
        .filter((l) => l.alpha !== first!.alpha)
        .map((l) => [l.path.slice(binding.length + 1), l.alpha]),
    );
    const config = {
      peft_type: "LORA",
      r: first!.r,
      lora_alpha: first!.alpha,
      target_modules: [...new Set(list.map((l) => l.path.slice(l.path.lastIndexOf(".") + 1)))],
      rank_pattern: rankPattern,
      alpha_pattern: alphaPattern,
      bias: "none",
      use_rslora: false,
      use_dora: false,
      base_model_name_or_path: null,
      task_type: null,
    };
    files.set(`${dir}/adapter_config.json`, JSON.stringify(config, null, 2) + "\n");
    files.set(
      `${dir}/adapter_model.safetensors`,
      writeSafetensors(tensors, { format: "pt", producer: "moec" }),
    );
  }
  return files;
}
