/**
 * PEFT LoRA adapters (`moec run --adapter DIR`): a directory saved by Hugging Face PEFT with
 * `adapter_config.json` and `adapter_model.safetensors`. The keys are PEFT's
 * (`base_model.model.<module path>.lora_A.weight`, [r, in]; `lora_B.weight`, [out, r]); they
 * become module paths of the base checkpoint's layout, which a weights map (`--weights-map`)
 * then renames like the base weights, so adapter and base load by the same names.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { type SafetensorsFile, WeightsError, readSafetensorsFile } from "./safetensors.js";
import { renameCheckpoint } from "./weight-maps.js";

/** What moec uses of adapter_config.json. */
export interface PeftConfig {
  /** LoRA rank and alpha: the scale is alpha / r. */
  r: number;
  alpha: number;
  /** PEFT's target_modules (module names), for messages. */
  targets: string[];
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
  return { config: { r, alpha, targets }, file: renamed };
}
