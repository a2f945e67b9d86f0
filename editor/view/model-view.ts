/**
 * The model diagram's data for `moec view`: the checked model's constructed instances arranged
 * as a tree of boxes by their dotted paths (as `moec params` names parameters), with parameter
 * counts per box computed the way `moec params` does. Repeat bodies and lists of instances
 * (`blocks.0`, `experts.0`, ...) collapse into one stack box ×N showing the first copy; `per
 * task` instances become a group with one box per task. Pure: no device, no file system.
 */
import type { ComponentDecl, Stmt } from "../../grammar/ast.js";
import { LineMap } from "../../compiler/diagnostics.js";
import type { ParamRecord } from "../../compiler/check/evaluator.js";
import type { MoeRecord } from "../../compiler/check/primitive-rule.js";
import type { ParamReport } from "../../compiler/check/count-params.js";
import { type Instance, formatScalar, formatTensorType } from "../../compiler/check/values.js";

/** Where a box is written: absolute file, 1-based line and column. */
export interface SourceLink {
  file: string;
  line: number;
  column: number;
}

export interface PortView {
  name: string;
  /** `f32[B, T, 64]`, with `--dim` sizes substituted. */
  type: string;
}

/**
 * One box of the diagram. `component`: a constructed instance; `stack`: N copies (a repeat
 * body or a list) of which the first is drawn; `per-task`: one instance per task.
 */
export interface ViewBox {
  kind: "component" | "stack" | "per-task";
  /** Dotted path (`blocks.0.ffn.moe`); "" for the model. */
  path: string;
  /** The last path segment, or the model's name. */
  name: string;
  /** Component name (`FFN`), for component boxes. */
  component?: string;
  /** What the box is: a module, a router, an adapter, an MoE layer, an expert, a shared expert. */
  role: "model" | "module" | "router" | "adapter" | "moe" | "expert" | "shared" | "group";
  /** For stacks: how many copies. */
  count?: number;
  /** For per-task instances: their task. */
  task?: string;
  /** Scalar constructor arguments (`k: 2`, `capacity: 1.25`). */
  args: [string, string][];
  inputs: PortView[];
  outputs: PortView[];
  /** Parameters under the box's path (all copies for a stack, all tasks for a group). */
  total: number;
  /** Of those, what one token uses (`moec params`' active-per-token accounting). */
  active: number;
  source?: SourceLink;
  /** For an MoE layer: its record (router family, experts, active per token). */
  moe?: MoeRecord;
  children: ViewBox[];
}

export interface ModelView {
  name: string;
  file: string;
  root: ViewBox;
  report: ParamReport;
  moes: MoeRecord[];
}

export interface ModelViewInput {
  name: string;
  file: string;
  /** Every instance constructed while elaborating the model (Evaluator.recordInstances). */
  instances: readonly Instance[];
  params: readonly ParamRecord[];
  moes: readonly MoeRecord[];
  report: ParamReport;
  /** Source text by absolute file, for lines. */
  sources: ReadonlyMap<string, string>;
  /** `--dim` sizes, substituted into shapes. */
  dims?: ReadonlyMap<string, number>;
}

/** A node of the path trie: an instance, or a path segment that groups instances. */
interface Trie {
  segment: string;
  path: string;
  inst?: Instance;
  children: Map<string, Trie>;
}

const isIndex = (s: string) => /^\d+$/.test(s);

export function buildModelView(input: ModelViewInput): ModelView {
  const root: Trie = { segment: "", path: "", children: new Map() };
  for (const inst of input.instances) {
    if (inst.path === undefined) continue;
    let node = root;
    if (inst.path !== "") {
      for (const seg of inst.path.split(".")) {
        const path = node.path === "" ? seg : `${node.path}.${seg}`;
        let next = node.children.get(seg);
        if (!next) {
          next = { segment: seg, path, children: new Map() };
          node.children.set(seg, next);
        }
        node = next;
      }
    }
    // The first construction at a path is the one its parameters are registered under.
    node.inst ??= inst;
  }
  const lineMaps = new Map<string, LineMap>();
  const link = (file: string, offset: number): SourceLink | undefined => {
    let map = lineMaps.get(file);
    if (!map) {
      const text = input.sources.get(file);
      if (text === undefined) return undefined;
      map = new LineMap(text);
      lineMaps.set(file, map);
    }
    return { file, ...map.lineColumn(offset) };
  };
  const counter = new ParamCounter(input.params, input.moes);
  const moeByPath = new Map(input.moes.map((m) => [m.path, m]));
  const dims = input.dims ?? new Map<string, number>();
  const showType = (t: Instance["inputs"][number]["type"]) =>
    substituteDims(formatTensorType(t), dims);

  /** Boxes for a trie node; `owner` is the nearest enclosing instance (for repeat lines). */
  const boxesOf = (node: Trie, owner: Instance | undefined, inMoe?: MoeRecord): ViewBox => {
    const inst = node.inst;
    if (inst) {
      const moe = moeByPath.get(node.path);
      let role: ViewBox["role"] =
        node.path === ""
          ? "model"
          : moe
            ? "moe"
            : inst.role === "router"
              ? "router"
              : inst.role === "adapter"
                ? "adapter"
                : "module";
      if (inMoe && role === "module") {
        // The experts themselves (`experts.3`, `experts.0.2` in groups), not their insides.
        const rel = node.path.slice(inMoe.path.length + 1);
        if (/^experts(\.\d+)+$/.test(rel)) role = "expert";
        else if (/^shared(\.\d+)+$/.test(rel)) role = "shared";
      }
      const box: ViewBox = {
        kind: "component",
        path: node.path,
        name: node.path === "" ? input.name : node.segment,
        component: inst.component,
        role,
        args: scalarArgs(inst),
        inputs: inst.inputs.map((p) => ({ name: p.name, type: showType(p.type) })),
        outputs: inst.outputs.map((p) => ({ name: p.name, type: showType(p.type) })),
        ...counter.under(node.path),
        children: childBoxes(node, inst, moe ?? inMoe),
      };
      if (inst.task !== undefined) box.task = inst.task;
      const src = link(inst.file, inst.span.start);
      if (src) box.source = src;
      if (moe) box.moe = moe;
      return box;
    }
    const kids = [...node.children.values()];
    const counts = counter.under(node.path);
    if (kids.length > 0 && kids.every((k) => isIndex(k.segment))) {
      // N copies: a repeat body (`blocks.i.*`) or a list (`experts.i`). Draw the first.
      const first = node.children.get("0") ?? kids[0]!;
      const nested = [...first.children.keys()];
      const inner =
        first.inst || (nested.length > 0 && nested.every(isIndex))
          ? [boxesOf(first, owner, inMoe)]
          : childBoxes(first, owner, inMoe);
      const repeat = owner ? findRepeat(owner.decl, node.segment) : undefined;
      const firstInst = firstInstance(first);
      const src = repeat
        ? link(owner!.declFile, repeat.span.start)
        : firstInst
          ? link(firstInst.file, firstInst.span.start)
          : undefined;
      let role: ViewBox["role"] = "group";
      if (inMoe) {
        const rel = node.path.slice(inMoe.path.length + 1);
        if (/^experts(\.\d+)*$/.test(rel)) role = "expert";
        else if (/^shared(\.\d+)*$/.test(rel)) role = "shared";
      }
      const box: ViewBox = {
        kind: "stack",
        path: node.path,
        name: node.segment,
        role,
        count: kids.length,
        args: [],
        inputs: [],
        outputs: [],
        ...counts,
        children: inner,
      };
      if (src) box.source = src;
      return box;
    }
    // One instance per task (`adapter = per task Bottleneck(...)`): `adapter.<task>`.
    const tasks = kids.filter((k) => k.inst?.task !== undefined);
    const firstInst = firstInstance(node);
    const src = firstInst ? link(firstInst.file, firstInst.span.start) : undefined;
    const box: ViewBox = {
      kind: tasks.length === kids.length && kids.length > 0 ? "per-task" : "stack",
      path: node.path,
      name: node.segment,
      role: "group",
      args: [],
      inputs: [],
      outputs: [],
      ...counts,
      children: kids.map((k) => boxesOf(k, owner, inMoe)),
    };
    if (box.kind === "stack") box.count = 1;
    if (src) box.source = src;
    return box;
  };

  const childBoxes = (node: Trie, owner: Instance | undefined, inMoe?: MoeRecord): ViewBox[] => {
    const kids = [...node.children.values()].map((k) => boxesOf(k, owner, inMoe));
    // Source order within the owner's file, the router before the experts.
    const order = (b: ViewBox) =>
      (b.role === "router" ? 0 : 1) * 1e9 + (b.source?.line ?? 0) * 1e3 + (b.source?.column ?? 0);
    return kids.sort((a, b) => order(a) - order(b));
  };

  const rootBox = root.inst
    ? boxesOf(root, undefined)
    : {
        kind: "component" as const,
        path: "",
        name: input.name,
        role: "model" as const,
        args: [],
        inputs: [],
        outputs: [],
        ...counter.under(""),
        children: childBoxes(root, undefined),
      };
  // The model's own numbers are `moec params`' (the same formula, summed once).
  rootBox.total = input.report.total;
  rootBox.active = input.report.activePerToken;
  return {
    name: input.name,
    file: input.file,
    root: rootBox,
    report: input.report,
    moes: [...input.moes],
  };
}

function firstInstance(node: Trie): Instance | undefined {
  if (node.inst) return node.inst;
  for (const k of node.children.values()) {
    const found = firstInstance(k);
    if (found) return found;
  }
  return undefined;
}

/** The `repeat n as label` statement of a component body (nested in `if` and repeats too). */
function findRepeat(
  decl: ComponentDecl,
  label: string,
): Extract<Stmt, { kind: "RepeatStmt" }> | undefined {
  const walk = (stmts: readonly Stmt[]): Extract<Stmt, { kind: "RepeatStmt" }> | undefined => {
    for (const s of stmts) {
      if (s.kind === "RepeatStmt") {
        if ((s.label?.name ?? "layers") === label) return s;
        const inner = walk(s.body);
        if (inner) return inner;
      } else if (s.kind === "IfStmt") {
        const inner = walk(s.then) ?? (s.else ? walk(s.else) : undefined);
        if (inner) return inner;
      }
    }
    return undefined;
  };
  return walk(decl.body);
}

function scalarArgs(inst: Instance): [string, string][] {
  const out: [string, string][] = [];
  for (const [name, v] of inst.args) {
    const text = formatScalar(v);
    if (text !== undefined) out.push([name, text]);
  }
  return out;
}

/** `f32[B, T, 64]` with B=2 → `f32[2, T, 64]`: whole dim names only. */
export function substituteDims(text: string, dims: ReadonlyMap<string, number>): string {
  if (dims.size === 0) return text;
  return text.replace(/\[([^\]]*)\]/, (_, inner: string) => {
    const parts = inner.split(", ").map((p) => (dims.has(p) ? String(dims.get(p)) : p));
    return `[${parts.join(", ")}]`;
  });
}

/**
 * Parameter counts under a path, with `moec params`' rules for what a token uses: every
 * shared parameter, an MoE layer's expert parameters × (active experts ÷ experts), and the
 * largest task's own parameters (a token belongs to one task).
 */
export class ParamCounter {
  private readonly rows: { path: string; count: number; task?: string }[];
  constructor(
    params: readonly ParamRecord[],
    private readonly moes: readonly MoeRecord[],
  ) {
    this.rows = params.map((p) => {
      const row: { path: string; count: number; task?: string } = {
        path: p.path,
        count: p.shape.reduce((a, b) => a * b, 1),
      };
      if (p.task !== undefined) row.task = p.task;
      return row;
    });
  }

  under(prefix: string): { total: number; active: number } {
    const inside = (path: string, p: string) => p === "" || path === p || path.startsWith(p + ".");
    const rows = this.rows.filter((r) => inside(r.path, prefix));
    const total = rows.reduce((a, r) => a + r.count, 0);
    const shared = rows.filter((r) => r.task === undefined);
    const inExpert = new Set<(typeof rows)[number]>();
    let active = 0;
    for (const m of this.moes) {
      const expertRows = shared.filter((r) => m.experts.some((e) => inside(r.path, e)));
      if (expertRows.length === 0) continue;
      expertRows.forEach((r) => inExpert.add(r));
      const n = expertRows.reduce((a, r) => a + r.count, 0);
      active += (n / Math.max(1, m.experts.length)) * m.activePerToken;
    }
    active += shared.filter((r) => !inExpert.has(r)).reduce((a, r) => a + r.count, 0);
    const perTask = new Map<string, number>();
    for (const r of rows)
      if (r.task !== undefined) perTask.set(r.task, (perTask.get(r.task) ?? 0) + r.count);
    active += Math.max(0, ...perTask.values());
    return { total, active: Math.round(active) };
  }
}

/** Every component box of a view (stacks and groups excluded), depth first. */
export function componentBoxes(box: ViewBox): ViewBox[] {
  const out: ViewBox[] = box.kind === "component" ? [box] : [];
  for (const c of box.children) out.push(...componentBoxes(c));
  return out;
}
