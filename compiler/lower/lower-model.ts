/**
 * Pass: lower a model to the tensor IR. The evaluator runs in `lower` mode with the model's
 * sizes and the free input dims (`--dim B=2 --dim T=16`) bound: every application of a
 * component is inlined on its actual tensors, and every tensor expression becomes IR through
 * the hooks below (builtins through lower-builtins.ts).
 */
import type { ComponentDecl, Expr, Span } from "../../grammar/ast.js";
import { bindArgs } from "../check/bind-args.js";
import { BUILTINS } from "../check/builtins.js";
import { type Diagnostic, type DiagnosticCode, diagnostic } from "../diagnostics.js";
import { dimValue, displayAtom, dimAtoms, dimConst, isVarAtom } from "../check/dims.js";
import { Evaluator } from "../check/evaluator.js";
import { Inliner } from "./inliner.js";
import { PinMatcher, type PinReport } from "./pin-groups.js";
import type { LoweredLibrary, LoweringHooks, PlacedLora } from "./lowering-hooks.js";
import { pruneGraph } from "../ir/prune-graph.js";
import { IrBuilder } from "../ir/builder.js";
import type { IrDType, IrGraph, BinaryOp } from "../ir/graph.js";
import { BUILTIN_LOWERINGS, type LowerArg } from "./lower-builtins.js";
import type { ResolvedProgram } from "../check/resolve-names.js";
import type { TensorType, Value } from "../check/values.js";

/** A model input as the runtime sees it. `max` bounds integer ids (vocabulary, task count). */
export interface LowerOptions {
  /**
   * Also output each MoE layer's routing: tokens per expert, dropped tokens, balance and
   * z losses, router entropy, group weights, and each token's experts and weights. These
   * outputs are named `routing:<layer>.<what>` (see routingOutputName).
   */
  routingStats?: boolean;
  /**
   * Group weights for `Grouped` MoE layers, by layer path (or a prefix of one, such as
   * `blocks.2`): they replace the router's own weights (and any `pin:` in the source).
   */
  pinGroups?: ReadonlyMap<string, readonly number[]>;
  /**
   * Merge each LoRA on a Linear base into the base weight, W + (alpha / r)·B·A, computed once
   * per set of weights instead of the adapter's two matmuls per call (`--merge-adapters`).
   */
  mergeAdapters?: boolean;
}

/** Routing outputs are named so no model port can clash with them. */
export const ROUTING_PREFIX = "routing:";

export function routingOutputName(layer: string, what: string): string {
  return `${ROUTING_PREFIX}${layer}.${what}`;
}

export interface LoweredInput {
  name: string;
  dtype: IrDType;
  shape: number[];
  max?: number;
  /** For task ids: the task names, in id order. */
  tasks?: string[];
}

/** The IR of one model at fixed sizes. */
export interface LoweredModel {
  name: string;
  graph: IrGraph;
  inputs: LoweredInput[];
  /** Free dims and their sizes (B, T, ...). */
  dims: Map<string, number>;
  /** Every LoRA in the model. */
  loras: PlacedLora[];
  /** With LowerOptions.pinGroups: what did not apply (for the command line to report). */
  pins?: PinReport;
}

const BINARY: Record<string, BinaryOp> = { "+": "add", "-": "sub", "*": "mul", "/": "div" };

/** The hooks lowering gives the evaluator; lower-train.ts extends them for training programs. */
export class Lowering implements LoweringHooks {
  readonly builder = new IrBuilder();
  readonly inputs: LoweredInput[] = [];
  readonly usedDims = new Map<string, number>();
  private readonly reportedUnsupported = new Set<string>();
  /** Routing outputs, in the order the layers were lowered. */
  readonly routingOutputs: { name: string; node: number }[] = [];
  evaluator!: Evaluator;

  constructor(
    private readonly dims: ReadonlyMap<string, number>,
    private readonly diagnostics: Diagnostic[],
    private readonly modelFile: string,
    private readonly modelSpan: Span,
    readonly routingStats: boolean,
    pins: ReadonlyMap<string, readonly number[]> = new Map(),
    readonly mergeAdapters = false,
  ) {
    this.pinMatcher = new PinMatcher(pins);
  }

  /** `--pin-groups` against the Grouped layers as they are lowered. */
  readonly pinMatcher: PinMatcher;

  pinnedGroups(layer: string, groups: number): number[] | undefined {
    return this.pinMatcher.weightsFor(layer, groups);
  }

  /** Every LoRA lowered, by path. */
  readonly loras = new Map<string, PlacedLora>();

  noteLora(path: string, r: number, alpha: number, task?: string): void {
    this.loras.set(path, task === undefined ? { path, r, alpha } : { path, r, alpha, task });
  }

  /**
   * A `cross_entropy` call was lowered to `loss`, scoring `logits` against `labels`: training
   * lowering (lower-train.ts) measures eval accuracy on the same pair.
   */
  crossEntropy(_logits: number, _labels: number, _ignoreIndex: number, _loss: number): void {}

  routing(layer: string, name: string, node: number): void {
    if (this.routingStats) this.routingOutputs.push({ name: routingOutputName(layer, name), node });
  }

  /** Concrete shape of a type, binding free input dims from `dims`; undefined if unknown. */
  concreteShape(t: TensorType, bindFree: boolean, what: string): number[] | undefined {
    const u = this.evaluator.unifier;
    if (t.lead !== undefined) {
      const lead = u.resolveTensor(t);
      if (lead.lead !== undefined) {
        if (bindFree) this.error(`${what} has \`...\` dims: a model's inputs need a fixed rank`);
        return undefined;
      }
      t = lead;
    }
    const out: number[] = [];
    for (const d of t.dims) {
      let r = u.resolve(d);
      if (bindFree) {
        for (const atom of dimAtoms(r)) {
          if (!isVarAtom(atom)) continue;
          const name = displayAtom(atom);
          const size = this.dims.get(name);
          if (size === undefined) {
            this.error(
              `the size of \`${name}\` (in ${what}) is not known`,
              `pass it with --dim ${name}=N`,
            );
            return undefined;
          }
          u.unifyDim(dimConst(size), new Map([[atom, 1]]));
          this.usedDims.set(name, size);
        }
        r = u.resolve(d);
      }
      const v = dimValue(r);
      if (v === undefined) return undefined;
      out.push(v);
    }
    return out;
  }

  private error(message: string, hint?: string): void {
    this.diagnostics.push(
      diagnostic("E0314", this.modelFile, this.modelSpan, message, hint ? { hint } : {}),
    );
  }

  input(name: string, t: TensorType): number | undefined {
    const shape = this.concreteShape(t, true, `input \`${name}\``);
    if (!shape) return undefined;
    const dtype: IrDType =
      t.dtype === "f32" || t.dtype === "f16" || t.dtype === "bf16" ? "f32" : "i32";
    const info: LoweredInput = { name, dtype, shape };
    if (t.dtype === "task" && t.taskSet !== undefined) {
      const g = this.evaluator.program.scopes.get(this.modelFile)?.names.get(t.taskSet);
      if (g?.kind === "tasks") {
        info.tasks = g.decl.members.map((m) => m.name);
        info.max = info.tasks.length;
      }
    }
    this.inputs.push(info);
    return this.builder.input(name, dtype, shape);
  }

  param(
    path: string,
    t: TensorType,
    trainable: boolean,
    init: string | undefined,
  ): number | undefined {
    const shape = this.concreteShape(t, false, `parameter ${path}`);
    if (!shape) return undefined;
    return this.builder.param(
      path,
      shape,
      trainable,
      init ?? "normal(0.02)",
      // As inputs lower: every integer dtype is i32 in the IR (an i64 weight added to an
      // i64 input was an f32 beside an i32, and its safetensors had to be F32).
      t.dtype === "i32" || t.dtype === "i64" ? "i32" : "f32",
    );
  }

  warn(file: string, span: Span, code: DiagnosticCode, message: string, hint?: string): void {
    const key = `${file}|${span.start}|${code}|${message}`;
    if (this.reportedUnsupported.has(key)) return;
    this.reportedUnsupported.add(key);
    this.diagnostics.push(
      diagnostic(code, file, span, message, hint !== undefined ? { hint } : {}),
    );
  }

  unsupported(file: string, span: Span, what: string): void {
    const key = `${file}|${span.start}|${what}`;
    if (this.reportedUnsupported.has(key)) return;
    this.reportedUnsupported.add(key);
    this.diagnostics.push(
      diagnostic("E0601", file, span, `the back end cannot run ${what} yet`, {
        hint: "`moec check` and `moec params` accept it; running it is on the roadmap (see the open issues)",
      }),
    );
  }

  /** Records the largest id a gathered input may hold (its table's rows), for random inputs. */
  private noteIdRange(ids: number, rows: number): void {
    const n = this.builder.node(ids);
    if (n.op !== "input") return;
    const info = this.inputs.find((i) => i.name === n.name);
    if (info && info.max === undefined) info.max = rows;
    else if (info && info.tasks === undefined) info.max = Math.min(info.max!, rows);
  }

  lowerExpr(
    e: Expr,
    value: Extract<Value, { k: "tensor" }>,
    operand: (e: Expr) => Value | undefined,
  ): number | undefined {
    const ir = this.builder;
    const shape = this.concreteShape(value.t, false, "an expression");
    const nodeOf = (v: Value | undefined): number | undefined => {
      if (!v) return undefined;
      if (v.k === "tensor") return v.node;
      if (v.k === "float" && v.v !== undefined) return ir.constant(v.v);
      if (v.k === "int") {
        const n = dimValue(this.evaluator.unifier.resolve(v.v));
        return n === undefined ? undefined : ir.constant(n);
      }
      return undefined;
    };
    switch (e.kind) {
      case "BinaryExpr": {
        const a = nodeOf(operand(e.left));
        const b = nodeOf(operand(e.right));
        if (a === undefined || b === undefined) return undefined;
        if (e.op === "@") return this.matmul(a, b);
        const fn = BINARY[e.op];
        return fn ? ir.binary(fn, a, b) : undefined;
      }
      case "UnaryExpr": {
        const x = nodeOf(operand(e.operand));
        return x === undefined || e.op !== "-" ? undefined : ir.unary("neg", x);
      }
      case "MemberExpr": {
        const x = nodeOf(operand(e.object));
        if (x === undefined || e.member.name !== "T") return undefined;
        const rank = ir.shape(x).length;
        const perm = [...Array(rank).keys()];
        [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1]!, perm[rank - 2]!];
        return ir.permute(x, perm);
      }
      case "CallExpr": {
        const callee = operand(e.callee);
        if (callee?.k !== "builtin" || !shape) return undefined;
        const lowering = BUILTIN_LOWERINGS.get(callee.name);
        const row = BUILTINS.get(callee.name);
        if (!lowering || !row) return undefined;
        const bound = bindArgs(
          callee.name,
          row.params.map((p) => ({ name: p.name, required: false })),
          e.args,
          e.span,
          "",
          [],
        );
        const args = new Map<string, LowerArg>();
        for (const p of row.params) {
          const a = bound.get(p.name);
          const v = a ? operand(a.value) : p.default;
          if (!v) continue;
          const arg: LowerArg = { value: v };
          if (v.k === "tensor" && v.node !== undefined) arg.node = v.node;
          if (v.k === "int") {
            const n = dimValue(this.evaluator.unifier.resolve(v.v));
            if (n !== undefined) arg.number = n;
          }
          if (v.k === "float" && v.v !== undefined) arg.number = v.v;
          args.set(p.name, arg);
        }
        if (callee.name === "take") {
          const table = args.get("table")?.node;
          const ids = args.get("ids")?.node;
          if (table !== undefined && ids !== undefined) this.noteIdRange(ids, ir.shape(table)[0]!);
        }
        if (callee.name === "cross_entropy") {
          // Random labels for a training input are classes of the logits it is scored against.
          const logits = args.get("logits")?.node;
          const labels = args.get("labels")?.node;
          if (logits !== undefined && labels !== undefined) {
            this.noteIdRange(labels, ir.shape(logits).at(-1)!);
            const loss = lowering(ir, args, shape);
            if (loss !== undefined)
              this.crossEntropy(logits, labels, args.get("ignore_index")?.number ?? -100, loss);
            return loss;
          }
        }
        return lowering(ir, args, shape);
      }
      default:
        return undefined;
    }
  }

  /** `@` with the language's rules: [..., k] @ [k, n] shares the right side across rows. */
  private matmul(a: number, b: number): number {
    const ir = this.builder;
    const sa = ir.shape(a);
    if (sa.length === 1) {
      const out = ir.matmul(ir.reshape(a, [1, sa[0]!]), b);
      return ir.reshape(out, ir.shape(out).slice(1));
    }
    return ir.matmul(a, b);
  }
}

/**
 * Lowers `model` with parameter `overrides` and free-dim sizes `dims`. Problems (unknown sizes,
 * constructs the back end cannot run yet) are added to `diagnostics`.
 */
export function lowerModel(
  program: ResolvedProgram,
  model: { decl: ComponentDecl; file: string },
  overrides: Map<string, Value>,
  dims: ReadonlyMap<string, number>,
  diagnostics: Diagnostic[],
  library: LoweredLibrary,
  options: LowerOptions = {},
): LoweredModel | undefined {
  const lowering = new Lowering(
    dims,
    diagnostics,
    model.file,
    model.decl.name.span,
    options.routingStats ?? false,
    options.pinGroups,
    options.mergeAdapters ?? false,
  );
  const evaluator = new Evaluator(program, diagnostics, "lower", library);
  evaluator.hooks = new Inliner(evaluator, lowering, library.rules);
  lowering.evaluator = evaluator;
  const before = diagnostics.length;
  const outputs = evaluator.evaluateRoot(model.decl, model.file, overrides);
  if (!outputs || diagnostics.slice(before).some((d) => d.severity === "error")) return undefined;
  for (const port of model.decl.body) {
    if (port.kind !== "PortDecl" || port.direction !== "out") continue;
    const v = outputs.get(port.name.name);
    if (!v || v.node === undefined) {
      diagnostics.push(
        diagnostic(
          "E0601",
          model.file,
          port.span,
          `the back end could not lower output \`${port.name.name}\``,
        ),
      );
      return undefined;
    }
    lowering.builder.output(port.name.name, v.node);
  }
  for (const o of lowering.routingOutputs) lowering.builder.output(o.name, o.node);
  for (const [name, size] of dims)
    if (!lowering.usedDims.has(name)) lowering.usedDims.set(name, size);
  const lowered: LoweredModel = {
    name: model.decl.name.name,
    graph: pruneGraph(lowering.builder.finish()),
    inputs: lowering.inputs,
    dims: lowering.usedDims,
    loras: [...lowering.loras.values()],
  };
  if (options.pinGroups && options.pinGroups.size > 0) lowered.pins = lowering.pinMatcher.report();
  return lowered;
}
