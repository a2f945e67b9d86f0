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
import type { PlacedLora } from "../compiler/lower/lowering-hooks.js";
import { checkpointOrigin, renameCheckpoint } from "./weight-maps.js";

/** One entry of PEFT's rank_pattern or alpha_pattern: a regular expression over module names. */
export interface PeftPatternEntry {
  key: string;
  value: number;
  /** PEFT's match: `re.match(rf"(.*\.)?({key})$", module)`. */
  regex: RegExp;
}

/** What moec uses of adapter_config.json. */
export interface PeftConfig {
  /** LoRA rank and alpha: the scale is alpha / r, or alpha / √r with use_rslora. */
  r: number;
  alpha: number;
  rslora: boolean;
  /** PEFT's target_modules (module names). */
  targets: string[];
  /** Per-module exceptions to r and lora_alpha (PEFT's rank_pattern, alpha_pattern), in order. */
  rankPattern: PeftPatternEntry[];
  alphaPattern: PeftPatternEntry[];
}

/** A PEFT module's rank, alpha and scale under `config`, and the pattern keys that set them. */
export interface PeftModuleScale {
  r: number;
  alpha: number;
  scale: number;
  rankKey?: string;
  alphaKey?: string;
}

/**
 * A module's rank, alpha and scale as PEFT computes them: the first pattern key whose regular
 * expression matches the module name (or a dotted suffix of it) overrides r or lora_alpha.
 * Two keys that match with different values are refused: PEFT versions pick differently.
 */
export function peftModuleScale(config: PeftConfig, module: string, file = ""): PeftModuleScale {
  const at = (what: string, pattern: readonly PeftPatternEntry[]) => {
    const hits = pattern.filter((e) => e.regex.test(module));
    const other = hits.find((e) => e.value !== hits[0]!.value);
    if (other)
      throw configError(
        file,
        `${what} keys ${JSON.stringify(hits[0]!.key)} and ${JSON.stringify(other.key)} both match module ${module} with different values (${hits[0]!.value}, ${other.value})`,
      );
    return hits[0];
  };
  const rank = at("rank_pattern", config.rankPattern);
  const alphaAt = at("alpha_pattern", config.alphaPattern);
  const r = rank?.value ?? config.r;
  const alpha = alphaAt?.value ?? config.alpha;
  return {
    r,
    alpha,
    scale: alpha / (config.rslora ? Math.sqrt(r) : r),
    ...(rank ? { rankKey: rank.key } : {}),
    ...(alphaAt ? { alphaKey: alphaAt.key } : {}),
  };
}

/** A `{ pattern: number }` object of adapter_config.json, in order, or a one-line error. */
function numberPattern(file: string, key: string, v: unknown): PeftPatternEntry[] {
  if (v === undefined || v === null) return [];
  if (typeof v !== "object" || Array.isArray(v))
    throw configError(file, `${key} must be an object of module names to numbers`);
  return Object.entries(v).map(([k, x]) => {
    if (typeof x !== "number" || !(x > 0))
      throw configError(file, `${key}.${k} must be a positive number, found ${JSON.stringify(x)}`);
    if (key === "rank_pattern" && !Number.isInteger(x))
      throw configError(file, `${key}.${k} must be a positive integer, found ${x}`);
    let regex: RegExp;
    try {
      regex = new RegExp(`^(?:.*\\.)?(?:${k})$`);
    } catch {
      throw configError(
        file,
        `${key} key ${JSON.stringify(k)} is not a regular expression moec reads`,
      );
    }
    return { key: k, value: x, regex };
  });
}

/** PEFT's module name of an adapter key: `base_model.model.<module>.lora_A[.<name>].weight`. */
export function peftModuleOf(key: string): string {
  return key.replace(/^base_model\.model\./, "").replace(/\.lora_[AB](?:\.[^.]+)?\.weight$/, "");
}

function configError(file: string, why: string): WeightsError {
  return new WeightsError("bad-entry", file, file ? `${file}: ${why}` : why);
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
  const config = { r, alpha, rslora: c.use_rslora === true, targets, rankPattern, alphaPattern };
  checkAdapterTensors(dir, config, renamed);
  return { config, file: renamed };
}

/**
 * Every adapted module has both its matrices, the rank of lora_A is the configured one, each
 * module is one target_modules names, and each pattern key matches a module: otherwise the
 * adapter is refused, naming the module or key (PEFT would load it differently or not at all).
 */
function checkAdapterTensors(dir: string, config: PeftConfig, file: SafetensorsFile): void {
  const configFile = path.join(dir, "adapter_config.json");
  const modules = new Map<string, { A?: number[]; B?: number[] }>();
  for (const name of file.names()) {
    const m = /^(.*)\.(lora_[AB])\.weight$/.exec(name);
    if (!m) continue;
    const entry = modules.get(m[1]!) ?? {};
    entry[m[2] === "lora_A" ? "A" : "B"] = [...file.info(name).shape];
    modules.set(m[1]!, entry);
  }
  const weightsFile = path.join(dir, "adapter_model.safetensors");
  if (modules.size === 0)
    throw new WeightsError(
      "mismatch",
      weightsFile,
      `${weightsFile}: no LoRA weights (lora_A, lora_B) in the adapter`,
    );
  for (const [module, { A, B }] of modules) {
    if (!A || !B)
      throw new WeightsError(
        "mismatch",
        weightsFile,
        `${weightsFile}: module ${module} has ${A ? "lora_A" : "lora_B"} but no ${A ? "lora_B" : "lora_A"}; an adapter's own weights are never initialised`,
      );
    const { r, rankKey } = peftModuleScale(config, module, configFile);
    if (A[0] !== r)
      throw configError(
        configFile,
        `r is ${r} for ${module}${rankKey ? ` (rank_pattern ${JSON.stringify(rankKey)})` : ""}, but its lora_A has rank ${A[0]}`,
      );
    const targeted = config.targets.some((t) => module === t || module.endsWith(`.${t}`));
    if (config.targets.length > 0 && !targeted)
      throw configError(
        configFile,
        `the adapter has weights for ${module}, which its target_modules (${config.targets.join(", ")}) do not name`,
      );
  }
  for (const [what, pattern] of [
    ["rank_pattern", config.rankPattern],
    ["alpha_pattern", config.alphaPattern],
  ] as const)
    for (const e of pattern)
      if (![...modules.keys()].some((m) => e.regex.test(m)))
        throw configError(
          configFile,
          `${what} key ${JSON.stringify(e.key)} matches no module of the adapter (${[...modules.keys()].slice(0, 3).join(", ")}${modules.size > 3 ? ", ..." : ""})`,
        );
}

/**
 * A PEFT adapter directory as tensors of the model: renamed like the base weights (`map`),
 * and checked against the model's LoRA placement both ways: the adapter adapts only modules
 * the model has a LoRA on, and feeds every LoRA the model has (its matrices are never
 * initialised, whatever `--init-missing` says), each at the scale PEFT would use there
 * (rank_pattern, alpha_pattern, use_rslora). Problems are WeightsErrors naming both sides.
 * With `task`, the adapter is that task's of the model's `per task` LoRAs: a plain PEFT LoRA
 * whose module `attn.q` feeds the model's `attn.q.<task>`; without, the model's other LoRAs.
 */
export function loadPeftAdapter(
  dir: string,
  allLoras: readonly PlacedLora[],
  paths: readonly string[],
  map: { apply(file: SafetensorsFile, paramPaths: readonly string[]): SafetensorsFile } | undefined,
  task?: string,
): SafetensorsFile {
  const { config, file } = readPeftAdapter(dir);
  const configFile = path.join(dir, "adapter_config.json");
  const loras = allLoras.filter((l) => l.task === task);
  // A task's LoRA at `<module>.<task>`: its parameter paths as the adapter names them.
  const untasked = (p: string) => (task === undefined ? p : p.replace(`.${task}.lora_`, ".lora_"));
  const mapped = map ? map.apply(file, paths.map(untasked)) : file;
  const adapter = task === undefined ? mapped : withTaskNames(mapped, task);
  const targets = config.targets.length
    ? `its target_modules: ${config.targets.join(", ")}`
    : "no target_modules";
  const few = (xs: readonly string[]) =>
    `${xs.slice(0, 3).join(", ")}${xs.length > 3 ? `, ... (${xs.length} in all)` : ""}`;
  const known = new Set(paths);
  const stray = adapter.names().filter((n) => !known.has(n));
  if (stray.length > 0) {
    throw new WeightsError(
      "mismatch",
      dir,
      `${dir}: the adapter (${targets}) adapts ${stray.length === 1 ? "a layer" : `${stray.length} layers`} the model has no LoRA on: ${few(stray)}; the model's LoRAs: ${loras.length ? few(loras.map((l) => l.path)) : "none"}; add them to the model's LoRA targets`,
    );
  }
  const provided = new Set(adapter.names());
  const unfed = loras.filter(
    (l) => !provided.has(`${l.path}.lora_A.weight`) || !provided.has(`${l.path}.lora_B.weight`),
  );
  if (unfed.length > 0) {
    throw new WeightsError(
      "mismatch",
      dir,
      `${dir}: the model has LoRA on ${few(unfed.map((l) => l.path))}, which the adapter (${targets}) does not adapt; match the model's LoRA targets to the adapter's`,
    );
  }
  for (const l of loras) {
    const key = checkpointOrigin(adapter, `${l.path}.lora_A.weight`).key;
    const module = peftModuleOf(key);
    const at = peftModuleScale(config, module, configFile);
    const mine = l.alpha / l.r;
    if (l.r !== at.r || Math.abs(at.scale - mine) > 1e-6 * Math.abs(mine)) {
      const why = [
        at.rankKey !== undefined && `rank_pattern ${JSON.stringify(at.rankKey)}`,
        at.alphaKey !== undefined && `alpha_pattern ${JSON.stringify(at.alphaKey)}`,
        config.rslora && "use_rslora",
      ].filter(Boolean);
      throw new WeightsError(
        "mismatch",
        configFile,
        `${configFile} has r ${at.r}, lora_alpha ${at.alpha} for ${l.path} (PEFT module ${module}${why.length ? `; ${why.join(", ")}` : ""}): scale ${fmtScale(at.scale)}; the model's LoRA there has r ${l.r}, alpha ${l.alpha}: scale ${fmtScale(mine)}`,
      );
    }
  }
  return adapter;
}

/** The file with `<module>.lora_A.weight` read as `<module>.<task>.lora_A.weight`. */
function withTaskNames(file: SafetensorsFile, task: string): SafetensorsFile {
  return renameCheckpoint(file, (n) => n.replace(/\.(lora_[AB]\.weight)$/, `.${task}.$1`));
}

function fmtScale(x: number): string {
  return Number(x.toPrecision(6)).toString();
}

/**
 * The LoRA adapters of a training checkpoint in PEFT's layout, as files relative to the
 * checkpoint directory: per instance binding of the program (`net`), `adapter/` (or
 * `adapter-<binding>/` when several instances have adapters) with `adapter_config.json` and
 * `adapter_model.safetensors` keyed `base_model.model.<module>.lora_A.weight`, the module path
 * relative to that instance, so `moec run --adapter` and PEFT's `PeftModel.from_pretrained`
 * load it onto the base model. Mixed ranks go in PEFT's `rank_pattern` / `alpha_pattern`.
 * `per task` LoRAs make one adapter per task, `adapter-<task>/` (`adapter-<binding>-<task>/`),
 * their modules named without the task (PEFT's named adapters: `load_adapter(dir, task)`).
 */
export function peftAdapterFiles(
  params: ReadonlyMap<string, { shape: readonly number[]; data: Float32Array | Int32Array }>,
  loras: readonly PlacedLora[],
): Map<string, Uint8Array | string> {
  // One adapter per binding, and per task for a `per task` set's LoRAs; modules relative to the
  // binding, without the task's name.
  const adapters = new Map<string, { binding: string; task?: string; list: PlacedLora[] }>();
  for (const l of loras) {
    const dot = l.path.indexOf(".");
    if (dot < 0) continue;
    const binding = l.path.slice(0, dot);
    const key = l.task === undefined ? binding : `${binding}-${l.task}`;
    const entry = adapters.get(key) ?? { binding, ...(l.task ? { task: l.task } : {}), list: [] };
    entry.list.push(l);
    adapters.set(key, entry);
  }
  const bindings = new Set([...adapters.values()].map((a) => a.binding));
  const moduleOf = (l: PlacedLora, binding: string) =>
    l.path.slice(binding.length + 1, l.task === undefined ? undefined : -(l.task.length + 1));
  const files = new Map<string, Uint8Array | string>();
  for (const { binding, task, list } of adapters.values()) {
    const name = [...(bindings.size > 1 ? [binding] : []), ...(task ? [task] : [])].join("-");
    const dir = name ? `adapter-${name}` : "adapter";
    const tensors = new Map<string, TensorToWrite>();
    for (const l of list) {
      const module = moduleOf(l, binding);
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
      list.filter((l) => l.r !== first!.r).map((l) => [moduleOf(l, binding), l.r]),
    );
    const alphaPattern = Object.fromEntries(
      list.filter((l) => l.alpha !== first!.alpha).map((l) => [moduleOf(l, binding), l.alpha]),
    );
    const config = {
      peft_type: "LORA",
      r: first!.r,
      lora_alpha: first!.alpha,
      target_modules: [
        ...new Set(
          list.map((l) => {
            const module = moduleOf(l, binding);
            return module.slice(module.lastIndexOf(".") + 1);
          }),
        ),
      ],
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
