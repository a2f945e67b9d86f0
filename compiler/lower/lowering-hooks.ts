/**
 * What lowering adds to the evaluator's concrete mode: IR for tensor expressions, parameters
 * and inputs (implemented by lower-model.ts), and the lowering half of primitive rules.
 */
import type { Expr, Span } from "../../grammar/ast.js";
import type { DiagnosticCode } from "../diagnostics.js";
import type { PrimitiveContext, PrimitiveLibrary, PrimitiveRule } from "../check/primitive-rule.js";
import type { Instance, TensorType, Value } from "../check/values.js";
import type { IrBuilder } from "../ir/builder.js";

/**
 * A LoRA the model places: its path (parameters at `<path>.lora_A.weight`), rank and alpha
 * (scale alpha / r), and its task for one task's LoRA of a `per task` set (`path` then ends
 * with `.<task>`). PEFT adapters are checked against these and written from them.
 */
export interface PlacedLora {
  path: string;
  r: number;
  alpha: number;
  task?: string;
}

/** What lowering adds to evaluation: IR for tensor expressions, parameters and inputs. */
export interface LoweringHooks {
  /** IR for a tensor-valued expression whose operands were already lowered. */
  lowerExpr(
    e: Expr,
    value: Extract<Value, { k: "tensor" }>,
    operand: (e: Expr) => Value | undefined,
    file: string,
  ): number | undefined;
  /** The IR parameter at `path` (created on first use). */
  param(
    path: string,
    t: TensorType,
    trainable: boolean,
    init: string | undefined,
  ): number | undefined;
  /** The IR input for a model port. */
  input(name: string, t: TensorType): number | undefined;
  /** Something the back end cannot do yet: reported once, as E0601. */
  unsupported(file: string, span: Span, what: string): void;
  /** A lowering warning (W06xx), reported once per site. */
  warn(file: string, span: Span, code: DiagnosticCode, message: string, hint?: string): void;
  /** The graph being built, for primitives that lower themselves. */
  readonly builder: IrBuilder;
  /** Whether MoE layers should also output their routing (statistics and per-token choices). */
  readonly routingStats: boolean;
  /** Whether LoRA adapters on Linear bases are merged into the base weight. */
  readonly mergeAdapters: boolean;
  /**
   * Records a LoRA placed at `path` with its rank and alpha (checked against PEFT configs), and
   * its task for one task's LoRA of a `per task` set (`path` then ends with the task's name).
   */
  noteLora(path: string, r: number, alpha: number, task?: string): void;
  /** Records one routing output of the MoE layer at `layer` (a parameter path). */
  routing(layer: string, name: string, node: number): void;
  /**
   * After an MoE layer at `layer` is lowered (its routing statistics recorded): the weights
   * its router gives the balance and z auxiliary losses (0 where it declares none), and
   * whether the router trains. Training lowering (lower-train.ts) adds the weighted losses.
   */
  auxLossWeights?(layer: string, weights: { balance: number; z: number }, trainable: boolean): void;
  /**
   * Training only: uniform [0, 1) values of `shape`, fresh at every step and replayed bit for
   * bit on resume (the IR's `random` op). Absent when lowering for inference or evaluation,
   * where dropout and router jitter are off.
   */
  noise?(shape: number[]): number;
  /** Group weights pinned from outside the source for the Grouped layer at `layer`. */
  pinnedGroups(layer: string, groups: number): number[] | undefined;
}

/** Applies one sub-instance (an expert, inlined) to a tensor. */
export type ApplyExpert = (
  expert: Instance,
  x: Extract<Value, { k: "tensor" }>,
) => Extract<Value, { k: "tensor" }> | undefined;

/** What a primitive module that lowers itself (the MoE layer) is given: its context and sub-instances. */
export interface LayerLowering {
  ctx: PrimitiveContext;
  lowering: LoweringHooks;
  applyExpert: ApplyExpert;
  /** A PrimitiveContext for another instance (the LoRA adapters of factorised experts). */
  contextFor(inst: Instance): PrimitiveContext;
  unsupported(what: string): Value;
  /** A lowering warning at the MoE layer's use. */
  warn(code: DiagnosticCode, message: string, hint?: string): void;
}

/** A primitive's rule with its lowering (adapters: the IR of the wrapped output). */
export interface LoweredPrimitiveRule extends PrimitiveRule {
  /** For adapters: IR for the wrapped output given the input `x` and the base output `y`. */
  lowerAdapter?(
    ctx: PrimitiveContext,
    lowering: LoweringHooks,
    wrapped: Instance,
    x: Extract<Value, { k: "tensor" }>,
    y: Extract<Value, { k: "tensor" }>,
  ): Value;
  /** For primitive modules (the MoE layer): IR for the application to `args`. */
  lowerLayer?(layer: LayerLowering, args: { value: Value }[]): Value;
  /**
   * For additive adapters (LoRA): the update added to the base's output for rows [N, d], so
   * per-task adapters run segmented (one expert_matmul per factor for all tasks).
   */
  lowerDelta?(
    ctx: PrimitiveContext,
    lowering: LoweringHooks,
    wrapped: Instance,
    rows: number,
  ): number | undefined;
}

/** The primitives' rules with their lowering halves (compiler/library/index.ts). */
export interface LoweredLibrary extends PrimitiveLibrary {
  readonly rules: ReadonlyMap<string, LoweredPrimitiveRule>;
}
