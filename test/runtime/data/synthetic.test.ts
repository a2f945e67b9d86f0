// `moec data gen`: the synthetic data sets are what their documentation says, deterministic
// per seed, and the command writes them as safetensors or refuses bad options in one line.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  type DataSet,
  generateNli,
  generateRelated,
  generateSequences,
  generateSymbols,
} from "../../../runtime/data/synthetic.js";
import { readSafetensorsFile, writeSafetensors } from "../../../runtime/safetensors.js";

const root = path.join(import.meta.dirname, "../../..");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-data-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const ints = (d: DataSet, name: string) => Array.from(d.tensors.get(name)!.data);

describe("symbols", () => {
  it("maps each symbol by one permutation per task", () => {
    const d = generateSymbols({ tasks: 5, symbols: 7, count: 2000, seed: 3 });
    const [x, t, y] = [ints(d, "tokens"), ints(d, "task"), ints(d, "targets")];
    const maps = new Map<string, number>();
    for (let i = 0; i < x.length; i++) {
      const key = `${t[i]},${x[i]}`;
      expect(maps.get(key) ?? y[i]).toBe(y[i]); // a function of (task, symbol)
      maps.set(key, y[i]!);
    }
    expect(maps.size).toBe(35); // every pair seen at this count
    for (let task = 0; task < 5; task++) {
      const image = new Set([...Array(7).keys()].map((s) => maps.get(`${task},${s}`)));
      expect(image.size).toBe(7); // a permutation
    }
    // Tasks differ (a fixed map per task, not one shared map).
    const row = (task: number) => [...Array(7).keys()].map((s) => maps.get(`${task},${s}`));
    expect(new Set([0, 1, 2, 3, 4].map((k) => row(k).join())).size).toBeGreaterThan(1);
  });

  it("lists every pair once with --all-pairs, with the same maps", () => {
    const all = generateSymbols({ tasks: 3, symbols: 4, count: 1, seed: 9, allPairs: true });
    const some = generateSymbols({ tasks: 3, symbols: 4, count: 500, seed: 9 });
    expect(all.tensors.get("tokens")!.shape).toEqual([12]);
    const pairs = new Map<string, number>();
    const [x, t, y] = [ints(all, "tokens"), ints(all, "task"), ints(all, "targets")];
    x.forEach((s, i) => pairs.set(`${t[i]},${s}`, y[i]!));
    expect(pairs.size).toBe(12);
    const [x2, t2, y2] = [ints(some, "tokens"), ints(some, "task"), ints(some, "targets")];
    x2.forEach((s, i) => expect(pairs.get(`${t2[i]},${s}`)).toBe(y2[i]));
  });
});

describe("sequences", () => {
  const L = 6;
  const V = 9;
  const oneOf = (tasks: string[], seed = 1) => {
    const d = generateSequences({ tasks, vocab: V, length: L, count: 40, seed });
    const tokens = ints(d, "tokens");
    const targets = ints(d, "targets");
    const w = 2 * L + 1;
    return [...Array(40).keys()].map((i) => {
      const row = tokens.slice(i * w, (i + 1) * w);
      const tgt = targets.slice(i * w, (i + 1) * w);
      const seq = [...row, tgt[w - 1]!];
      return { task: ints(d, "task")[i]!, seq, tgt, x: seq.slice(1, L + 1), y: seq.slice(L + 2) };
    });
  };

  it("lays out [task token, x, sep, y] and scores only y", () => {
    for (const ex of oneOf(["copy", "reverse"])) {
      expect(ex.seq[0]).toBe(V + 1 + ex.task);
      expect(ex.seq[L + 1]).toBe(V); // sep
      ex.x.forEach((s) => expect(s).toBeLessThan(V));
      expect(ex.tgt.slice(0, L + 1)).toEqual(Array(L + 1).fill(-100));
      expect(ex.tgt.slice(L + 1)).toEqual(ex.y);
    }
  });

  it("computes each task's transform", () => {
    const expected: Record<string, (x: number[]) => number[]> = {
      copy: (x) => x,
      reverse: (x) => [...x].reverse(),
      sort: (x) => [...x].sort((a, b) => a - b),
      sort_desc: (x) => [...x].sort((a, b) => b - a),
      shift: (x) => x.map((s) => (s + 1) % V),
      dedupe: (x) => {
        const out = [...new Set(x)];
        return [...out, ...Array(x.length - out.length).fill(V)];
      },
      // reverse∘shift: shift first, then reverse.
      "reverse∘shift": (x) => x.map((s) => (s + 1) % V).reverse(),
      "sort+shift": (x) => x.map((s) => (s + 1) % V).sort((a, b) => a - b),
    };
    const names = Object.keys(expected);
    for (const ex of oneOf(names, 5)) expect(ex.y).toEqual(expected[names[ex.task]!]!(ex.x));
  });

  it("makes keyed ciphers and permutations: fixed per key, different across keys", () => {
    const exs = oneOf(["cipher:1", "cipher:2", "perm:1"], 7);
    const table = [new Map<number, number>(), new Map<number, number>()];
    for (const ex of exs.filter((e) => e.task < 2))
      ex.x.forEach((s, i) => {
        expect(table[ex.task]!.get(s) ?? ex.y[i]).toBe(ex.y[i]);
        table[ex.task]!.set(s, ex.y[i]!);
      });
    expect([...table[0]!].join()).not.toBe([...table[1]!].join());
    const perms = exs.filter((e) => e.task === 2);
    expect(perms.length).toBeGreaterThan(2);
    // A permutation of positions: the same multiset, and one fixed order for every example.
    const order = (ex: (typeof perms)[0]) => ex.y.map((s) => ex.x.indexOf(s));
    for (const ex of perms) expect([...ex.y].sort()).toEqual([...ex.x].sort());
    const distinct = perms.filter((ex) => new Set(ex.x).size === L);
    for (const ex of distinct.slice(1)) expect(order(ex)).toEqual(order(distinct[0]!));
  });

  it("names an unknown task", () => {
    expect(() =>
      generateSequences({ tasks: ["copy", "rot13"], vocab: 4, length: 3, count: 2, seed: 0 }),
    ).toThrow(/unknown sequence task `rot13`/);
  });
});

describe("related", () => {
  const agreement = (relatedness: number) =>
    generateRelated({
      tasks: 2,
      classes: 4,
      features: 12,
      relatedness,
      noise: 0,
      count: 3000,
      seed: 4,
    });

  it("labels by each task's rule: related tasks agree, unrelated ones do not", () => {
    // With relatedness 1 every task has the shared rule, so (x → label) ignores the task.
    const same = agreement(1);
    const diff = agreement(0);
    const fit = (d: ReturnType<typeof agreement>) => {
      // Nearest-neighbour label agreement across tasks: for each example of task 1, the label
      // of the closest example of task 0.
      const x = Array.from(d.tensors.get("x")!.data);
      const t = ints(d, "task");
      const y = ints(d, "label");
      const f = 12;
      const idx0 = t.flatMap((k, i) => (k === 0 ? [i] : []));
      const idx1 = t.flatMap((k, i) => (k === 1 ? [i] : [])).slice(0, 300);
      let agree = 0;
      for (const i of idx1) {
        let best = -1;
        let bestCos = -Infinity;
        for (const j of idx0) {
          let dot = 0;
          let nj = 0;
          for (let c = 0; c < f; c++) {
            dot += x[i * f + c]! * x[j * f + c]!;
            nj += x[j * f + c]! ** 2;
          }
          const cos = dot / Math.sqrt(nj);
          if (cos > bestCos) [best, bestCos] = [j, cos];
        }
        if (y[best] === y[i]) agree++;
      }
      return agree / idx1.length;
    };
    expect(fit(same)).toBeGreaterThan(0.6);
    expect(fit(diff)).toBeLessThan(fit(same) - 0.2);
  });

  it("replaces about a noise fraction of labels", () => {
    const clean = generateRelated({
      tasks: 3,
      classes: 5,
      features: 8,
      relatedness: 0.5,
      noise: 0,
      count: 4000,
      seed: 2,
    });
    const noisy = generateRelated({
      tasks: 3,
      classes: 5,
      features: 8,
      relatedness: 0.5,
      noise: 0.3,
      count: 4000,
      seed: 2,
    });
    const a = ints(clean, "label");
    const b = ints(noisy, "label");
    expect(ints(clean, "task")).toEqual(ints(noisy, "task"));
    expect(Array.from(clean.tensors.get("x")!.data)).toEqual(
      Array.from(noisy.tensors.get("x")!.data),
    );
    const changed = a.filter((v, i) => v !== b[i]).length / a.length;
    // A replaced label is a uniform class, so it differs with probability 4/5: 0.3 · 0.8.
    expect(changed).toBeGreaterThan(0.2);
    expect(changed).toBeLessThan(0.28);
  });

  it("keeps the rules and changes the samples with another sample seed", () => {
    const a = generateRelated({
      tasks: 2,
      classes: 3,
      features: 4,
      relatedness: 0.5,
      noise: 0,
      count: 50,
      seed: 1,
      sampleSeed: 10,
    });
    const b = generateRelated({
      tasks: 2,
      classes: 3,
      features: 4,
      relatedness: 0.5,
      noise: 0,
      count: 50,
      seed: 1,
      sampleSeed: 11,
    });
    expect(Array.from(a.tensors.get("x")!.data)).not.toEqual(Array.from(b.tensors.get("x")!.data));
  });
});

describe("related sequences (--length)", () => {
  it("labels every position by its example's task rule, and keeps the unsequenced stream", () => {
    const options = { tasks: 3, classes: 4, features: 5, relatedness: 0, noise: 0, seed: 7 };
    const seq = generateRelated({ ...options, count: 40, length: 6 });
    expect(seq.tensors.get("x")!.shape).toEqual([40, 6, 5]);
    expect(seq.tensors.get("label")!.shape).toEqual([40, 6]);
    expect(seq.tensors.get("task")!.shape).toEqual([40]);
    // The first position is drawn as the flat set's first example and labelled by the same
    // rule of the same task.
    const flat = generateRelated({ ...options, count: 1 });
    const f0 = Array.from(flat.tensors.get("x")!.data);
    const s0 = Array.from(seq.tensors.get("x")!.data).slice(0, 5);
    expect(s0).toEqual(f0);
    expect(ints(seq, "task")[0]).toBe(ints(flat, "task")[0]);
    expect(ints(seq, "label")[0]).toBe(ints(flat, "label")[0]);
    // Labels vary along a sequence (they are per position, not per example).
    const y = ints(seq, "label");
    const varied = [...Array(40).keys()].filter((i) => new Set(y.slice(i * 6, i * 6 + 6)).size > 1);
    expect(varied.length).toBeGreaterThan(30);
  });
});

describe("nli", () => {
  it("labels entailment, contradiction and neutral by the symbols the pair shares", () => {
    const L = 5;
    const d = generateNli({ vocab: 12, length: L, count: 600, seed: 2 });
    const tokens = ints(d, "tokens");
    const labels = ints(d, "nli_labels");
    const qa = ints(d, "qa_start");
    expect(d.tensors.get("tokens")!.shape).toEqual([600, 2 * L + 1]);
    const counts = [0, 0, 0];
    for (let i = 0; i < 600; i++) {
      const row = tokens.slice(i * (2 * L + 1), (i + 1) * (2 * L + 1));
      expect(row[L]).toBe(12); // sep
      const x = row.slice(0, L);
      const h = row.slice(L + 1);
      const sorted = (v: number[]) => [...v].sort((a, b) => a - b).join();
      const shared = h.filter((s) => x.includes(s)).length;
      const expected = sorted(x) === sorted(h) ? 0 : shared === 0 ? 1 : 2;
      expect(labels[i], `example ${i}`).toBe(expected);
      counts[expected]!++;
      expect(qa[i]).toBe(x.includes(h[0]!) ? x.indexOf(h[0]!) : -100);
    }
    for (const c of counts) expect(c).toBeGreaterThan(150);
  });

  it("refuses a vocabulary too small for a contradiction", () => {
    expect(() => generateNli({ vocab: 7, length: 4, count: 8, seed: 0 })).toThrow(
      /--vocab of at least twice it/,
    );
  });
});

describe("moec data gen", () => {
  const moec = (args: string[]) => {
    const r = spawnSync(
      process.execPath,
      ["--import", "tsx", path.join(root, "cli/main.ts"), ...args],
      {
        cwd: root,
        encoding: "utf8",
        timeout: 60_000,
      },
    );
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  it("writes the same bytes for the same seed, other bytes for another", () => {
    const file = (n: string) => path.join(tmp, n);
    for (const [name, seed] of [
      ["a", "1"],
      ["b", "1"],
      ["c", "2"],
    ] as const) {
      const r = moec([
        "data",
        "gen",
        "sequences",
        "--tasks",
        "copy,sort",
        "--count",
        "64",
        "--seed",
        seed,
        "-o",
        file(`${name}.safetensors`),
      ]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(
        /^wrote .*: tokens i32\[64, 17\], targets i32\[64, 17\], task i32\[64\]\n$/,
      );
    }
    const bytes = (n: string) => fs.readFileSync(file(`${n}.safetensors`));
    expect(bytes("a").equals(bytes("b"))).toBe(true);
    expect(bytes("a").equals(bytes("c"))).toBe(false);
    const read = readSafetensorsFile(file("a.safetensors"));
    expect(read.metadata?.get("dataset")).toBe("sequences");
    expect(JSON.parse(read.metadata!.get("layout")!)).toEqual({
      sep: 16,
      taskTokens: 17,
      vocabSize: 19,
    });
  });

  it("refuses an unknown set or bad options in one line with exit 2", () => {
    const unknown = moec(["data", "gen", "imagenet", "-o", path.join(tmp, "x.safetensors")]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toBe(
      "moec: unknown data set `imagenet`; data sets: symbols, sequences, related, nli\n",
    );
    const bad = moec([
      "data",
      "gen",
      "related",
      "--noise",
      "1.5",
      "-o",
      path.join(tmp, "y.safetensors"),
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe("moec: --noise must be between 0 and 1, got 1.5\n");
    expect(fs.existsSync(path.join(tmp, "y.safetensors"))).toBe(false);
    const list = moec(["data", "gen", "--list"]);
    expect(list.code).toBe(0);
    expect(
      list.stdout
        .split("\n")
        .filter(Boolean)
        .map((l) => l.split(" ")[0]),
    ).toEqual(["symbols", "sequences", "related", "nli"]);
  });

  it("matches the library's bytes", () => {
    const out = path.join(tmp, "s.safetensors");
    expect(
      moec([
        "data",
        "gen",
        "symbols",
        "--tasks",
        "4",
        "--symbols",
        "8",
        "--count",
        "100",
        "--seed",
        "3",
        "-o",
        out,
      ]).code,
    ).toBe(0);
    const d = generateSymbols({ tasks: 4, symbols: 8, count: 100, seed: 3 });
    expect(fs.readFileSync(out).equals(Buffer.from(writeSafetensors(d.tensors, d.metadata)))).toBe(
      true,
    );
  });
});
