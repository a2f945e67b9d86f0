/**
 * Seeded synthetic multi-task data sets (`moec data gen`), made here, never downloaded: the
 * small experiments of the seed papers train on them. Each set is a map of tensors, one per
 * input port of a train program, examples along the first axis, plus metadata (JSON strings)
 * that says how the tokens are laid out. The same options and seed give the same bytes.
 */
import type { TensorToWrite } from "../safetensors.js";

/** One tensor of a data set (assignable to what safetensors writes). */
export interface DataTensor extends TensorToWrite {
  dtype: "I32" | "F32";
  shape: number[];
  data: Int32Array | Float32Array;
}

/** A generated data set: tensors by name and safetensors metadata. */
export interface DataSet {
  tensors: Map<string, DataTensor>;
  metadata: Record<string, string>;
}

/** A counter-based generator (SplitMix32 steps over a seeded state): fast, seedable, portable. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = hash32(seed >>> 0) ^ 0x9e3779b9;
  }
  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return hash32(this.state);
  }
  /** Uniform in [0, 1). */
  uniform(): number {
    return this.u32() / 4294967296;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }
  /** A standard normal sample (Box-Muller). */
  normal(): number {
    const u = 1 - this.uniform();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.uniform());
  }
  /** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
  permutation(n: number): number[] {
    const p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [p[i], p[j]] = [p[j]!, p[i]!];
    }
    return p;
  }
}

/** A 32-bit integer mix (the finaliser of MurmurHash3). */
export function hash32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** A problem with the options (a one-line message for the command line). */
export class DataGenError extends Error {}

function positiveInt(name: string, v: number, max = 1 << 24): number {
  if (!Number.isInteger(v) || v < 1 || v > max)
    throw new DataGenError(`--${name} must be an integer from 1 to ${max}, got ${v}`);
  return v;
}

function fraction(name: string, v: number): number {
  if (!(v >= 0 && v <= 1)) throw new DataGenError(`--${name} must be between 0 and 1, got ${v}`);
  return v;
}

const i32 = (shape: number[], data: Int32Array): DataTensor => ({
  dtype: "I32",
  shape,
  data,
});

// ---------------------------------------------------------------- symbols

export interface SymbolsOptions {
  tasks: number;
  symbols: number;
  count: number;
  seed: number;
  /** Every (symbol, task) pair once instead of `count` random ones (an evaluation set). */
  allPairs?: boolean;
}

/**
 * Per-task symbol maps: target = π_task(symbol), one fixed random permutation π per task (the
 * task-based MoE experiment). Tensors `tokens` [N], `task` [N], `targets` [N] (i32).
 */
export function generateSymbols(o: SymbolsOptions): DataSet {
  const tasks = positiveInt("tasks", o.tasks, 4096);
  const symbols = positiveInt("symbols", o.symbols, 1 << 20);
  const mapRng = new Rng(o.seed);
  const maps = Array.from({ length: tasks }, () => mapRng.permutation(symbols));
  const n = o.allPairs ? tasks * symbols : positiveInt("count", o.count);
  const sampleRng = new Rng(o.seed + 1);
  const tokens = new Int32Array(n);
  const task = new Int32Array(n);
  const targets = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const [t, s] = o.allPairs
      ? [Math.floor(i / symbols), i % symbols]
      : [sampleRng.int(tasks), sampleRng.int(symbols)];
    tokens[i] = s;
    task[i] = t;
    targets[i] = maps[t]![s]!;
  }
  return {
    tensors: new Map([
      ["tokens", i32([n], tokens)],
      ["task", i32([n], task)],
      ["targets", i32([n], targets)],
    ]),
    metadata: {
      dataset: "symbols",
      options: JSON.stringify({ tasks, symbols, count: n, seed: o.seed, allPairs: !!o.allPairs }),
    },
  };
}

// ---------------------------------------------------------------- sequences

/** One sequence-to-sequence transformation of `length` symbols below `vocab`. */
type Transform = (x: number[], vocab: number, end: number) => number[];

/** Builds the named transforms; `cipher:K`/`perm:K` take a key that seeds their table. */
function transformOf(name: string, vocab: number, length: number): Transform {
  const keyed = /^(cipher|perm):(\d+)$/.exec(name);
  if (keyed) {
    const key = Number(keyed[2]);
    if (keyed[1] === "cipher") {
      const table = new Rng(hash32(key + 0x5bd1e995)).permutation(vocab);
      return (x) => x.map((s) => table[s]!);
    }
    const order = new Rng(hash32(key + 0x27d4eb2f)).permutation(length);
    return (x) => order.map((i) => x[i]!);
  }
  switch (name) {
    case "copy":
      return (x) => [...x];
    case "reverse":
      return (x) => [...x].reverse();
    case "sort":
      return (x) => [...x].sort((a, b) => a - b);
    case "sort_desc":
      return (x) => [...x].sort((a, b) => b - a);
    case "shift":
      return (x, v) => x.map((s) => (s + 1) % v);
    case "dedupe":
      // First occurrences in order; the freed positions hold the end token.
      return (x, _v, end) => {
        const seen = new Set<number>();
        const out = x.filter((s) => !seen.has(s) && seen.add(s));
        return [...out, ...Array<number>(x.length - out.length).fill(end)];
      };
    default:
      throw new DataGenError(
        `unknown sequence task \`${name}\`; tasks: ${SEQUENCE_TASKS.join(", ")}, cipher:K, perm:K, and compositions like reverse∘shift`,
      );
  }
}

/** The sequence tasks by name (compositions `a∘b`, also written `a+b`, apply b first). */
export const SEQUENCE_TASKS = ["copy", "reverse", "sort", "sort_desc", "shift", "dedupe"] as const;

export interface SequencesOptions {
  tasks: string[];
  vocab: number;
  length: number;
  count: number;
  seed: number;
}

/**
 * Token sequences for a decoder with task tokens: `[task token, x₁..x_L, sep, y₁..y_L]` where
 * y is the task's transform of x. Symbols are 0..vocab-1, `sep` = vocab, the task token of
 * task t = vocab + 1 + t. Tensors: `tokens` [N, 2L+1] (the sequence without its last token),
 * `targets` [N, 2L+1] (the next token; -100, cross-entropy's ignore index, where it is not
 * part of y), `task` [N].
 */
export function generateSequences(o: SequencesOptions): DataSet {
  if (o.tasks.length === 0) throw new DataGenError("--tasks needs at least one task");
  const vocab = positiveInt("vocab", o.vocab, 1 << 20);
  const length = positiveInt("length", o.length, 4096);
  const n = positiveInt("count", o.count);
  const sep = vocab;
  const transforms = o.tasks.map((name) =>
    name
      .split(/[∘+]/)
      .map((part) => transformOf(part.trim(), vocab, length))
      .reverse(),
  );
  const width = 2 * length + 1;
  const tokens = new Int32Array(n * width);
  const targets = new Int32Array(n * width);
  const task = new Int32Array(n);
  const rng = new Rng(o.seed);
  for (let i = 0; i < n; i++) {
    const t = rng.int(o.tasks.length);
    const x = Array.from({ length }, () => rng.int(vocab));
    const y = transforms[t]!.reduce((v, f) => f(v, vocab, sep), x);
    const seq = [vocab + 1 + t, ...x, sep, ...y];
    for (let j = 0; j < width; j++) {
      tokens[i * width + j] = seq[j]!;
      // Position j predicts seq[j + 1]; only y's tokens are scored.
      targets[i * width + j] = j + 1 >= length + 2 ? seq[j + 1]! : -100;
    }
    task[i] = t;
  }
  return {
    tensors: new Map([
      ["tokens", i32([n, width], tokens)],
      ["targets", i32([n, width], targets)],
      ["task", i32([n], task)],
    ]),
    metadata: {
      dataset: "sequences",
      options: JSON.stringify({ tasks: o.tasks, vocab, length, count: n, seed: o.seed }),
      layout: JSON.stringify({ sep, taskTokens: vocab + 1, vocabSize: vocab + 1 + o.tasks.length }),
    },
  };
}

// ---------------------------------------------------------------- related classification

export interface RelatedOptions {
  tasks: number;
  classes: number;
  features: number;
  /** 0: unrelated tasks; 1: one shared labelling rule. */
  relatedness: number;
  /** The fraction of labels replaced by a uniformly random class. */
  noise: number;
  count: number;
  seed: number;
  /** > 0: sequences of `length` positions, each labelled by its task's rule (token labelling). */
  length?: number;
}

/**
 * Related classification tasks: x ~ N(0, I) in `features` dims; task t labels x by
 * argmax(W_t x), W_t = √r·W_shared + √(1-r)·W_own,t (r the relatedness); a `noise` fraction
 * of labels is replaced by a random class. Tensors `x` [N, features] (f32), `task` [N],
 * `label` [N] (i32); with `length` L, `x` [N, L, features] and `label` [N, L], every position
 * labelled by the example's task. The rules depend on the seed only, so a training and an
 * evaluation set made with one seed and different `--sample-seed`s share them; the noise
 * level changes labels only.
 */
export function generateRelated(o: RelatedOptions & { sampleSeed?: number }): DataSet {
  const tasks = positiveInt("tasks", o.tasks, 4096);
  const classes = positiveInt("classes", o.classes, 4096);
  const features = positiveInt("features", o.features, 65536);
  const n = positiveInt("count", o.count);
  const r = fraction("relatedness", o.relatedness);
  const noise = fraction("noise", o.noise);
  const length =
    o.length === undefined || o.length === 0 ? 0 : positiveInt("length", o.length, 4096);
  const positions = Math.max(length, 1);
  const ruleRng = new Rng(o.seed);
  const matrix = () => Array.from({ length: classes * features }, () => ruleRng.normal());
  const shared = matrix();
  const rules = Array.from({ length: tasks }, () => {
    const own = matrix();
    return own.map((w, i) => Math.sqrt(r) * shared[i]! + Math.sqrt(1 - r) * w);
  });
  const sampleSeed = hash32((o.sampleSeed ?? o.seed + 1) >>> 0);
  const rng = new Rng(sampleSeed ^ 0x7f4a7c15);
  // Its own stream, so the noise level changes labels only, never the samples.
  const noiseRng = new Rng(sampleSeed ^ 0x165667b1);
  const x = new Float32Array(n * positions * features);
  const task = new Int32Array(n);
  const label = new Int32Array(n * positions);
  for (let i = 0; i < n; i++) {
    const t = rng.int(tasks);
    task[i] = t;
    for (let j = i * positions; j < (i + 1) * positions; j++) {
      for (let f = 0; f < features; f++) x[j * features + f] = rng.normal();
      let best = 0;
      let bestScore = -Infinity;
      for (let c = 0; c < classes; c++) {
        let s = 0;
        for (let f = 0; f < features; f++) s += rules[t]![c * features + f]! * x[j * features + f]!;
        if (s > bestScore) [best, bestScore] = [c, s];
      }
      const flip = noiseRng.uniform() < noise;
      const random = noiseRng.int(classes);
      label[j] = flip ? random : best;
    }
  }
  const lead = length > 0 ? [n, length] : [n];
  return {
    tensors: new Map<string, DataTensor>([
      ["x", { dtype: "F32", shape: [...lead, features], data: x }],
      ["task", i32([n], task)],
      ["label", i32(lead, label)],
    ]),
    metadata: {
      dataset: "related",
      options: JSON.stringify({
        tasks,
        classes,
        features,
        relatedness: r,
        noise,
        count: n,
        seed: o.seed,
        sampleSeed: o.sampleSeed ?? null,
        ...(length > 0 ? { length } : {}),
      }),
    },
  };
}

// ---------------------------------------------------------------- premise/hypothesis pairs

export interface NliOptions {
  vocab: number;
  length: number;
  count: number;
  seed: number;
}

/**
 * Inference and extractive QA over symbol sequences, the ROaD experiment in miniature:
 * `tokens` [N, 2L+1] is `[premise x₁..x_L, sep, hypothesis h₁..h_L]`; `nli_labels` [N] is
 * 0 (entailment: h is a reordering of x), 1 (contradiction: h shares no symbol with x) or 2
 * (neutral: some but not all of h is x's); `qa_start` [N] is the position in `tokens` of h₁'s
 * first occurrence in the premise, -100 (ignored by cross-entropy) where it has none. The
 * three labels are equally likely; symbols are 0..vocab-1, `sep` = vocab.
 */
export function generateNli(o: NliOptions): DataSet {
  const vocab = positiveInt("vocab", o.vocab, 1 << 20);
  const length = positiveInt("length", o.length, 4096);
  if (length < 2 || vocab < 2 * length)
    throw new DataGenError(
      `nli needs --length of at least 2 and --vocab of at least twice it (a contradiction draws L symbols the premise lacks), got --length ${length} --vocab ${vocab}`,
    );
  const n = positiveInt("count", o.count);
  const sep = vocab;
  const width = 2 * length + 1;
  const tokens = new Int32Array(n * width);
  const labels = new Int32Array(n);
  const qaStart = new Int32Array(n);
  const rng = new Rng(o.seed);
  for (let i = 0; i < n; i++) {
    const label = rng.int(3);
    const x = Array.from({ length }, () => rng.int(vocab));
    const absent = [...Array(vocab).keys()].filter((s) => !x.includes(s));
    const foreign = () => absent[rng.int(absent.length)]!;
    let h = rng.permutation(length).map((j) => x[j]!);
    if (label === 1) h = h.map(foreign);
    // Neutral: 1..L-1 symbols replaced by ones the premise lacks, then shuffled.
    if (label === 2) {
      const replaced = 1 + rng.int(length - 1);
      h = rng.permutation(length).map((j) => (j < replaced ? foreign() : h[j]!));
    }
    tokens.set([...x, sep, ...h], i * width);
    labels[i] = label;
    const at = x.indexOf(h[0]!);
    qaStart[i] = at < 0 ? -100 : at;
  }
  return {
    tensors: new Map([
      ["tokens", i32([n, width], tokens)],
      ["nli_labels", i32([n], labels)],
      ["qa_start", i32([n], qaStart)],
    ]),
    metadata: {
      dataset: "nli",
      options: JSON.stringify({ vocab, length, count: n, seed: o.seed }),
      layout: JSON.stringify({ sep, vocabSize: vocab + 1 }),
    },
  };
}
