/**
 * How declarations, types and values read in hovers, completion details and signature help:
 * declarations as written in the source (`block FFN(d: Dim, hidden: Dim, act: Act = gelu)`),
 * values with their inferred dtype and symbolic shape (`f32[B, T, d]`).
 */
import type { ComponentDecl, ParamDecl, Span, TrainDecl } from "../../grammar/ast.js";
import { formatDim } from "../../compiler/check/dims.js";
import type { Unifier } from "../../compiler/check/unify.js";
import { type TensorType, type Value, formatTensorType } from "../../compiler/check/values.js";

/** Source text of a span, with runs of whitespace collapsed (multi-line headers read on one line). */
export function sourceText(text: string, span: Span): string {
  return text
    .slice(span.start, span.end)
    .replace(/\s*\n\s*/g, " ")
    .replace(/\(\s+/g, "(")
    .replace(/,\s*\)/g, ")");
}

export function paramText(text: string, p: ParamDecl): string {
  return sourceText(text, p.span);
}

/** `block FFN(d: Dim, hidden: Dim, act: Act = gelu, bias: Bool = true)`. */
export function componentHeader(text: string, decl: ComponentDecl | TrainDecl): string {
  const form = decl.kind === "TrainDecl" ? "train" : decl.form;
  return `${form} ${decl.name.name}(${decl.params.map((p) => paramText(text, p)).join(", ")})`;
}

/** The ports of a component, one per line (`in x: f32[B, T, d]`). */
export function portLines(text: string, decl: ComponentDecl | TrainDecl): string[] {
  const out: string[] = [];
  for (const s of decl.body) {
    if (s.kind === "PortDecl")
      out.push(`  ${s.direction} ${s.name.name}: ${sourceText(text, s.type.span)}`);
  }
  return out;
}

export function tensorText(t: TensorType, unifier?: Unifier): string {
  return formatTensorType(unifier ? unifier.resolveTensor(t) : t);
}

/** A value's type for a hover: `f32[B, T, d]`, `Dim = 4*d`, `instance of FFN`. */
export function valueText(v: Value, unifier?: Unifier): string | undefined {
  switch (v.k) {
    case "tensor":
      return tensorText(v.t, unifier);
    case "int": {
      const d = unifier ? unifier.resolve(v.v) : v.v;
      return `${v.isDim ? "Dim" : "Int"} = ${formatDim(d)}`;
    }
    case "float":
      return v.v === undefined ? "Float" : `Float = ${v.v}`;
    case "bool":
      return v.v === undefined ? "Bool" : `Bool = ${v.v}`;
    case "string":
      return v.v === undefined ? "String" : `String = ${JSON.stringify(v.v)}`;
    case "enum":
      return v.member === undefined ? v.enumName : `${v.enumName}.${v.member}`;
    case "taskset":
      return `tasks ${v.set} { ${v.members.join(", ")} }`;
    case "instance": {
      const i = v.inst;
      const ins = i.inputs.map((p) => tensorText(p.type, unifier));
      if (i.perTask !== undefined) ins.push(`${i.perTask}[...]`);
      const outs = i.outputs.map((p) => tensorText(p.type, unifier));
      const role = i.role === "module" ? "instance" : i.role;
      const sig =
        i.role === "module"
          ? `: (${ins.join(", ")}) -> ${outs.length === 1 ? outs[0] : `(${outs.join(", ")})`}`
          : "";
      return `${i.perTask !== undefined ? "per-task " : ""}${role} of ${i.component}${sig}`;
    }
    case "component":
      return `component ${v.decl.name.name}`;
    case "builtin":
      return `builtin ${v.name}`;
    case "list": {
      const first = v.element ?? v.items[0];
      const inner = first ? valueText(first, unifier) : undefined;
      const n = v.count ? formatDim(v.count) : String(v.items.length);
      return `list of ${n}${inner ? ` × ${inner}` : ""}`;
    }
    case "record":
      return `{ ${[...v.fields.keys()].join(", ")} }`;
    case "outputs":
      return `{ ${[...v.fields].map(([k, t]) => `${k}: ${tensorText(t, unifier)}`).join(", ")} }`;
    case "init":
      return `initialiser ${v.name}`;
    case "unknown":
      return undefined;
  }
}

/** `1,234,567 (1.23M)`. */
export function countText(n: number): string {
  const exact = Math.round(n).toLocaleString("en-US");
  return n >= 10_000 ? `${exact} (${shortCount(n)})` : exact;
}

/** `1.23M`, `45.1K`, `812`. */
export function shortCount(n: number): string {
  const units: [number, string][] = [
    [1e12, "T"],
    [1e9, "B"],
    [1e6, "M"],
    [1e3, "K"],
  ];
  for (const [size, unit] of units) {
    if (n >= size) {
      const v = n / size;
      return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)}${unit}`;
    }
  }
  return String(Math.round(n));
}
