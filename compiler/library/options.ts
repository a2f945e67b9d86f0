/**
 * Reading and checking a primitive's arguments: an instance's argument as a number, enum member
 * or flag, and the range check every rule uses (E0319).
 */
import { type Dim, dimValue } from "../check/dims.js";
import type { PrimitiveContext } from "../check/primitive-rule.js";
import type { Instance, TensorType } from "../check/values.js";

export function num(inst: Instance, name: string): number | undefined {
  const v = inst.args.get(name);
  if (!v) return undefined;
  if (v.k === "int") return dimValue(v.v);
  if (v.k === "float") return v.v;
  return undefined;
}

export function member(inst: Instance, name: string): string | undefined {
  const v = inst.args.get(name);
  return v?.k === "enum" ? v.member : undefined;
}

export function bool(inst: Instance, name: string): boolean | undefined {
  const v = inst.args.get(name);
  return v?.k === "bool" ? v.v : undefined;
}

/** Reports when a known numeric option is outside its range. */
export function requireRange(
  ctx: PrimitiveContext,
  name: string,
  ok: (x: number) => boolean,
  expectation: string,
): void {
  const x = num(ctx.inst, name);
  if (x !== undefined && !ok(x)) {
    ctx.report(
      "E0319",
      ctx.span,
      `${ctx.inst.component}: \`${name}\` must be ${expectation}, found ${x}`,
    );
  }
}

/** An f32 tensor type of the given dims (parameter shapes). */
export const f32Tensor = (dims: Dim[]): TensorType => ({ dtype: "f32", dims });
