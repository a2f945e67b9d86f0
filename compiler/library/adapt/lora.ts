/**
 * LoRA (`std.adapt`): its option ranges, how it attaches to a base (PEFT's `lora_A`/`lora_B`
 * parameters) and its lowering: y + (alpha / r)·(x·Aᵀ)·Bᵀ unmerged, or merged into a
 * Linear-shaped base's weight with `--merge-adapters`. `loraDelta` is also used by grouped
 * routing's factorised path and by per-task adapters.
 */
import type { PrimitiveContext } from "../../check/primitive-rule.js";
import type { LoweredPrimitiveRule, LoweringHooks } from "../../lower/lowering-hooks.js";
import {
  type Instance,
  type TensorType,
  type Value,
  UNKNOWN,
  formatTensorType,
} from "../../check/values.js";
import { f32Tensor as tensor, num, requireRange } from "../options.js";

export const loraRule: LoweredPrimitiveRule = {
  role: "adapter",
  construct(ctx) {
    requireRange(ctx, "r", (x) => x >= 1, "at least 1");
    requireRange(ctx, "alpha", (x) => x > 0, "positive");
    requireRange(ctx, "dropout", (x) => x >= 0 && x < 1, "in [0, 1)");
  },
  lowerAdapter: lowerLora,
  attach(ctx, adapter, base, wrapped) {
    const inT = base.inputs[0]!.type;
    const outT = base.outputs[0]!.type;
    const fin = inT.dims[inT.dims.length - 1];
    const fout = outT.dims[outT.dims.length - 1];
    if (fin === undefined || fout === undefined || inT.dtype !== "f32" || outT.dtype !== "f32") {
      ctx.report(
        "E0408",
        ctx.span,
        `LoRA needs a base mapping f32[..., in] to f32[..., out]; ${base.component} maps ${formatTensorType(inT)} to ${formatTensorType(outT)}`,
      );
      return;
    }
    const r = adapter.args.get("r");
    const rd = r?.k === "int" ? r.v : undefined;
    if (!rd) return;
    const a: TensorType = tensor([rd, fin]);
    const b: TensorType = tensor([fout, rd]);
    wrapped.weights.set("lora_A", a);
    wrapped.weights.set("lora_B", b);
    const path = adapter.path ?? wrapped.path ?? "";
    // PEFT's names: <module>.lora_A.weight [r, in], <module>.lora_B.weight [out, r]; B starts at zero.
    ctx.registerParamAt(`${path}.lora_A`, a, LORA_A_INIT);
    ctx.registerParamAt(`${path}.lora_B`, b, "zeros");
  },
  lowerDelta: (ctx, lowering, wrapped, rows) => loraDelta(ctx, lowering, wrapped, rows),
};

/** y + (alpha / r) · (x Aᵀ) Bᵀ, unmerged: the fuser folds it into the base matmul's epilogue. */
function lowerLora(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
  x: Extract<Value, { k: "tensor" }>,
  y: Extract<Value, { k: "tensor" }>,
): Value {
  if (x.node === undefined || y.node === undefined) return UNKNOWN;
  if (lowering.mergeAdapters) {
    const merged = mergeLora(ctx, lowering, wrapped, x.node, y.node);
    if (merged !== undefined) return { k: "tensor", t: y.t, node: merged };
  }
  const delta = loraDelta(ctx, lowering, wrapped, x.node);
  if (delta === undefined) return UNKNOWN;
  return { k: "tensor", t: y.t, node: lowering.builder.binary("add", y.node, delta) };
}

/**
 * `--merge-adapters`: a LoRA on a Linear-shaped base (y = x·Wᵀ [+ b]) becomes the base with
 * W + (alpha / r)·B·A, a value of parameters alone that the runtime computes once (a static
 * kernel) rather than two extra matmuls per call. Other bases (an FFN) stay unmerged.
 */
function mergeLora(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
  x: number,
  y: number,
): number | undefined {
  const ir = lowering.builder;
  let out = ir.node(y);
  let bias: number | undefined;
  if (out.op === "binary" && out.fn === "add") {
    bias = out.inputs[1];
    out = ir.node(out.inputs[0]);
  }
  if (out.op !== "matmul" || out.inputs[0] !== x) return undefined;
  const wt = ir.node(out.inputs[1]);
  if (wt.op !== "permute" || ir.node(wt.inputs[0]).op !== "param") return undefined;
  if (bias !== undefined && ir.shape(bias).length !== 1) return undefined;
  const factors = loraFactors(ctx, lowering, wrapped);
  if (!factors) return undefined;
  const { A, B, scale } = factors;
  const W = wt.inputs[0];
  const merged = ir.binary("add", W, ir.binary("mul", ir.matmul(B, A), ir.constant(scale)));
  const m = ir.matmul(x, ir.permute(merged, [1, 0]));
  return bias === undefined ? m : ir.binary("add", m, bias);
}

/** The IR of (alpha / r) · (x Aᵀ) Bᵀ for the LoRA adapter of `wrapped` (ctx.inst). */
export function loraDelta(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
  x: number,
): number | undefined {
  const factors = loraFactors(ctx, lowering, wrapped);
  if (!factors) return undefined;
  const { A, B, scale } = factors;
  const ir = lowering.builder;
  // PEFT's lora_dropout: on the adapter's input only, in training (inverted: kept values
  // scaled by 1 / (1 − p)), so evaluation and inference need no rescaling.
  const p = num(ctx.inst, "dropout") ?? 0;
  if (p > 0 && lowering.noise) {
    const u = lowering.noise(ir.shape(x));
    const keep = ir.unary("step", ir.binary("sub", u, ir.constant(p)));
    x = ir.binary("mul", x, ir.binary("mul", keep, ir.constant(1 / (1 - p))));
  }
  const xa = ir.matmul(x, ir.permute(A, [1, 0]));
  return ir.binary("mul", ir.matmul(xa, ir.permute(B, [1, 0])), ir.constant(scale));
}

/** The LoRA's parameters A [r, in] and B [out, r] and its scale alpha / r. */
function loraFactors(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
): { A: number; B: number; scale: number } | undefined {
  const adapter = ctx.inst;
  const a = wrapped.weights.get("lora_A");
  const b = wrapped.weights.get("lora_B");
  const r = num(adapter, "r");
  const alpha = num(adapter, "alpha");
  const path = adapter.path ?? wrapped.path ?? "";
  if (!a || !b || r === undefined || alpha === undefined) return undefined;
  const trainable = !adapter.frozen;
  const A = lowering.param(
    `${path}.lora_A.weight`,
    ctx.unifier.resolveTensor(a),
    trainable,
    LORA_A_INIT,
  );
  const B = lowering.param(
    `${path}.lora_B.weight`,
    ctx.unifier.resolveTensor(b),
    trainable,
    "zeros",
  );
  if (A === undefined || B === undefined) return undefined;
  lowering.noteLora(path, r, alpha, adapter.task);
  return { A, B, scale: alpha / r };
}

const LORA_A_INIT = "normal(0.02)";
