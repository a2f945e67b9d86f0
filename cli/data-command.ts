/** `moec data gen NAME -o FILE`: writes a seeded synthetic multi-task data set (safetensors). */
import { writeSafetensorsFile } from "../runtime/safetensors.js";
import {
  type DataSet,
  DataGenError,
  SEQUENCE_TASKS,
  generateNli,
  generateRelated,
  generateSequences,
  generateSymbols,
} from "../runtime/data/synthetic.js";
import { CliError, EXIT_OK, EXIT_USAGE, displayPath } from "./report.js";

/** The command line's options (strings as commander gives them). */
export interface DataGenOptions {
  output?: string;
  seed?: string;
  count?: string;
  tasks?: string;
  symbols?: string;
  vocab?: string;
  length?: string;
  classes?: string;
  features?: string;
  relatedness?: string;
  noise?: string;
  sampleSeed?: string;
  allPairs?: boolean;
  json?: boolean;
}

/** Each data set: what it is, and how to make it from the options. */
export const DATA_SETS: Record<string, { about: string; make: (o: DataGenOptions) => DataSet }> = {
  symbols: {
    about:
      "per-task symbol maps: targets = a fixed permutation of the symbol per task (--tasks 16 --symbols 64; --all-pairs for every pair once)",
    make: (o) =>
      generateSymbols({
        tasks: int(o.tasks ?? "16", "tasks"),
        symbols: int(o.symbols ?? "64", "symbols"),
        count: int(o.count ?? "4096", "count"),
        seed: int(o.seed ?? "0", "seed"),
        allPairs: o.allPairs === true,
      }),
  },
  sequences: {
    about: `sequence tasks with task tokens (--tasks copy,reverse,... from ${SEQUENCE_TASKS.join(", ")}, cipher:K, perm:K, compositions a∘b or a+b; --vocab 16 --length 8)`,
    make: (o) =>
      generateSequences({
        tasks: (o.tasks ?? "copy,reverse,sort,shift").split(",").map((t) => t.trim()),
        vocab: int(o.vocab ?? "16", "vocab"),
        length: int(o.length ?? "8", "length"),
        count: int(o.count ?? "4096", "count"),
        seed: int(o.seed ?? "0", "seed"),
      }),
  },
  related: {
    about:
      "related classification tasks: labels from argmax(W_t x) with W_t mixing a shared and an own rule (--tasks 4 --classes 4 --features 16 --relatedness 0.8 --noise 0; --length L labels each of L positions)",
    make: (o) =>
      generateRelated({
        tasks: int(o.tasks ?? "4", "tasks"),
        classes: int(o.classes ?? "4", "classes"),
        features: int(o.features ?? "16", "features"),
        relatedness: num(o.relatedness ?? "0.8", "relatedness"),
        noise: num(o.noise ?? "0", "noise"),
        count: int(o.count ?? "1000", "count"),
        seed: int(o.seed ?? "0", "seed"),
        ...(o.length !== undefined ? { length: int(o.length, "length") } : {}),
        ...(o.sampleSeed !== undefined ? { sampleSeed: int(o.sampleSeed, "sample-seed") } : {}),
      }),
  },
  nli: {
    about:
      "premise/hypothesis pairs: nli_labels entailment (reordered), contradiction (disjoint), neutral; qa_start where the hypothesis's first symbol is in the premise (--vocab 16 --length 4)",
    make: (o) =>
      generateNli({
        vocab: int(o.vocab ?? "16", "vocab"),
        length: int(o.length ?? "4", "length"),
        count: int(o.count ?? "4096", "count"),
        seed: int(o.seed ?? "0", "seed"),
      }),
  },
};

function int(v: string, name: string): number {
  const n = Number(v);
  if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n))
    throw new CliError(`--${name} must be an integer, got \`${v}\``, EXIT_USAGE);
  return n;
}

function num(v: string, name: string): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n))
    throw new CliError(`--${name} must be a number, got \`${v}\``, EXIT_USAGE);
  return n;
}

export function listDataSets(): string {
  return Object.entries(DATA_SETS)
    .map(([name, s]) => `${name.padEnd(10)} ${s.about}`)
    .join("\n");
}

export function runDataGen(name: string, o: DataGenOptions): number {
  const set = DATA_SETS[name];
  if (!set)
    throw new CliError(
      `unknown data set \`${name}\`; data sets: ${Object.keys(DATA_SETS).join(", ")}`,
      EXIT_USAGE,
    );
  if (!o.output) throw new CliError("missing -o FILE (where to write the data set)", EXIT_USAGE);
  let data: DataSet;
  try {
    data = set.make(o);
  } catch (e) {
    if (e instanceof DataGenError) throw new CliError(e.message, EXIT_USAGE);
    throw e;
  }
  writeSafetensorsFile(o.output, data.tensors, data.metadata);
  const tensors = [...data.tensors].map(([tensor, t]) => ({
    name: tensor,
    dtype: t.dtype,
    shape: [...t.shape],
  }));
  if (o.json)
    process.stdout.write(
      JSON.stringify({ file: o.output, dataset: name, tensors, metadata: data.metadata }) + "\n",
    );
  else
    process.stdout.write(
      `wrote ${displayPath(o.output)}: ${tensors.map((t) => `${t.name} ${t.dtype.toLowerCase()}[${t.shape.join(", ")}]`).join(", ")}\n`,
    );
  return EXIT_OK;
}
