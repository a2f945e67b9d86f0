/**
 * Named maps from other ecosystems' checkpoint layouts to moec parameter paths, applied with
 * `moec run --weights-map NAME`. A map presents the checkpoint as a virtual safetensors file
 * whose tensors already have moec's names, shapes and layouts, so loading checks every name
 * and shape against the model before any data is read, as for a native checkpoint.
 */
import { type ReadTensor, SafetensorsFile, type TensorInfo, WeightsError } from "./safetensors.js";

/** How one moec tensor is made from one checkpoint tensor. */
interface Derived {
  source: string;
  /** The checkpoint holding `source`, when not the map's own (combined checkpoints). */
  from?: SafetensorsFile;
  shape: number[];
  /** Columns [start, start + count) of a 2-D source, or elements of a 1-D one. */
  columns?: { start: number; count: number };
  /** Rows [start, start + count) of a 2-D source (a fused LoRA B split by output). */
  rows?: { start: number; count: number };
  /** Transpose a 2-D result (Conv1D [in, out] → Linear [out, in]). */
  transpose?: boolean;
}

/** A checkpoint seen through a map: moec names, derived on read. */
class MappedCheckpoint extends SafetensorsFile {
  constructor(
    private readonly inner: SafetensorsFile,
    private readonly derived: Map<string, Derived>,
  ) {
    super(
      inner.fileName,
      inner.metadata,
      [...derived].map(([name, d]) => ({
        name,
        dtype: (d.from ?? inner).info(d.source).dtype,
        shape: d.shape,
        begin: 0,
        end: 0,
      })),
      0,
      // Never read: every tensor is derived from the inner file in read().
      { read: () => new Uint8Array(0), fresh: true },
    );
  }

  override info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t)
      throw new WeightsError("not-found", this.fileName, `${this.fileName}: no tensor "${name}"`);
    return t;
  }

  /** The file and key `name` is read from, through every map and combination. */
  origin(name: string): { fileName: string; key: string } {
    const d = this.derived.get(name);
    if (!d) return { fileName: this.fileName, key: name };
    const inner = d.from ?? this.inner;
    return inner instanceof MappedCheckpoint
      ? inner.origin(d.source)
      : { fileName: inner.fileName, key: d.source };
  }

  override read(name: string): ReadTensor {
    const d = this.derived.get(name);
    if (!d)
      throw new WeightsError("not-found", this.fileName, `${this.fileName}: no tensor "${name}"`);
    const src = (d.from ?? this.inner).read(d.source);
    const data = src.data as Float32Array;
    let out: Float32Array;
    if (d.rows && src.shape.length === 2) {
      const cols = src.shape[1]!;
      out = data.slice(d.rows.start * cols, (d.rows.start + d.rows.count) * cols);
    } else if (d.columns && src.shape.length === 2) {
      const [rows, cols] = src.shape as [number, number];
      out = new Float32Array(rows * d.columns.count);
      for (let r = 0; r < rows; r++) {
        out.set(
          data.subarray(r * cols + d.columns.start, r * cols + d.columns.start + d.columns.count),
          r * d.columns.count,
        );
      }
      if (d.transpose) out = transpose(out, rows, d.columns.count);
    } else if (d.columns) {
      out = data.slice(d.columns.start, d.columns.start + d.columns.count);
    } else if (d.transpose && src.shape.length === 2) {
      out = transpose(data, src.shape[0]!, src.shape[1]!);
    } else out = Float32Array.from(data);
    return { name, dtype: src.dtype, shape: d.shape, data: out };
  }
}

/** The file and key a tensor of `file` (a checkpoint seen through maps, or a plain one) is read from. */
export function checkpointOrigin(
  file: SafetensorsFile,
  name: string,
): { fileName: string; key: string } {
  return file instanceof MappedCheckpoint
    ? file.origin(name)
    : { fileName: file.fileName, key: name };
}

/** `file` with its tensors renamed (a name mapped to undefined is left out). */
export function renameCheckpoint(
  file: SafetensorsFile,
  rename: (name: string) => string | undefined,
): SafetensorsFile {
  const derived = new Map<string, Derived>();
  for (const name of file.names()) {
    const ours = rename(name);
    if (ours !== undefined) derived.set(ours, { source: name, shape: [...file.info(name).shape] });
  }
  return new MappedCheckpoint(file, derived);
}

/**
 * A `moec train` checkpoint names parameters under the program's binding of each instance
 * (`net.embed.weight`); a model run on its own names them from itself (`embed.weight`). Where
 * no key of `file` is a parameter of the model but the keys under one binding name every
 * parameter, those keys, unprefixed, and that binding; otherwise undefined (use the file as
 * it is). Keys under other bindings (teachers, heads) are left out.
 */
export function trainedInstance(
  file: SafetensorsFile,
  paramPaths: readonly string[],
): { file: SafetensorsFile; binding: string } | undefined {
  const names = file.names();
  const own = new Set(paramPaths);
  if (paramPaths.length === 0 || names.some((n) => own.has(n))) return undefined;
  const bindings = new Set(
    names.flatMap((n) => (n.includes(".") ? [n.slice(0, n.indexOf("."))] : [])),
  );
  const fits = [...bindings].filter((b) => {
    const under = new Set(
      names.filter((n) => n.startsWith(`${b}.`)).map((n) => n.slice(b.length + 1)),
    );
    return paramPaths.every((p) => under.has(p));
  });
  if (fits.length !== 1) return undefined;
  const binding = fits[0]!;
  return {
    binding,
    file: renameCheckpoint(file, (n) =>
      n.startsWith(`${binding}.`) ? n.slice(binding.length + 1) : undefined,
    ),
  };
}

/** Several checkpoints as one (a base model and an adapter); a name in two is an error. */
export function combineCheckpoints(files: readonly SafetensorsFile[]): SafetensorsFile {
  const derived = new Map<string, Derived>();
  for (const file of files) {
    for (const name of file.names()) {
      const first = derived.get(name);
      if (first) {
        throw new WeightsError(
          "duplicate-key",
          file.fileName,
          `${name} is in both ${first.from!.fileName} and ${file.fileName}`,
        );
      }
      derived.set(name, { source: name, from: file, shape: [...file.info(name).shape] });
    }
  }
  return new MappedCheckpoint(files[0]!, derived);
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c]!;
  return out;
}

/**
 * Hugging Face GPT-2 (`GPT2LMHeadModel` or `GPT2Model` safetensors) onto moec's GPT-2 layout
 * (`examples/gpt2.moe`: `wte`, `wpe`, `h.N.layer.{ln_1, attn.{q,k,v,o}, ln_2, mlp.{up,down}}`,
 * `ln_f`, under whatever prefix the model binds it). Conv1D weights are stored [in, out]: they
 * are transposed; `c_attn` holds q, k and v side by side and is split. `lm_head.weight` is the
 * tied `wte.weight` and the causal-mask buffers are not parameters: both are left out.
 */
function hfGpt2(file: SafetensorsFile, paramPaths: readonly string[]): SafetensorsFile {
  const wte = paramPaths.find((p) => p.endsWith("wte.weight"));
  if (!wte) {
    throw new WeightsError(
      "mismatch",
      file.fileName,
      `${file.fileName}: --weights-map hf-gpt2 needs a model with a GPT-2 layout (no parameter ends in wte.weight)`,
    );
  }
  const prefix = wte.slice(0, -"wte.weight".length);
  // GPT2LMHeadModel's keys start with "transformer."; GPT2Model's (and adapters on it) do not.
  const hfPrefix = file.names().some((n) => n.startsWith("transformer.")) ? "transformer." : "";
  const derived = new Map<string, Derived>();
  const keep = (ours: string, theirs: string, extra: Partial<Derived> = {}) => {
    if (!file.has(theirs)) return;
    const info = file.info(theirs);
    let shape = [...info.shape];
    if (extra.columns)
      shape = shape.length === 2 ? [shape[0]!, extra.columns.count] : [extra.columns.count];
    if (extra.transpose && shape.length === 2) shape = [shape[1]!, shape[0]!];
    derived.set(prefix + ours, { source: theirs, shape, ...extra });
  };
  keep("wte.weight", `${hfPrefix}wte.weight`);
  keep("wpe.weight", `${hfPrefix}wpe.weight`);
  keep("ln_f.weight", `${hfPrefix}ln_f.weight`);
  keep("ln_f.bias", `${hfPrefix}ln_f.bias`);
  for (const name of file.names()) {
    const m = new RegExp(`^${hfPrefix.replace(".", "\\.")}h\\.(\\d+)\\.(.+)$`).exec(name);
    if (!m) continue;
    const [, i, rest] = m as unknown as [string, string, string];
    const ours = `h.${i}.layer.`;
    const lora = /^(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(lora_[AB])\.weight$/.exec(
      rest,
    );
    if (lora) {
      // LoRA matrices are nn.Linear-shaped in PEFT even on Conv1D: nothing to transpose. The
      // fused c_attn adapter is one A for q, k and v, and a B whose rows are q's, k's, v's.
      const [, module, matrix] = lora as unknown as [string, string, string];
      const layers: Record<string, string> = {
        "attn.c_proj": "attn.o",
        "mlp.c_fc": "mlp.up",
        "mlp.c_proj": "mlp.down",
      };
      if (module !== "attn.c_attn") keep(`${ours}${layers[module]}.${matrix}.weight`, name);
      else {
        const out = file.info(name).shape[0]! / 3;
        ["q", "k", "v"].forEach((p, j) => {
          if (matrix === "lora_A") keep(`${ours}attn.${p}.lora_A.weight`, name);
          else {
            const r = file.info(name).shape[1]!;
            derived.set(prefix + `${ours}attn.${p}.lora_B.weight`, {
              source: name,
              shape: [out, r],
              rows: { start: j * out, count: out },
            });
          }
        });
      }
      continue;
    }
    switch (rest) {
      case "ln_1.weight":
      case "ln_1.bias":
      case "ln_2.weight":
      case "ln_2.bias":
        keep(ours + rest, name);
        break;
      case "attn.c_attn.weight":
      case "attn.c_attn.bias": {
        const info = file.info(name);
        const width = info.shape[info.shape.length - 1]! / 3;
        const kind = rest.endsWith("weight") ? "weight" : "bias";
        ["q", "k", "v"].forEach((p, j) =>
          keep(`${ours}attn.${p}.${kind}`, name, {
            columns: { start: j * width, count: width },
            transpose: kind === "weight",
          }),
        );
        break;
      }
      case "attn.c_proj.weight":
        keep(`${ours}attn.o.weight`, name, { transpose: true });
        break;
      case "attn.c_proj.bias":
        keep(`${ours}attn.o.bias`, name);
        break;
      case "mlp.c_fc.weight":
        keep(`${ours}mlp.up.weight`, name, { transpose: true });
        break;
      case "mlp.c_fc.bias":
        keep(`${ours}mlp.up.bias`, name);
        break;
      case "mlp.c_proj.weight":
        keep(`${ours}mlp.down.weight`, name, { transpose: true });
        break;
      case "mlp.c_proj.bias":
        keep(`${ours}mlp.down.bias`, name);
        break;
      default:
        // attn.bias / attn.masked_bias: the causal mask as a buffer, not a parameter.
        if (!rest.endsWith("attn.bias") && !rest.endsWith("attn.masked_bias")) {
          derived.set(name, { source: name, shape: [...file.info(name).shape] });
        }
    }
  }
  // Anything else the checkpoint holds (except the tied head) shows up as unexpected.
  for (const name of file.names()) {
    if (name === "lm_head.weight" || name.startsWith(`${hfPrefix}h.`) || derived.has(name))
      continue;
    if ([...derived.values()].some((d) => d.source === name)) continue;
    derived.set(name, { source: name, shape: [...file.info(name).shape] });
  }
  return new MappedCheckpoint(file, derived);
}

/**
 * Hugging Face Mixtral (`MixtralForCausalLM` safetensors) onto moec's Mixtral layout
 * (`examples/mixtral.moe`: Hugging Face's binding names, `MoE(router: TopK(2), experts:
 * [SwiGLU(d, h); E])` as `block_sparse_moe`). Weights keep nn.Linear's [out, in]; the renames:
 * `model.` dropped, `self_attn.q_proj` → `self_attn.q` (k, v, o alike), `block_sparse_moe.gate`
 * → `block_sparse_moe.router.gate`, experts' `w1` → `gate`, `w3` → `up`, `w2` → `down`.
 * Rotary-embedding buffers are not parameters and are left out.
 */
function hfMixtral(file: SafetensorsFile, paramPaths: readonly string[]): SafetensorsFile {
  const pattern = /^((?:.*\.)?)layers\.\d+\.block_sparse_moe\.router\.gate\.weight$/;
  const anchor = paramPaths.map((p) => pattern.exec(p)).find((m) => m !== null);
  if (!anchor) {
    throw new WeightsError(
      "mismatch",
      file.fileName,
      `${file.fileName}: --weights-map hf-mixtral needs a model with Mixtral's layout (no parameter layers.N.block_sparse_moe.router.gate.weight; see examples/mixtral.moe)`,
    );
  }
  const prefix = anchor[1]!;
  const derived = new Map<string, Derived>();
  for (const name of file.names()) {
    if (name.endsWith("rotary_emb.inv_freq")) continue;
    const ours = name
      .replace(/^model\./, "")
      .replace(/\.self_attn\.([qkvo])_proj\./, ".self_attn.$1.")
      .replace(/\.block_sparse_moe\.gate\./, ".block_sparse_moe.router.gate.")
      .replace(/\.experts\.(\d+)\.w([123])\./, (_, e: string, w: string) => {
        const role = w === "1" ? "gate" : w === "3" ? "up" : "down";
        return `.experts.${e}.${role}.`;
      });
    derived.set(prefix + ours, { source: name, shape: [...file.info(name).shape] });
  }
  return new MappedCheckpoint(file, derived);
}

/** The maps `--weights-map` accepts. */
export const WEIGHT_MAPS: ReadonlyMap<
  string,
  { describe: string; apply(file: SafetensorsFile, paramPaths: readonly string[]): SafetensorsFile }
> = new Map([
  [
    "hf-gpt2",
    { describe: "Hugging Face GPT-2 (transformer.h.N.attn.c_attn, Conv1D layouts)", apply: hfGpt2 },
  ],
  [
    "hf-mixtral",
    {
      describe: "Hugging Face Mixtral (model.layers.N.block_sparse_moe.experts.E.w1/w2/w3)",
      apply: hfMixtral,
    },
  ],
]);
