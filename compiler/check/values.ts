/**
 * Semantic values of the checker: what an expression evaluates to at compile time. Scalars may
 * be known or symbolic; tensors carry a dtype and a symbolic shape; instances carry the
 * signature of a constructed component.
 */
import type { ComponentDecl, Span } from "../../grammar/ast.js";
import { type Dim, formatDim } from "./dims.js";

export const DTYPES = ["f32", "f16", "bf16", "i32", "i64", "bool"] as const;
export type DType = (typeof DTYPES)[number];

/** A declared `tasks` set. */
export interface TaskSet {
  name: string;
  members: string[];
  file: string;
  span: Span;
}

/** A declared `enum`. */
export interface EnumInfo {
  name: string;
  members: string[];
  file: string;
  span: Span;
}

/**
 * A tensor type. `lead` names a sequence of leading dimensions of unknown rank (`...`): a
 * rigid name inside the component that declared it, or a variable (`?…n`) while unifying.
 * Task-id tensors have `dtype: "task"` and the set's name in `taskSet`.
 */
export interface TensorType {
  dtype: DType | "task";
  taskSet?: string;
  lead?: string;
  dims: Dim[];
}

/** One port of a component (after its constructor arguments are substituted). */
export interface Port {
  name: string;
  type: TensorType;
  doc?: string;
  span: Span;
  file: string;
}

/** A learnable tensor of an instance, as declared (`param weight: f32[out, in]`). */
export interface WeightInfo {
  name: string;
  type: TensorType;
}

/** The kind of thing a primitive's instance is, from its rule table. */
export type InstanceRole = "module" | "router" | "adapter" | "optimizer" | "parameter group";

/** A constructed component. */
export interface Instance {
  /** Component name (`FFN`), for messages and generated names. */
  component: string;
  form: "block" | "model" | "primitive";
  role: InstanceRole;
  decl: ComponentDecl;
  declFile: string;
  /** Constructor arguments after defaults, by parameter name. */
  args: Map<string, Value>;
  inputs: Port[];
  outputs: Port[];
  /** Weights and named sub-instances reachable with `.name`. */
  weights: Map<string, TensorType>;
  children: Map<string, Instance>;
  /** Set for `per task` instances: applying them takes task ids of this set last. */
  perTask?: string;
  frozen: boolean;
  /** Where it was constructed. */
  span: Span;
  file: string;
  /** Full parameter path (elaboration only), e.g. `blocks.3.moe`. */
  path?: string;
  /** Unique id within one evaluation. */
  id: number;
  /** The component's free dims (`B#7`, `…#7`), renamed to fresh variables at each application. */
  freeAtoms: string[];
  /** The task whose instance this is, inside `per task`. */
  task?: string;
  /** For `per task` instances (elaboration and lowering): each task's own instance. */
  perTaskInstances?: Map<string, Instance>;
  /** For `base with adapter`: the two parts. */
  wrapOf?: { base: Instance; adapter: Instance };
  /** `base with LoRA(targets: [...])`: the adapter goes on the descendants whose path ends with a pattern. */
  targeted?: { adapter: Instance; patterns: string[] };
}

export type Value =
  | { k: "int"; v: Dim; isDim: boolean }
  | { k: "float"; v?: number }
  | { k: "bool"; v?: boolean }
  | { k: "string"; v?: string }
  | { k: "enum"; enumName: string; member?: string }
  | { k: "taskset"; set: string; members: string[] }
  | { k: "tensor"; t: TensorType; node?: number }
  | { k: "instance"; inst: Instance }
  | { k: "component"; decl: ComponentDecl; file: string }
  | { k: "builtin"; name: string }
  | { k: "list"; items: Value[]; count?: Dim; element?: Value }
  | { k: "record"; fields: Map<string, Value>; keySpans: Map<string, Span> }
  | { k: "outputs"; fields: Map<string, TensorType>; nodes?: Map<string, number> }
  | { k: "init"; name: string }
  | { k: "unknown" };

export const UNKNOWN: Value = { k: "unknown" };

export function formatShape(t: TensorType): string {
  const dims = t.dims.map((d) => formatDim(d));
  if (t.lead !== undefined) dims.unshift("...");
  return `[${dims.join(", ")}]`;
}

export function formatTensorType(t: TensorType): string {
  const dt = t.dtype === "task" ? (t.taskSet ?? "task") : t.dtype;
  return `${dt}${formatShape(t)}`;
}

/** A short description of a value's type, for "expected X, found Y" messages. */
export function describeValue(v: Value): string {
  switch (v.k) {
    case "int":
      return v.isDim ? "Dim" : "Int";
    case "float":
      return "Float";
    case "bool":
      return "Bool";
    case "string":
      return "String";
    case "enum":
      return v.enumName;
    case "taskset":
      return `task set ${v.set}`;
    case "tensor":
      return `tensor ${formatTensorType(v.t)}`;
    case "instance":
      return `${v.inst.role === "module" ? "instance" : v.inst.role} of ${v.inst.component}`;
    case "component":
      return `component ${v.decl.name.name} (not constructed)`;
    case "builtin":
      return `builtin ${v.name}`;
    case "list":
      return "list";
    case "record":
      return "record";
    case "outputs":
      return `outputs { ${[...v.fields.keys()].join(", ")} }`;
    case "init":
      return "initialiser";
    case "unknown":
      return "unknown";
  }
}

/** The literal value, if any, for printing parameter values (`8`, `gelu`, `true`). */
export function formatScalar(v: Value): string | undefined {
  switch (v.k) {
    case "int":
      return formatDim(v.v);
    case "float":
      return v.v === undefined ? undefined : String(v.v);
    case "bool":
      return v.v === undefined ? undefined : String(v.v);
    case "string":
      return v.v === undefined ? undefined : JSON.stringify(v.v);
    case "enum":
      return v.member;
    default:
      return undefined;
  }
}
