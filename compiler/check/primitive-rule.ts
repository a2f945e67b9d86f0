/**
 * The contract between the evaluator and the standard library's `primitive` declarations
 * (routers, the MoE layer, LoRA, optimisers). The rules themselves live in compiler/library/,
 * one file per family; the pipeline hands their table to the evaluator, so check/ never
 * imports the library.
 */
import type { Span } from "../../grammar/ast.js";
import type { BuiltinArg } from "./builtins.js";
import type { DiagnosticCode, RelatedInfo } from "../diagnostics.js";
import type { Unifier } from "./unify.js";
import type { Instance, InstanceRole, TensorType, Value } from "./values.js";

/**
 * `check`: generic, symbolic. `elaborate`: concrete, registers parameters. `lower`: concrete,
 * with a later pass's hooks (lowering emits IR).
 */
export type EvalMode = "check" | "elaborate" | "lower";

/** A mixture-of-experts layer found by elaboration, for active-parameter accounting. */
export interface MoeRecord {
  path: string;
  router: string;
  experts: string[];
  /** Experts evaluated per token, on average (k for top-k, E for dense mixtures). */
  activePerToken: number;
  /** The router's auxiliary-loss weights, 0 where it asks for none (`TopK(balance:, z_loss:)`). */
  balance: number;
  zLoss: number;
}

/** What a primitive rule may do while a component is constructed or applied. */
export interface PrimitiveContext {
  mode: EvalMode;
  file: string;
  span: Span;
  inst: Instance;
  unifier: Unifier;
  report(
    code: DiagnosticCode,
    span: Span,
    message: string,
    extra?: { hint?: string; related?: RelatedInfo[] },
  ): void;
  /** Registers a parameter of `inst` (path `inst.path + "." + name`). */
  registerParam(name: string, t: TensorType, init?: string): void;
  /**
   * Registers `<path>.weight`. `taskRows`: a table indexed by task id, row i belonging to
   * task `taskRows[i]` alone (a router's task embedding), so `moec params` counts each row
   * for its task only.
   */
  registerParamAt(path: string, t: TensorType, init?: string, taskRows?: string[]): void;
  taskSet(what: string): string | undefined;
  taskMembers(set: string): string[];
  recordMoe(rec: MoeRecord): void;
  freshen(inst: Instance): { inputs: TensorType[]; outputs: TensorType[] };
  expectTensor(v: Value, expected: TensorType, span: Span, what: string): boolean;
}

/** A `primitive` declaration's checks: what the `.moe` declaration cannot say itself. */
export interface PrimitiveRule {
  role: InstanceRole;
  construct?(ctx: PrimitiveContext): void;
  apply?(ctx: PrimitiveContext, args: BuiltinArg[]): Value;
  /** For adapters: attach to `base`, producing `wrapped` (same signature as base). */
  attach?(ctx: PrimitiveContext, adapter: Instance, base: Instance, wrapped: Instance): void;
}

/** The rules of the standard library's primitives, handed to the evaluator by the pipeline. */
export interface PrimitiveLibrary {
  /** Rules by primitive name (`TopK`, `MoE`, `LoRA`, ...). */
  readonly rules: ReadonlyMap<string, PrimitiveRule>;
  /** The std module that defines a name (`Linear` → `std.nn`), for "import it" hints. */
  readonly homes: ReadonlyMap<string, string>;
}
