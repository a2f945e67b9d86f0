/**
 * The peer suite: every peer on every workload, on shared data, results grouped by workload.
 * `benchPeers()` is the `npm run bench` section; `runPeerSuite()` returns the raw timings;
 * `benchTfjsWebgpu` / `benchTfjsWasm` / `benchOnnxruntime` run one peer.
 */
import type { GpuContext } from "../../runtime/device.js";
import { openOrtPeer, type OrtPeerOptions } from "./onnx.js";
import { openTfjsPeer, type TfjsBackend } from "./tfjs.js";
import {
  DEFAULT_MOE,
  DEFAULT_TRANSFORMER,
  formatTimings,
  makeMatmul,
  makeMoe,
  makeTransformer,
  matmulName,
  moeName,
  transformerName,
  type MatmulCase,
  type MoeCase,
  type MoeConfig,
  type PeerTiming,
  type RunOptions,
  type TransformerCase,
  type TransformerConfig,
} from "./workloads.js";

export type PeerName = "tfjs-webgpu" | "tfjs-wasm" | "onnxruntime-node";

export const ALL_PEERS: readonly PeerName[] = ["onnxruntime-node", "tfjs-wasm", "tfjs-webgpu"];

/** Warm-up and timed-run counts per peer (peers left out use their defaults). */
export type PeerRuns = Partial<Record<PeerName, RunOptions>>;

export type Workload =
  | { kind: "matmul"; m: number; n: number; k: number; runs?: PeerRuns }
  | { kind: "transformer"; cfg: TransformerConfig; runs?: PeerRuns }
  | {
      kind: "moe";
      cfg: MoeConfig;
      runs?: PeerRuns;
      /** Also time ORT's dense-masked graph (labelled; never "the" ORT peer). */
      ortDenseMasked?: boolean;
    };

/**
 * The default suite, sized to stay well under a minute on 2 cores with lavapipe: TF.js WebGPU
 * gets few repetitions (seconds per MoE call there).
 */
export const PEER_WORKLOADS: readonly Workload[] = [
  {
    kind: "matmul",
    m: 1024,
    n: 1024,
    k: 1024,
    runs: { "tfjs-webgpu": { warmup: 1, runs: 3 }, "tfjs-wasm": { warmup: 1, runs: 5 } },
  },
  {
    kind: "transformer",
    cfg: DEFAULT_TRANSFORMER,
    runs: { "tfjs-webgpu": { warmup: 1, runs: 3 }, "tfjs-wasm": { warmup: 1, runs: 5 } },
  },
  {
    kind: "moe",
    cfg: DEFAULT_MOE,
    runs: { "tfjs-webgpu": { warmup: 1, runs: 2 }, "tfjs-wasm": { warmup: 1, runs: 5 } },
    ortDenseMasked: true,
  },
  {
    kind: "moe",
    cfg: { ...DEFAULT_MOE, T: 256, E: 64 },
    runs: { "tfjs-webgpu": { warmup: 1, runs: 2 }, "tfjs-wasm": { warmup: 1, runs: 3 } },
  },
];

export interface PeerSuiteOptions {
  peers?: readonly PeerName[];
  workloads?: readonly Workload[];
  /** TF.js WebGPU runs on this device instead of opening its own. */
  ctx?: GpuContext;
  ort?: OrtPeerOptions;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** Called after each timed call of a peer on a workload (by name), outside its timing. */
  between?: (workload: string, peer: PeerName) => Promise<void>;
}

/** A peer that could not be opened or failed a workload. */
export interface PeerFailure {
  peer: PeerName;
  /** The workload name, or "(open)" when the peer itself could not start. */
  name: string;
  error: string;
}

export interface PeerSuiteResult {
  timings: PeerTiming[];
  failures: PeerFailure[];
  /** One line per peer that opened: what it ran on. */
  descriptions: Partial<Record<PeerName, string>>;
}

function workloadName(w: Workload): string {
  switch (w.kind) {
    case "matmul":
      return matmulName(w.m, w.n, w.k);
    case "transformer":
      return transformerName(w.cfg);
    case "moe":
      return moeName(w.cfg);
  }
}

/** Builds (once) the data of each workload, so all peers run on the same arrays. */
class Cases {
  #cache = new Map<string, MatmulCase | TransformerCase | MoeCase>();
  get(w: Workload): MatmulCase | TransformerCase | MoeCase {
    const key = workloadName(w);
    let c = this.#cache.get(key);
    if (!c) {
      c =
        w.kind === "matmul"
          ? makeMatmul(w.m, w.n, w.k)
          : w.kind === "transformer"
            ? makeTransformer(w.cfg)
            : makeMoe(w.cfg);
      this.#cache.set(key, c);
    }
    return c;
  }
}

function errorText(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/\s+/g, " ").trim();
}

/** Runs the given peers on the given workloads; a peer that fails is reported, not thrown. */
export async function runPeerSuite(opts: PeerSuiteOptions = {}): Promise<PeerSuiteResult> {
  const peers = opts.peers ?? ALL_PEERS;
  const workloads = opts.workloads ?? PEER_WORKLOADS;
  const log = opts.log ?? (() => {});
  const cases = new Cases();
  const result: PeerSuiteResult = { timings: [], failures: [], descriptions: {} };
  for (const name of peers) {
    let peer: Awaited<ReturnType<typeof openOrtPeer>> | Awaited<ReturnType<typeof openTfjsPeer>>;
    try {
      peer =
        name === "onnxruntime-node"
          ? await openOrtPeer(opts.ort)
          : await openTfjsPeer(
              name.slice("tfjs-".length) as TfjsBackend,
              opts.ctx ? { ctx: opts.ctx } : {},
            );
    } catch (e) {
      result.failures.push({ peer: name, name: "(open)", error: errorText(e) });
      log(`${name}: could not start: ${errorText(e)}`);
      continue;
    }
    result.descriptions[name] = peer.description;
    try {
      for (const w of workloads) {
        const between = opts.between;
        const run = {
          ...w.runs?.[name],
          ...(between ? { between: () => between(workloadName(w), name) } : {}),
        };
        const t0 = performance.now();
        try {
          const c = cases.get(w);
          const timings: PeerTiming[] = [];
          if (w.kind === "matmul") timings.push(await peer.runMatmul(c as MatmulCase, run));
          else if (w.kind === "transformer")
            timings.push(await peer.runTransformer(c as TransformerCase, run));
          else {
            timings.push(await peer.runMoe(c as MoeCase, run));
            if (w.ortDenseMasked && name === "onnxruntime-node") {
              const ort = peer as Awaited<ReturnType<typeof openOrtPeer>>;
              const dense = { ...run, warmup: 1, runs: 5 };
              timings.push(await ort.runMoe(c as MoeCase, dense, "dense-masked"));
            }
          }
          result.timings.push(...timings);
          for (const t of timings) {
            log(`${formatTimings([t])[0]}  [${((performance.now() - t0) / 1000).toFixed(1)} s]`);
          }
        } catch (e) {
          result.failures.push({ peer: name, name: workloadName(w), error: errorText(e) });
          log(`${name} ${workloadName(w)}: failed: ${errorText(e)}`);
        }
      }
    } finally {
      await peer.close();
    }
  }
  return result;
}

/** Lines for `npm run bench`: per workload, the peers side by side. */
export function formatPeerSuite(res: PeerSuiteResult): string[] {
  const lines: string[] = [];
  for (const [peer, desc] of Object.entries(res.descriptions)) lines.push(`${peer}: ${desc}`);
  const names = [
    ...new Set([...res.timings.map((t) => t.name), ...res.failures.map((f) => f.name)]),
  ];
  const peerW = Math.max(0, ...res.timings.map((t) => t.peer.length));
  for (const name of names) {
    if (name === "(open)") continue;
    lines.push("", name);
    const rows = res.timings.filter((t) => t.name === name);
    for (const line of formatTimings(rows, { showName: false })) lines.push(`  ${line}`);
    for (const f of res.failures.filter((x) => x.name === name)) {
      lines.push(`  ${f.peer.padEnd(peerW)}  FAILED: ${f.error}`);
    }
  }
  const unavailable = res.failures.filter((f) => f.name === "(open)");
  if (unavailable.length > 0) lines.push("");
  for (const f of unavailable) lines.push(`${f.peer}: unavailable: ${f.error}`);
  if (res.timings.some((t) => !t.check.ok)) {
    lines.push("", "WRONG = output disagrees with the float64 reference: its time means nothing.");
  }
  return lines;
}

/** The `npm run bench` section: the whole default peer suite. */
export async function benchPeers(opts: PeerSuiteOptions = {}): Promise<string[]> {
  return formatPeerSuite(await runPeerSuite(opts));
}

/** One peer, default (or given) workloads. */
export async function benchTfjsWebgpu(
  opts: Omit<PeerSuiteOptions, "peers"> = {},
): Promise<PeerSuiteResult> {
  return runPeerSuite({ ...opts, peers: ["tfjs-webgpu"] });
}

export async function benchTfjsWasm(
  opts: Omit<PeerSuiteOptions, "peers" | "ctx"> = {},
): Promise<PeerSuiteResult> {
  return runPeerSuite({ ...opts, peers: ["tfjs-wasm"] });
}

export async function benchOnnxruntime(
  opts: Omit<PeerSuiteOptions, "peers" | "ctx"> = {},
): Promise<PeerSuiteResult> {
  return runPeerSuite({ ...opts, peers: ["onnxruntime-node"] });
}
