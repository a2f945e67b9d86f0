/**
 * The abstract evaluator shared by checking and elaboration. It walks component bodies and
 * computes, for every expression, a compile-time value: a (possibly symbolic) scalar, a tensor
 * type, or an instance. In `check` mode components are evaluated once, generically, with their
 * parameters as symbols; in `elaborate` mode a model is instantiated with concrete parameters,
 * every instance's parameters are registered under their dotted path.
 */
import type {
  Arg,
  ComponentDecl,
  EnumDecl,
  Expr,
  Ident,
  ParamDecl,
  Span,
  Stmt,
  TrainDecl,
  TypeRef,
} from "../../grammar/ast.js";
import { bindArgs } from "./bind-args.js";
import { BUILTINS, type BuiltinArg } from "./builtins.js";
import { type Diagnostic, type DiagnosticCode, diagnostic, suggest } from "../diagnostics.js";
import {
  type Dim,
  dimAdd,
  dimAtom,
  dimAtoms,
  dimConst,
  dimDiv,
  dimMul,
  dimScale,
  dimSub,
  dimValue,
  formatDim,
} from "./dims.js";
import type { EvalMode, MoeRecord, PrimitiveContext, PrimitiveLibrary } from "./primitive-rule.js";
import type { GlobalDecl, ModuleScope, ResolvedProgram } from "./resolve-names.js";
import { Unifier, broadcastShapes, unifyTensor } from "./unify.js";
import {
  DTYPES,
  type DType,
  type Instance,
  type InstanceRole,
  type Port,
  type TensorType,
  type Value,
  UNKNOWN,
  describeValue,
  formatTensorType,
} from "./values.js";

/** A learnable tensor found by elaboration. */
export interface ParamRecord {
  path: string;
  shape: number[];
  dtype: DType;
  trainable: boolean;
  /** Set when the parameter belongs to one task's instance (`per task`). */
  task?: string;
  /** Set on a table indexed by task id: row i belongs to task `taskRows[i]` alone. */
  taskRows?: string[];
  init?: string;
  file: string;
  span: Span;
}

/** The declared type of a constructor parameter. */
export type ParamType =
  | { k: "Dim" | "Int" | "Float" | "Bool" | "String" | "Tasks" | "TaskMap" }
  | { k: "enum"; name: string; members: string[]; decl?: EnumDecl; file?: string }
  | { k: "role"; role: InstanceRole }
  | { k: "list"; element: ParamType }
  | { k: "tensor"; t: TensorType }
  | { k: "error" };

// ---------------------------------------------------------------- name references (editor)

/** What kind of declaration a name use refers to. */
export type ReferenceKind =
  | "component"
  | "tasks"
  | "enum"
  | "const"
  | "train"
  | "param"
  | "port"
  | "weight"
  | "binding"
  | "dim"
  | "enumMember"
  | "task";

/** A declaration a name use refers to: the span of its name where it is declared. */
export interface ReferenceTarget {
  file: string;
  span: Span;
  kind: ReferenceKind;
  name: string;
}

/**
 * One name use resolved to its declaration, as the checker resolved it (flow-sensitively).
 * A rebinding (`x = x + 1`) is recorded as a use of the first binding of `x`; later uses may
 * point at the rebinding, so targets are followed transitively by the editor.
 */
export interface NameReference {
  file: string;
  span: Span;
  target: ReferenceTarget;
}

const ROLE_KIND: Record<LocalVar["role"], ReferenceKind> = {
  param: "param",
  in: "port",
  out: "port",
  let: "binding",
  weight: "weight",
  dim: "dim",
};

interface LocalVar {
  value: Value;
  span: Span;
  role: "param" | "in" | "out" | "let" | "weight" | "dim";
  assigned: boolean;
  used: boolean;
}

class Scope {
  readonly vars = new Map<string, LocalVar>();
  constructor(readonly parent?: Scope) {}
  lookup(name: string): { v: LocalVar; scope: Scope } | undefined {
    for (let s: Scope | undefined = this; s; s = s.parent) {
      const v = s.vars.get(name);
      if (v) return { v, scope: s };
    }
    return undefined;
  }
  names(): string[] {
    const out: string[] = [];
    for (let s: Scope | undefined = this; s; s = s.parent) out.push(...s.vars.keys());
    return out;
  }
}

/** State of one component body being evaluated. */
interface Frame {
  module: ModuleScope;
  file: string;
  scope: Scope;
  prefix: string;
  anon: Map<string, number>;
  frozen: boolean;
  task?: string;
  taskSets: string[];
  instId: number;
  signatureOnly: boolean;
  freeAtoms: string[];
  lead?: string;
  inputs: Port[];
  outputs: Port[];
  weights: Map<string, TensorType>;
  children: Map<string, Instance>;
  /** The top-level scope of the body (ports, params, children live here). */
  top: Scope;
  /** Errors reported before this body was evaluated (unused-name warnings wait for a clean body). */
  errorsBefore: number;
  /** Lower mode: the arguments an application binds to the `in` ports, in order. */
  pendingInputs?: BuiltinArg[];
  /** Lower mode: this is the model itself, whose `in` ports become IR inputs. */
  rootInputs?: boolean;
}

const MAX_DEPTH = 64;
const MAX_REPEAT = 100_000;

/**
 * What a later pass adds to concrete evaluation (lower mode): a node for every tensor (lowering
 * builds IR) and its own way to apply an instance once the application type-checks (lowering
 * inlines it: compiler/lower/inliner.ts).
 */
export interface EvaluationHooks {
  /** The node of a model input port. */
  input(name: string, t: TensorType): number | undefined;
  /** The node of the parameter at `path` (created on first use). */
  param(
    path: string,
    t: TensorType,
    trainable: boolean,
    init: string | undefined,
  ): number | undefined;
  /** The node of a tensor-valued expression whose operands were already computed. */
  tensorExpr(
    e: Expr,
    value: Extract<Value, { k: "tensor" }>,
    operand: (e: Expr) => Value | undefined,
    file: string,
  ): number | undefined;
  /** Applies an instance to its (checked) arguments. */
  apply(inst: Instance, values: BuiltinArg[], span: Span, frame: Frame): Value;
}

export class Evaluator {
  readonly unifier = new Unifier();
  readonly params: ParamRecord[] = [];
  readonly moes: MoeRecord[] = [];
  private readonly paramPaths = new Map<string, ParamRecord>();
  private readonly reported = new Set<string>();
  private nextId = 1;
  private depth = 0;
  private errorCount = 0;
  /** Construction sites being elaborated, outermost first. */
  private readonly sites: { file: string; span: Span; component: string }[] = [];
  private readonly constCache = new Map<string, Value>();
  /** Check mode: signatures of components by (component, arguments); see construct. */
  private readonly signatures = new Map<
    string,
    { inputs: Port[]; outputs: Port[]; weights: Map<string, TensorType>; freeAtoms: string[] }
  >();
  /** Expression → value, recorded when `recordTypes` is set (hovers and inlay hints). */
  readonly types = new Map<Expr, Value>();
  recordTypes = false;
  /** Name uses → declarations, recorded when `recordReferences` is set (go to definition, rename). */
  readonly references: NameReference[] = [];
  recordReferences = false;
  private readonly referenceKeys = new Map<string, Set<number>>();
  /** Every instance constructed, recorded when `recordInstances` is set (parameter counts per block). */
  readonly instances: Instance[] = [];
  recordInstances = false;
  /** Set in lower mode: what the later pass computes for tensors and applications. */
  hooks?: EvaluationHooks;
  /** The latest value of each expression (with hooks): operands of the expression being computed. */
  private readonly current = new Map<Expr, Value>();

  constructor(
    readonly program: ResolvedProgram,
    readonly diagnostics: Diagnostic[],
    readonly mode: EvalMode,
    readonly library: PrimitiveLibrary,
  ) {}

  report(
    code: DiagnosticCode,
    file: string,
    span: Span,
    message: string,
    extra: { hint?: string; related?: { file: string; span: Span; message: string }[] } = {},
  ): void {
    const key = `${code}|${file}|${span.start}|${span.end}|${message}`;
    if (this.reported.has(key)) return;
    this.reported.add(key);
    const related = [...(extra.related ?? [])];
    // An error inside the standard library comes from the user's arguments (`heads: 6` with
    // d = 64): it is shown at the user's innermost call, with the library's line as a note.
    let sites = this.sites;
    const inStd = (f: string) => this.program.scopes.get(f)?.module.isStdlib === true;
    const userSite = inStd(file) ? sites.findLastIndex((site) => !inStd(site.file)) : -1;
    if (userSite >= 0) {
      const at = sites[userSite]!;
      related.unshift({
        file,
        span,
        message: `in ${sites[sites.length - 1]!.component} (standard library)`,
      });
      file = at.file;
      span = at.span;
      sites = sites.slice(0, userSite);
    }
    // During elaboration an error inside a component is shown with the uses that led to it.
    if (this.mode === "elaborate") {
      for (const site of sites.slice(1).reverse().slice(0, 4)) {
        if (site.file === file && site.span.start === span.start) continue;
        related.push({
          file: site.file,
          span: site.span,
          message: `in ${site.component}(...) used here`,
        });
      }
    }
    this.diagnostics.push(diagnostic(code, file, span, message, { ...extra, related }));
    if (!code.startsWith("W")) this.errorCount++;
  }

  /** Records one name use (once per span; a component's header is evaluated at every use). */
  private recordReference(file: string, span: Span, target: ReferenceTarget): void {
    // Two names of one file never start at the same offset.
    let seen = this.referenceKeys.get(file);
    if (!seen) this.referenceKeys.set(file, (seen = new Set()));
    if (seen.has(span.start)) return;
    seen.add(span.start);
    this.references.push({ file, span, target });
  }

  private recordGlobalReference(file: string, span: Span, g: GlobalDecl): void {
    this.recordReference(file, span, {
      file: g.file,
      span: g.decl.name.span,
      kind: g.kind === "component" ? "component" : g.kind,
      name: g.decl.name.name,
    });
  }

  // ---------------------------------------------------------------- entry points

  /** Checks one block or model generically (parameters as symbols). */
  checkComponent(decl: ComponentDecl, file: string): void {
    const frame = this.newFrame(this.scopeOf(file), file, "", false);
    this.bindSymbolicParams(decl.params, frame, decl.form === "model");
    frame.signatureOnly = decl.form === "primitive";
    this.evalBody(decl.body, frame);
    if (decl.form !== "primitive") this.finishBody(frame, decl.body);
  }

  /** Checks a training program: its body, and that it binds `loss` and `optimizer`. */
  checkTrain(decl: TrainDecl, file: string): void {
    const frame = this.newFrame(this.scopeOf(file), file, "", false);
    this.bindSymbolicParams(decl.params, frame, false);
    this.evalBody(decl.body, frame);
    const loss = frame.top.vars.get("loss");
    const opt = frame.top.vars.get("optimizer");
    // The training program reads these two; they are not unused bindings.
    if (loss) loss.used = true;
    if (opt) opt.used = true;
    if (!loss) {
      this.report(
        "E0410",
        file,
        decl.name.span,
        `training program \`${decl.name.name}\` has no \`loss\``,
        {
          hint: "bind a scalar loss, e.g. `loss = cross_entropy(logits, labels)`",
        },
      );
    } else if (
      loss.value.k !== "unknown" &&
      (loss.value.k !== "tensor" ||
        loss.value.t.dims.length !== 0 ||
        loss.value.t.lead !== undefined)
    ) {
      this.report(
        "E0410",
        file,
        loss.span,
        `\`loss\` must be a scalar f32[], found ${describeValue(loss.value)}`,
        {
          hint: "reduce it with mean(...) or use a loss builtin (cross_entropy, distill, mse)",
        },
      );
    }
    if (!opt) {
      this.report(
        "E0410",
        file,
        decl.name.span,
        `training program \`${decl.name.name}\` has no \`optimizer\``,
        {
          hint: "bind one, e.g. `optimizer = AdamW(lr: 1e-4)` (import std.optim { AdamW })",
        },
      );
    } else if (
      opt.value.k !== "unknown" &&
      !(opt.value.k === "instance" && opt.value.inst.role === "optimizer")
    ) {
      this.report(
        "E0410",
        file,
        opt.span,
        `\`optimizer\` must be an optimizer, found ${describeValue(opt.value)}`,
      );
    }
    this.finishBody(frame, decl.body);
  }

  /**
   * Binds constructor parameters as symbols for a generic check, checking their defaults;
   * `needDefaults` (models, the entry points) makes a missing default an error.
   */
  private bindSymbolicParams(
    params: readonly ParamDecl[],
    frame: Frame,
    needDefaults: boolean,
  ): void {
    for (const p of params) {
      const type = this.evalParamType(p.type, frame);
      if (p.default) {
        const v = this.evalExpr(p.default, frame, undefined, type);
        this.checkParamValue(v, type, p.default.span, frame, `default of \`${p.name.name}\``);
      } else if (needDefaults) {
        this.report(
          "E0316",
          frame.file,
          p.name.span,
          `model parameter \`${p.name.name}\` needs a default`,
          {
            hint: `a model is an entry point: write \`${p.name.name}: ${typeText(p.type)} = ...\``,
          },
        );
      }
      this.define(frame, p.name, this.symbolicValue(p.name.name, type), "param");
    }
  }

  /** Instantiates a model with its defaults (and overrides), registering every parameter. */
  elaborate(
    decl: ComponentDecl,
    file: string,
    overrides: Map<string, Value>,
  ): Instance | undefined {
    const caller = this.newFrame(this.scopeOf(file), file, "", false);
    return this.construct(decl, file, [], decl.name.span, caller, "", {}, overrides);
  }

  // ---------------------------------------------------------------- frames and names

  private scopeOf(file: string): ModuleScope {
    const s = this.program.scopes.get(file);
    if (!s) throw new Error(`internal: no scope for ${file}`);
    return s;
  }

  private newFrame(module: ModuleScope, file: string, prefix: string, frozen: boolean): Frame {
    const top = new Scope();
    return {
      module,
      file,
      scope: top,
      top,
      prefix,
      anon: new Map(),
      frozen,
      taskSets: [],
      instId: this.nextId++,
      signatureOnly: false,
      freeAtoms: [],
      inputs: [],
      outputs: [],
      weights: new Map(),
      children: new Map(),
      errorsBefore: this.errorCount,
    };
  }

  private define(frame: Frame, name: Ident, value: Value, role: LocalVar["role"]): void {
    frame.scope.vars.set(name.name, {
      value,
      span: name.span,
      role,
      assigned: role !== "out",
      used: role !== "let",
    });
  }

  private symbolicValue(name: string, type: ParamType): Value {
    switch (type.k) {
      case "Dim":
        return { k: "int", v: dimAtom(name), isDim: true };
      case "Int":
        return { k: "int", v: dimAtom(name), isDim: false };
      case "Float":
        return { k: "float" };
      case "Bool":
        return { k: "bool" };
      case "String":
        return { k: "string" };
      case "enum":
        return { k: "enum", enumName: type.name };
      default:
        return UNKNOWN;
    }
  }

  private lookupGlobal(frame: Frame, name: string): GlobalDecl | undefined {
    const g = frame.module.names.get(name);
    // Any resolution is a use of an import (as a value, a type like `Lang[B]`, or `act: Act`).
    if (g) frame.module.imported.delete(name);
    return g;
  }

  private globalValue(g: GlobalDecl, frame: Frame, span: Span): Value {
    switch (g.kind) {
      case "component":
        return { k: "component", decl: g.decl, file: g.file };
      case "tasks":
        return { k: "taskset", set: g.decl.name.name, members: g.decl.members.map((m) => m.name) };
      case "enum":
        return UNKNOWN;
      case "train":
        this.report(
          "E0309",
          frame.file,
          span,
          `\`${g.decl.name.name}\` is a training program, not a value`,
        );
        return UNKNOWN;
      case "const": {
        const key = `${g.file}#${g.decl.name.name}`;
        const cached = this.constCache.get(key);
        if (cached) return cached;
        this.constCache.set(key, UNKNOWN); // guards against a const defined by itself
        const cf = this.newFrame(this.scopeOf(g.file), g.file, "", false);
        let v = this.evalExpr(g.decl.value, cf);
        if (g.decl.type) {
          const t = this.evalParamType(g.decl.type, cf);
          this.checkParamValue(v, t, g.decl.value.span, cf, `constant \`${g.decl.name.name}\``);
          if (t.k === "Dim" && v.k === "int") v = { ...v, isDim: true };
        }
        this.constCache.set(key, v);
        return v;
      }
    }
  }

  // ---------------------------------------------------------------- types

  /** Evaluates a declared parameter type. */
  evalParamType(t: TypeRef, frame: Frame): ParamType {
    if (t.kind === "ListType") return { k: "list", element: this.evalParamType(t.element, frame) };
    const name = t.name.name;
    if (t.dims !== undefined) {
      const tt = this.evalTensorType(t, frame, "param");
      return tt ? { k: "tensor", t: tt } : { k: "error" };
    }
    switch (name) {
      case "Dim":
      case "Int":
      case "Float":
      case "Bool":
      case "String":
      case "Tasks":
      case "TaskMap":
        return { k: name };
      case "Module":
        return { k: "role", role: "module" };
      case "Router":
        return { k: "role", role: "router" };
      case "Adapter":
        return { k: "role", role: "adapter" };
      case "Optimizer":
        return { k: "role", role: "optimizer" };
      case "ParamGroup":
        return { k: "role", role: "parameter group" };
    }
    const g = this.lookupGlobal(frame, name);
    if (g?.kind === "enum") {
      if (this.recordReferences) this.recordGlobalReference(frame.file, t.name.span, g);
      return {
        k: "enum",
        name,
        members: g.decl.members.map((m) => m.name),
        decl: g.decl,
        file: g.file,
      };
    }
    this.reportUnknownType(t.name, frame);
    return { k: "error" };
  }

  private reportUnknownType(name: Ident, frame: Frame): void {
    const candidates = [
      "Dim",
      "Int",
      "Float",
      "Bool",
      "String",
      "Module",
      "Router",
      "Adapter",
      "Optimizer",
      "ParamGroup",
      "Tasks",
      ...DTYPES,
      ...[...frame.module.names.entries()]
        .filter(([, g]) => g.kind === "enum" || g.kind === "tasks")
        .map(([n]) => n),
    ];
    const stdHome = this.library.homes.get(name.name);
    const close = stdHome ? undefined : suggest(name.name, candidates);
    this.report("E0207", frame.file, name.span, `unknown type \`${name.name}\``, {
      hint: stdHome
        ? `import it: \`import ${stdHome} { ${name.name} }\``
        : close
          ? `did you mean \`${close}\`?`
          : "types are Dim, Int, Float, Bool, String, a dtype like f32[...], a task set or an enum",
    });
  }

  /**
   * Evaluates `f32[B, T, d]`. For ports (`in`/`out`), unknown names become the component's free
   * dims; for `param`s they are errors (a parameter's shape must follow from the constructor).
   */
  private evalTensorType(
    t: TypeRef,
    frame: Frame,
    use: "in" | "out" | "param",
  ): TensorType | undefined {
    if (t.kind === "ListType" || t.dims === undefined) {
      this.report(
        "E0301",
        frame.file,
        t.span,
        `expected a tensor type like f32[B, T, d], found \`${typeText(t)}\``,
      );
      return undefined;
    }
    const name = t.name.name;
    let dtype: DType | "task";
    let taskSet: string | undefined;
    if ((DTYPES as readonly string[]).includes(name)) dtype = name as DType;
    else {
      const g = this.lookupGlobal(frame, name);
      if (g?.kind === "tasks") {
        dtype = "task";
        taskSet = name;
        if (this.recordReferences) this.recordGlobalReference(frame.file, t.name.span, g);
      } else {
        this.reportUnknownType(t.name, frame);
        return undefined;
      }
    }
    const out: TensorType = { dtype, dims: [] };
    if (taskSet !== undefined) out.taskSet = taskSet;
    t.dims.forEach((d, i) => {
      if (d.kind === "Ellipsis") {
        if (i !== 0) {
          this.report(
            "E0315",
            frame.file,
            d.span,
            "`...` may only stand first, for the leading dims",
          );
          return;
        }
        if (use === "param") {
          this.report("E0317", frame.file, d.span, "a parameter's shape cannot have `...`");
          return;
        }
        if (frame.lead === undefined) {
          frame.lead = `${this.mode === "lower" ? "?" : ""}…#${frame.instId}`;
          frame.freeAtoms.push(frame.lead);
        }
        out.lead = frame.lead;
        return;
      }
      const v = this.evalDim(d, frame, use);
      if (v) out.dims.push(v);
    });
    return out;
  }

  private evalDim(e: Expr, frame: Frame, use: "in" | "out" | "param"): Dim | undefined {
    if (e.kind === "NameExpr" && use !== "param") {
      const name = e.name.name;
      if (!frame.scope.lookup(name) && !this.lookupGlobal(frame, name)) {
        // A free dimension: named by the port that introduces it, fresh per instance.
        // Lowering binds free dims to the sizes of the actual inputs, so they are variables there.
        const atom = `${this.mode === "lower" ? "?" : ""}${name}#${frame.instId}`;
        frame.freeAtoms.push(atom);
        const v: Value = { k: "int", v: dimAtom(atom), isDim: true };
        frame.top.vars.set(name, {
          value: v,
          span: e.span,
          role: "dim",
          assigned: true,
          used: true,
        });
        return v.v;
      }
    }
    const v = this.evalExpr(e, frame);
    if (v.k === "unknown") return undefined;
    if (v.k !== "int") {
      this.report(
        "E0301",
        frame.file,
        e.span,
        `a dimension must be an integer, found ${describeValue(v)}`,
      );
      return undefined;
    }
    if (use === "param") {
      const free = dimAtoms(v.v).filter((a) => frame.freeAtoms.includes(a));
      if (free.length > 0) {
        this.report(
          "E0317",
          frame.file,
          e.span,
          `parameter shape uses \`${free.map((a) => a.replace(/#\d+$/, "")).join("`, `")}\`, a dimension of an input`,
          { hint: "a parameter's shape may only use constructor parameters and constants" },
        );
        return undefined;
      }
    }
    const c = dimValue(v.v);
    if (c !== undefined && c <= 0) {
      this.report("E0315", frame.file, e.span, `dimension must be positive, found ${c}`);
    }
    return v.v;
  }

  // ---------------------------------------------------------------- statements

  private evalBody(stmts: readonly Stmt[], frame: Frame): void {
    for (const s of stmts) this.evalStmt(s, frame);
  }

  private evalStmt(s: Stmt, frame: Frame): void {
    switch (s.kind) {
      case "PortDecl": {
        if (frame.scope !== frame.top) {
          this.report(
            "E0319",
            frame.file,
            s.span,
            "ports must be declared at the top of a component, not inside `repeat` or `if`",
          );
          return;
        }
        const t = this.evalTensorType(s.type, frame, s.direction);
        const port: Port = {
          name: s.name.name,
          type: t ?? { dtype: "f32", dims: [] },
          span: s.span,
          file: frame.file,
        };
        if (s.doc !== undefined) port.doc = s.doc;
        this.checkRedefinition(frame, s.name);
        if (s.direction === "in") {
          frame.inputs.push(port);
          if (t?.taskSet !== undefined && !frame.taskSets.includes(t.taskSet))
            frame.taskSets.push(t.taskSet);
          let value: Value = t ? { k: "tensor", t } : UNKNOWN;
          if (frame.pendingInputs && t) {
            const arg = frame.pendingInputs.shift();
            if (arg?.value.k === "tensor") {
              unifyTensor(this.unifier, t, arg.value.t);
              value = arg.value;
            } else value = UNKNOWN;
          } else if (frame.rootInputs && t && this.hooks) {
            const node = this.hooks.input(s.name.name, this.unifier.resolveTensor(t));
            value =
              node === undefined
                ? UNKNOWN
                : { k: "tensor", t: this.unifier.resolveTensor(t), node };
          }
          this.define(frame, s.name, value, "in");
        } else {
          frame.outputs.push(port);
          this.define(frame, s.name, t ? { k: "tensor", t } : UNKNOWN, "out");
        }
        return;
      }
      case "WeightDecl": {
        if (frame.signatureOnly && frame.scope !== frame.top) return;
        const t = this.evalTensorType(s.type, frame, "param");
        let init: string | undefined;
        if (s.init) {
          const v = this.evalExpr(s.init, frame);
          if (v.k === "init") init = v.name;
          else if (v.k === "builtin" && (v.name === "zeros" || v.name === "ones")) init = v.name;
          else if (v.k !== "unknown") {
            this.report(
              "E0301",
              frame.file,
              s.init.span,
              `expected an initialiser (normal(std), uniform(b), zeros, ones), found ${describeValue(v)}`,
            );
          }
        }
        frame.scope.vars.set(s.name.name, {
          value: t ? { k: "tensor", t } : UNKNOWN,
          span: s.name.span,
          role: "weight",
          assigned: true,
          used: true,
        });
        if (t) {
          frame.weights.set(s.name.name, t);
          if (this.mode === "elaborate") this.registerParam(frame, s.name.name, t, s.span, init);
          if (this.hooks) {
            const node = this.hooks.param(
              this.childPath(frame.prefix, s.name.name),
              this.unifier.resolveTensor(t),
              !frame.frozen,
              init,
            );
            if (node !== undefined)
              frame.scope.vars.get(s.name.name)!.value = { k: "tensor", t, node };
          }
        }
        return;
      }
      case "Binding": {
        if (frame.signatureOnly) return;
        this.evalBinding(s.target, s.value, frame);
        return;
      }
      case "RepeatStmt": {
        if (frame.signatureOnly) return;
        this.evalRepeat(s, frame);
        return;
      }
      case "IfStmt": {
        if (frame.signatureOnly) return;
        const c = this.evalExpr(s.condition, frame);
        if (c.k !== "bool" && c.k !== "unknown") {
          this.report(
            "E0301",
            frame.file,
            s.condition.span,
            `\`if\` needs a Bool, found ${describeValue(c)}`,
          );
        }
        const known = c.k === "bool" ? c.v : undefined;
        const branch = (body: readonly Stmt[] | undefined) => {
          if (!body) return;
          const saved = frame.scope;
          frame.scope = new Scope(saved);
          this.evalBody(body, frame);
          this.finishScope(frame, frame.scope);
          frame.scope = saved;
        };
        if (known !== false) branch(s.then);
        if (known !== true) branch(s.else);
        return;
      }
    }
  }

  private checkRedefinition(frame: Frame, name: Ident): void {
    const existing = frame.scope.vars.get(name.name);
    if (existing && existing.role !== "dim") {
      this.report("E0202", frame.file, name.span, `\`${name.name}\` is already defined`, {
        related: [{ file: frame.file, span: existing.span, message: "defined here" }],
      });
    }
  }

  private evalBinding(target: Ident, valueExpr: Expr, frame: Frame): void {
    const name = target.name;
    const found = frame.scope.lookup(name);
    const hint = this.childPath(frame.prefix, name);
    if (found && this.recordReferences) {
      this.recordReference(frame.file, target.span, {
        file: frame.file,
        span: found.v.span,
        kind: ROLE_KIND[found.v.role],
        name,
      });
    }
    if (found?.v.role === "in") {
      this.report(
        "E0312",
        frame.file,
        target.span,
        `\`${name}\` is an input and cannot be assigned`,
        {
          hint: `bind a new name instead, e.g. \`${name}2 = ...\``,
        },
      );
      this.evalExpr(valueExpr, frame);
      return;
    }
    const expected =
      found?.v.role === "out" && found.v.value.k === "tensor" ? found.v.value.t : undefined;
    const value = this.evalExpr(valueExpr, frame, hint);
    if (found?.v.role === "out") {
      if (expected && value.k !== "unknown")
        this.expectTensor(value, expected, valueExpr.span, frame, `output \`${name}\``);
      found.v.assigned = true;
      if (this.hooks) found.v.value = value;
      return;
    }
    if (found && found.v.role !== "dim") {
      // Rebinding: a loop-carried or updated name keeps its kind.
      if (found.v.role === "param" || found.v.role === "weight") {
        found.scope.vars.set(name, { ...found.v, value, role: "let", span: target.span });
      } else {
        found.v.value = value;
      }
      if (value.k === "instance" && found.scope === frame.top) frame.children.set(name, value.inst);
      return;
    }
    frame.scope.vars.set(name, {
      value,
      span: target.span,
      role: "let",
      assigned: true,
      used: false,
    });
    if (value.k === "instance" && frame.scope === frame.top) frame.children.set(name, value.inst);
  }

  private evalRepeat(s: Extract<Stmt, { kind: "RepeatStmt" }>, frame: Frame): void {
    const countValue = this.evalExpr(s.count, frame);
    let count: number | undefined;
    if (countValue.k === "int") {
      count = dimValue(countValue.v);
      if (count !== undefined && (count < 0 || count > MAX_REPEAT)) {
        this.report(
          "E0319",
          frame.file,
          s.count.span,
          `repeat count must be between 0 and ${MAX_REPEAT}, found ${count}`,
        );
        return;
      }
    } else if (countValue.k !== "unknown") {
      this.report(
        "E0301",
        frame.file,
        s.count.span,
        `repeat needs an Int count, found ${describeValue(countValue)}`,
      );
    }
    const label = s.label?.name ?? "layers";
    const base = frame.prefix;
    const concrete = this.mode !== "check";
    const iterations = concrete && count !== undefined ? count : 1;
    if (concrete && count === undefined) {
      this.report(
        "E0314",
        frame.file,
        s.count.span,
        "the repeat count must be known when the model is instantiated",
      );
      return;
    }
    for (let i = 0; i < iterations; i++) {
      frame.prefix = this.childPath(this.childPath(base, label), String(i));
      const saved = frame.scope;
      const before = snapshotTensors(saved);
      frame.scope = new Scope(saved);
      this.evalBody(s.body, frame);
      this.finishScope(frame, frame.scope);
      frame.scope = saved;
      // A name updated by the body must keep its shape, or later iterations see another type.
      for (const [name, t] of before) {
        const now = saved.lookup(name)?.v.value;
        if (now?.k !== "tensor") continue;
        const conflict = unifyTensor(this.unifier, t, now.t);
        if (conflict) {
          this.report(
            "E0302",
            frame.file,
            s.span,
            `\`${name}\` changes shape inside \`repeat\`: ${formatTensorType(t)} before, ${formatTensorType(this.unifier.resolveTensor(now.t))} after one iteration`,
            {
              hint: "every iteration must leave the names it updates with the same shape",
            },
          );
        }
      }
    }
    frame.prefix = base;
  }

  /** End of a nested scope: unused local bindings. */
  private finishScope(frame: Frame, scope: Scope): void {
    // After an error, "unused" is usually its echo (a misspelt use), so stay quiet.
    if (this.mode !== "check" || this.errorCount > frame.errorsBefore) return;
    for (const [name, v] of scope.vars) {
      if (v.role === "let" && !v.used && !name.startsWith("_")) {
        this.report("W0501", frame.file, v.span, `\`${name}\` is never used`, {
          hint: `remove it, or name it \`_${name}\` to keep it`,
        });
      }
    }
  }

  private finishBody(frame: Frame, body: readonly Stmt[]): void {
    for (const [name, v] of frame.top.vars) {
      if (v.role === "out" && !v.assigned) {
        this.report("E0311", frame.file, v.span, `output \`${name}\` is never assigned`, {
          hint: `assign it in the body: \`${name} = ...\``,
        });
      }
    }
    void body;
    this.finishScope(frame, frame.top);
  }

  private childPath(prefix: string, name: string): string {
    return prefix ? `${prefix}.${name}` : name;
  }

  /** While the adapter of a `with` whose base was made there is built: their shared binding. */
  private sharedWithBinding: string | undefined;

  private registerParam(
    frame: Frame,
    name: string,
    t: TensorType,
    span: Span,
    init?: string,
    taskRows?: string[],
  ): void {
    const path = this.childPath(frame.prefix, name);
    const shape: number[] = [];
    for (const d of t.dims) {
      const v = dimValue(this.unifier.resolve(d));
      if (v === undefined) {
        this.report(
          "E0314",
          frame.file,
          span,
          `the shape of parameter \`${path}\` is not known: ${formatTensorType(t)}`,
        );
        return;
      }
      shape.push(v);
    }
    const existing = this.paramPaths.get(path);
    if (existing) {
      const shared = this.sharedWithBinding;
      this.report("E0202", frame.file, span, `parameter \`${path}\` is defined twice`, {
        related: [{ file: existing.file, span: existing.span, message: "first defined here" }],
        hint:
          shared !== undefined && path.startsWith(`${shared}.`)
            ? `a base made in a \`with\` keeps its weights under \`${shared}\` beside the adapter's, and both have \`${path.slice(shared.length + 1).split(".")[0]}\`: bind the base to its own name first, then attach the adapter to that name`
            : "bind the second instance to another name",
      });
      return;
    }
    const rec: ParamRecord = {
      path,
      shape,
      dtype: t.dtype === "task" ? "i32" : t.dtype,
      trainable: !frame.frozen,
      file: frame.file,
      span,
    };
    if (frame.task !== undefined) rec.task = frame.task;
    if (taskRows !== undefined) rec.taskRows = taskRows;
    if (init !== undefined) rec.init = init;
    this.params.push(rec);
    this.paramPaths.set(path, rec);
  }

  // ---------------------------------------------------------------- expressions

  /**
   * Evaluates an expression. `hint` is the parameter path an instance constructed here takes
   * (the binding's name); `expected` guides bare enum members (`act: gelu`).
   */
  evalExpr(e: Expr, frame: Frame, hint?: string, expected?: ParamType): Value {
    let v = this.evalExprInner(e, frame, hint, expected);
    if (this.hooks) {
      // Operators always make a new value, even where the type rule passed an operand through.
      const computes = e.kind === "BinaryExpr" || e.kind === "UnaryExpr";
      if (v.k === "tensor" && (v.node === undefined || computes)) {
        const node = this.hooks.tensorExpr(e, v, (c) => this.current.get(c), frame.file);
        if (node !== undefined) v = { ...v, node };
      }
      this.current.set(e, v);
    }
    if (this.recordTypes) this.types.set(e, v);
    return v;
  }

  private evalExprInner(
    e: Expr,
    frame: Frame,
    hint: string | undefined,
    expected?: ParamType,
  ): Value {
    switch (e.kind) {
      case "NumberLit":
        return e.isInt
          ? { k: "int", v: dimConst(e.value), isDim: false }
          : { k: "float", v: e.value };
      case "StringLit":
        return { k: "string", v: e.value };
      case "BoolLit":
        return { k: "bool", v: e.value };
      case "ErrorExpr":
        return UNKNOWN;
      case "NameExpr":
        return this.evalName(e.name, frame, expected);
      case "MemberExpr":
        return this.evalMember(e, frame);
      case "CallExpr":
        return this.evalCall(e, frame, hint);
      case "BinaryExpr":
        return this.evalBinary(e, frame);
      case "UnaryExpr": {
        const v = this.evalExpr(e.operand, frame);
        if (e.op === "!") {
          if (v.k === "bool") return v.v === undefined ? v : { k: "bool", v: !v.v };
          if (v.k !== "unknown")
            this.report(
              "E0301",
              frame.file,
              e.span,
              `\`!\` needs a Bool, found ${describeValue(v)}`,
            );
          return UNKNOWN;
        }
        if (v.k === "int") return { ...v, v: dimScale(v.v, -1) };
        if (v.k === "float") return v.v === undefined ? v : { k: "float", v: -v.v };
        if (v.k === "tensor") return v;
        if (v.k !== "unknown")
          this.report("E0301", frame.file, e.span, `cannot negate ${describeValue(v)}`);
        return UNKNOWN;
      }
      case "ListExpr": {
        const element = expected?.k === "list" ? expected.element : undefined;
        return {
          k: "list",
          items: e.elements.map((x, i) =>
            this.evalExpr(
              x,
              frame,
              hint !== undefined ? this.childPath(hint, String(i)) : undefined,
              element,
            ),
          ),
        };
      }
      case "RepeatListExpr":
        return this.evalRepeatList(e, frame, hint, expected);
      case "RecordExpr": {
        const fields = new Map<string, Value>();
        const keySpans = new Map<string, Span>();
        for (const f of e.fields) {
          if (fields.has(f.name.name)) {
            this.report(
              "E0202",
              frame.file,
              f.name.span,
              `field \`${f.name.name}\` is given twice`,
            );
            continue;
          }
          fields.set(f.name.name, this.evalExpr(f.value, frame, undefined, expected));
          keySpans.set(f.name.name, f.name.span);
          if (this.recordReferences) this.recordTaskName(frame, f.name);
        }
        return { k: "record", fields, keySpans };
      }
      case "PerTaskExpr":
        return this.evalPerTask(e.operand, e.span, frame, hint);
      case "FrozenExpr": {
        const saved = frame.frozen;
        const before = this.params.length;
        frame.frozen = true;
        const v = this.evalExpr(e.operand, frame, hint, expected);
        frame.frozen = saved;
        if (v.k === "instance") {
          v.inst.frozen = true;
          for (const own of v.inst.perTaskInstances?.values() ?? []) own.frozen = true;
          // What the operand made is frozen (an adapter's parameters, made when it is
          // attached, by its flag); an instance named here, everything under its path. Not
          // the path of what was made: an adapter's is its base's binding.
          for (const p of this.params.slice(before)) p.trainable = false;
          const made = ["CallExpr", "WithExpr", "PerTaskExpr", "FrozenExpr"].includes(
            e.operand.kind,
          );
          if (v.inst.path !== undefined && !made) this.freezeUnder(v.inst.path);
        } else if (v.k !== "unknown") {
          this.report(
            "E0301",
            frame.file,
            e.span,
            `\`frozen\` applies to an instance, found ${describeValue(v)}`,
          );
        }
        return v;
      }
      case "WithExpr":
        return this.evalWith(e, frame, hint);
    }
  }

  /** A record key that names a task of a visible task set (`{ en_de: 300 }`). */
  private recordTaskName(frame: Frame, key: Ident): void {
    for (const g of frame.module.names.values()) {
      if (g.kind !== "tasks") continue;
      const member = g.decl.members.find((m) => m.name === key.name);
      if (member) {
        this.recordReference(frame.file, key.span, {
          file: g.file,
          span: member.span,
          kind: "task",
          name: key.name,
        });
        return;
      }
    }
  }

  private freezeUnder(path: string): void {
    for (const p of this.params) {
      if (path === "" || p.path === path || p.path.startsWith(path + ".")) p.trainable = false;
    }
  }

  private evalName(name: Ident, frame: Frame, expected?: ParamType): Value {
    const n = name.name;
    if (expected?.k === "enum" && expected.members.includes(n)) {
      const member = expected.decl?.members.find((m) => m.name === n);
      if (this.recordReferences && member && expected.file !== undefined) {
        this.recordReference(frame.file, name.span, {
          file: expected.file,
          span: member.span,
          kind: "enumMember",
          name: n,
        });
      }
      return { k: "enum", enumName: expected.name, member: n };
    }
    const local = frame.scope.lookup(n);
    if (local) {
      if (this.recordReferences) {
        this.recordReference(frame.file, name.span, {
          file: frame.file,
          span: local.v.span,
          kind: ROLE_KIND[local.v.role],
          name: n,
        });
      }
      local.v.used = true;
      if (local.v.role === "out" && !local.v.assigned) {
        this.report(
          "E0201",
          frame.file,
          name.span,
          `output \`${n}\` is read before it is assigned`,
        );
      }
      return local.v.value;
    }
    const g = this.lookupGlobal(frame, n);
    if (g) {
      if (this.recordReferences) this.recordGlobalReference(frame.file, name.span, g);
      frame.module.imported.delete(n);
      return this.globalValue(g, frame, name.span);
    }
    const builtin = BUILTINS.get(n);
    if (builtin) {
      if (n === "zeros" || n === "ones") return { k: "init", name: n };
      return { k: "builtin", name: n };
    }
    if (expected?.k === "enum") {
      const close = suggest(n, expected.members);
      this.report("E0318", frame.file, name.span, `\`${n}\` is not a value of ${expected.name}`, {
        hint: close ? `did you mean \`${close}\`?` : `one of ${expected.members.join(", ")}`,
      });
      return UNKNOWN;
    }
    // A name the standard library exports is a missing import, never a typo of a nearby
    // name (`MoE` is not `mse`).
    const stdHome = this.library.homes.get(n);
    const candidates = [...frame.scope.names(), ...frame.module.names.keys(), ...BUILTINS.keys()];
    const close = stdHome ? undefined : suggest(n, candidates);
    this.report("E0201", frame.file, name.span, `unknown name \`${n}\``, {
      hint: stdHome
        ? `import it: \`import ${stdHome} { ${n} }\``
        : close
          ? `did you mean \`${close}\`?`
          : undefined,
    });
    return UNKNOWN;
  }

  private evalMember(e: Extract<Expr, { kind: "MemberExpr" }>, frame: Frame): Value {
    const obj = this.evalExpr(e.object, frame);
    const m = e.member.name;
    if (obj.k === "unknown") return UNKNOWN;
    if (obj.k === "instance" && this.recordReferences) {
      const d = findBodyDeclaration(obj.inst.decl.body, m);
      if (d) {
        this.recordReference(frame.file, e.member.span, {
          file: obj.inst.declFile,
          span: d.span,
          kind: d.kind,
          name: m,
        });
      }
    }
    if (obj.k === "instance") {
      const w = obj.inst.weights.get(m);
      if (w && this.hooks) {
        const path = this.childPath(obj.inst.path ?? "", m);
        const node = this.hooks.param(
          path,
          this.unifier.resolveTensor(w),
          !obj.inst.frozen,
          undefined,
        );
        return node === undefined ? UNKNOWN : { k: "tensor", t: w, node };
      }
      if (w) return { k: "tensor", t: w };
      const c = obj.inst.children.get(m);
      if (c) return { k: "instance", inst: c };
      // In check mode only an instance's signature is known, not its body's sub-instances.
      if (this.mode === "check" && obj.inst.form !== "primitive") return UNKNOWN;
      const close = suggest(m, [...obj.inst.weights.keys(), ...obj.inst.children.keys()]);
      this.report(
        "E0310",
        frame.file,
        e.member.span,
        `${obj.inst.component} has no parameter or part \`${m}\``,
        {
          hint: close ? `did you mean \`${close}\`?` : undefined,
        },
      );
      return UNKNOWN;
    }
    if (obj.k === "outputs") {
      const f = obj.fields.get(m);
      const node = obj.nodes?.get(m);
      if (f && node !== undefined) return { k: "tensor", t: f, node };
      if (f) return { k: "tensor", t: f };
      const close = suggest(m, obj.fields.keys());
      this.report("E0310", frame.file, e.member.span, `no output \`${m}\``, {
        hint: close
          ? `did you mean \`${close}\`?`
          : `outputs are ${[...obj.fields.keys()].join(", ")}`,
      });
      return UNKNOWN;
    }
    if (obj.k === "tensor" && m === "T") {
      return this.callBuiltin("transpose", [{ value: obj, span: e.object.span }], e.span, frame);
    }
    this.report("E0310", frame.file, e.member.span, `${describeValue(obj)} has no member \`${m}\``);
    return UNKNOWN;
  }

  private evalCall(
    e: Extract<Expr, { kind: "CallExpr" }>,
    frame: Frame,
    hint: string | undefined,
  ): Value {
    const callee = this.evalExpr(e.callee, frame);
    switch (callee.k) {
      case "component": {
        const path = hint ?? this.anonymousPath(frame, callee.decl.name.name);
        const inst = this.construct(callee.decl, callee.file, e.args, e.span, frame, path, {});
        return inst ? { k: "instance", inst } : UNKNOWN;
      }
      case "instance":
        return this.apply(callee.inst, e.args, e.span, frame);
      case "builtin": {
        const b = BUILTINS.get(callee.name)!;
        const bound = bindArgs(
          callee.name,
          b.params.map((p) => ({ name: p.name, required: p.required === true })),
          e.args,
          e.span,
          frame.file,
          this.diagnostics,
        );
        const args = new Map<string, BuiltinArg>();
        for (const p of b.params) {
          const a = bound.get(p.name);
          if (a) args.set(p.name, { value: this.evalExpr(a.value, frame), span: a.value.span });
          else if (p.default) args.set(p.name, { value: p.default, span: e.span });
        }
        return this.runBuiltin(callee.name, args, e.span, frame);
      }
      case "unknown":
        for (const a of e.args) this.evalExpr(a.value, frame);
        return UNKNOWN;
      default:
        this.report(
          "E0309",
          frame.file,
          e.callee.span,
          e.callee.kind === "NameExpr"
            ? `\`${e.callee.name.name}\` is a ${describeValue(callee)} and cannot be called`
            : `${describeValue(callee)} cannot be called`,
        );
        return UNKNOWN;
    }
  }

  private callBuiltin(name: string, positional: BuiltinArg[], span: Span, frame: Frame): Value {
    const b = BUILTINS.get(name)!;
    const args = new Map<string, BuiltinArg>();
    b.params.forEach((p, i) => {
      const a = positional[i];
      if (a) args.set(p.name, a);
      else if (p.default) args.set(p.name, { value: p.default, span });
    });
    return this.runBuiltin(name, args, span, frame);
  }

  private runBuiltin(name: string, args: Map<string, BuiltinArg>, span: Span, frame: Frame): Value {
    const b = BUILTINS.get(name)!;
    return b.rule({
      name,
      args,
      span,
      unifier: this.unifier,
      report: (code, s, message, h) =>
        this.report(code, frame.file, s, message, h ? { hint: h } : {}),
    });
  }

  private anonymousPath(frame: Frame, component: string): string {
    const base = snakeCase(component);
    const key = `${frame.prefix}|${base}`;
    const n = frame.anon.get(key) ?? 0;
    frame.anon.set(key, n + 1);
    return this.childPath(frame.prefix, `${base}_${n}`);
  }

  private evalBinary(e: Extract<Expr, { kind: "BinaryExpr" }>, frame: Frame): Value {
    const a = this.evalExpr(e.left, frame);
    const b = this.evalExpr(e.right, frame);
    if (a.k === "unknown" || b.k === "unknown") return UNKNOWN;
    const op = e.op;
    if (a.k === "tensor" || b.k === "tensor") return this.tensorBinary(e, a, b, frame);
    if (["==", "!=", "<", "<=", ">", ">="].includes(op)) {
      const x = scalarNumber(a);
      const y = scalarNumber(b);
      if (x === null || y === null) {
        if (op === "==" || op === "!=") {
          if (
            a.k === "enum" &&
            b.k === "enum" &&
            a.member !== undefined &&
            b.member !== undefined
          ) {
            return { k: "bool", v: (a.member === b.member) === (op === "==") };
          }
          if (a.k === "bool" && b.k === "bool" && a.v !== undefined && b.v !== undefined) {
            return { k: "bool", v: (a.v === b.v) === (op === "==") };
          }
          return { k: "bool" };
        }
        this.report(
          "E0301",
          frame.file,
          e.span,
          `cannot compare ${describeValue(a)} with ${describeValue(b)}`,
        );
        return UNKNOWN;
      }
      if (x === undefined || y === undefined) return { k: "bool" };
      const r = {
        "==": x === y,
        "!=": x !== y,
        "<": x < y,
        "<=": x <= y,
        ">": x > y,
        ">=": x >= y,
      }[op as "=="];
      return { k: "bool", v: r };
    }
    if (a.k === "int" && b.k === "int") {
      const isDim = a.isDim || b.isDim;
      switch (op) {
        case "+":
          return { k: "int", v: dimAdd(a.v, b.v), isDim };
        case "-":
          return { k: "int", v: dimSub(a.v, b.v), isDim };
        case "*":
          return { k: "int", v: dimMul(a.v, b.v), isDim };
        case "/": {
          const bv = dimValue(b.v);
          if (bv === 0) {
            this.report("E0315", frame.file, e.span, "division by zero");
            return UNKNOWN;
          }
          const r = dimDiv(a.v, b.v);
          if (r.exact === false) {
            this.report(
              "E0315",
              frame.file,
              e.span,
              `${formatDim(a.v)} / ${formatDim(b.v)} is not a whole number`,
              {
                hint: "dimensions divide exactly; check the sizes (e.g. the model width must divide by the number of heads)",
              },
            );
            return UNKNOWN;
          }
          return { k: "int", v: r.dim, isDim };
        }
        case "%": {
          const x = dimValue(a.v);
          const y = dimValue(b.v);
          if (x !== undefined && y !== undefined && y !== 0)
            return { k: "int", v: dimConst(x % y), isDim: false };
          return {
            k: "int",
            v: dimAtom(`(${formatDim(a.v, true)}%${formatDim(b.v, true)})`),
            isDim: false,
          };
        }
        default:
          this.report("E0301", frame.file, e.span, `\`${op}\` needs tensors, found two integers`);
          return UNKNOWN;
      }
    }
    const x = scalarNumber(a);
    const y = scalarNumber(b);
    if (x === null || y === null) {
      this.report(
        "E0301",
        frame.file,
        e.span,
        `\`${op}\` cannot combine ${describeValue(a)} and ${describeValue(b)}`,
      );
      return UNKNOWN;
    }
    if (x === undefined || y === undefined) return { k: "float" };
    const r = { "+": x + y, "-": x - y, "*": x * y, "/": x / y, "%": x % y }[op as "+"];
    if (r === undefined) {
      this.report("E0301", frame.file, e.span, `\`${op}\` needs tensors`);
      return UNKNOWN;
    }
    return { k: "float", v: r };
  }

  private tensorBinary(
    e: Extract<Expr, { kind: "BinaryExpr" }>,
    a: Value,
    b: Value,
    frame: Frame,
  ): Value {
    const scalarOk = (v: Value) => v.k === "int" || v.k === "float";
    if (e.op === "@") {
      if (a.k !== "tensor" || b.k !== "tensor") {
        this.report("E0301", frame.file, e.span, "`@` multiplies two tensors");
        return UNKNOWN;
      }
      return this.matmul(e, a.t, b.t, frame);
    }
    if (["==", "!=", "<", "<=", ">", ">="].includes(e.op)) {
      this.report(
        "E0301",
        frame.file,
        e.span,
        "comparisons are for compile-time values, not tensors",
      );
      return UNKNOWN;
    }
    if (a.k !== "tensor") {
      if (!scalarOk(a)) {
        this.report(
          "E0301",
          frame.file,
          e.left.span,
          `cannot combine ${describeValue(a)} with a tensor`,
        );
        return UNKNOWN;
      }
      return b;
    }
    if (b.k !== "tensor") {
      if (!scalarOk(b)) {
        this.report(
          "E0301",
          frame.file,
          e.right.span,
          `cannot combine a tensor with ${describeValue(b)}`,
        );
        return UNKNOWN;
      }
      return a;
    }
    if (a.t.dtype !== b.t.dtype) {
      this.report(
        "E0304",
        frame.file,
        e.span,
        `\`${e.op}\` of ${formatTensorType(a.t)} and ${formatTensorType(b.t)}: dtypes differ`,
        {
          hint: "convert one side first",
        },
      );
      return UNKNOWN;
    }
    const r = broadcastShapes(this.unifier, a.t, b.t);
    if ("conflict" in r) {
      const c = r.conflict;
      this.report(
        "E0302",
        frame.file,
        e.span,
        `shapes ${formatTensorType(this.unifier.resolveTensor(a.t))} and ${formatTensorType(this.unifier.resolveTensor(b.t))} do not broadcast`,
        {
          hint:
            c.kind === "dim"
              ? `dimension ${c.position} from the left: ${formatDim(c.expected!)} vs ${formatDim(c.found!)}`
              : "the ranks cannot be aligned",
        },
      );
      return UNKNOWN;
    }
    return { k: "tensor", t: r.type };
  }

  private matmul(
    e: Extract<Expr, { kind: "BinaryExpr" }>,
    a: TensorType,
    b: TensorType,
    frame: Frame,
  ): Value {
    const ra = this.unifier.resolveTensor(a);
    const rb = this.unifier.resolveTensor(b);
    if (rb.lead === undefined && rb.dims.length === 2 && ra.dims.length >= 1) {
      // [..., k] @ [k, n] -> [..., n]: the Linear case, any number of leading dims.
      const k1 = ra.dims[ra.dims.length - 1]!;
      const k2 = rb.dims[0]!;
      if (this.unifier.unifyDim(k1, k2) === "mismatch") {
        this.report(
          "E0302",
          frame.file,
          e.span,
          `\`@\` inner dimensions differ: ${formatTensorType(ra)} @ ${formatTensorType(rb)}`,
          {
            hint: `the last dim of the left (${formatDim(k1)}) must equal the first of the right (${formatDim(k2)}); a Linear weight [out, in] is used as x @ transpose(w)`,
          },
        );
        return UNKNOWN;
      }
      if (ra.dtype !== rb.dtype) {
        this.report(
          "E0304",
          frame.file,
          e.span,
          `\`@\` of ${formatTensorType(ra)} and ${formatTensorType(rb)}: dtypes differ`,
        );
      }
      return { k: "tensor", t: { ...ra, dims: [...ra.dims.slice(0, -1), rb.dims[1]!] } };
    }
    if (ra.dims.length < 2 || rb.dims.length < 2) {
      this.report(
        "E0303",
        frame.file,
        e.span,
        `\`@\` needs at least 2 dims on each side, found ${formatTensorType(ra)} @ ${formatTensorType(rb)}`,
      );
      return UNKNOWN;
    }
    const k1 = ra.dims[ra.dims.length - 1]!;
    const k2 = rb.dims[rb.dims.length - 2]!;
    if (this.unifier.unifyDim(k1, k2) === "mismatch") {
      this.report(
        "E0302",
        frame.file,
        e.span,
        `\`@\` inner dimensions differ: ${formatTensorType(ra)} @ ${formatTensorType(rb)}`,
        {
          hint: `the last dim of the left (${formatDim(k1)}) must equal the second-to-last of the right (${formatDim(k2)}); a Linear weight [out, in] is used as x @ transpose(w)`,
        },
      );
      return UNKNOWN;
    }
    if (ra.dtype !== rb.dtype) {
      this.report(
        "E0304",
        frame.file,
        e.span,
        `\`@\` of ${formatTensorType(ra)} and ${formatTensorType(rb)}: dtypes differ`,
      );
    }
    const batchA: TensorType = { ...ra, dims: ra.dims.slice(0, -2) };
    const batchB: TensorType = { ...rb, dims: rb.dims.slice(0, -2) };
    const batch = broadcastShapes(this.unifier, batchA, batchB);
    if ("conflict" in batch) {
      this.report(
        "E0302",
        frame.file,
        e.span,
        `\`@\` batch dimensions differ: ${formatTensorType(ra)} @ ${formatTensorType(rb)}`,
      );
      return UNKNOWN;
    }
    const out: TensorType = {
      ...batch.type,
      dims: [...batch.type.dims, ra.dims[ra.dims.length - 2]!, rb.dims[rb.dims.length - 1]!],
    };
    return { k: "tensor", t: out };
  }

  private evalRepeatList(
    e: Extract<Expr, { kind: "RepeatListExpr" }>,
    frame: Frame,
    hint: string | undefined,
    expected?: ParamType,
  ): Value {
    const c = this.evalExpr(e.count, frame);
    const element = expected?.k === "list" ? expected.element : undefined;
    if (c.k !== "int") {
      if (c.k !== "unknown")
        this.report(
          "E0301",
          frame.file,
          e.count.span,
          `the count in [E; n] must be an Int, found ${describeValue(c)}`,
        );
      return UNKNOWN;
    }
    const n = dimValue(c.v);
    const at = (i: number) => (hint !== undefined ? this.childPath(hint, String(i)) : undefined);
    if (n === undefined) {
      const v = this.evalExpr(e.element, frame, at(0), element);
      return { k: "list", items: [v], count: c.v, element: v };
    }
    if (n < 1 || n > MAX_REPEAT) {
      this.report(
        "E0319",
        frame.file,
        e.count.span,
        `a list of ${n} copies: the count must be between 1 and ${MAX_REPEAT}`,
      );
      return UNKNOWN;
    }
    if (this.mode === "check") {
      // Every copy has the same type: evaluate one and repeat it.
      const v = this.evalExpr(e.element, frame, at(0), element);
      return { k: "list", items: new Array<Value>(n).fill(v) };
    }
    const items: Value[] = [];
    for (let i = 0; i < n; i++) items.push(this.evalExpr(e.element, frame, at(i), element));
    return { k: "list", items };
  }

  private evalPerTask(operand: Expr, span: Span, frame: Frame, hint: string | undefined): Value {
    const call = operand.kind === "CallExpr" ? operand : undefined;
    const callee = call ? this.evalExpr(call.callee, frame) : undefined;
    if (!call || callee?.k !== "component") {
      if (callee?.k !== "unknown") {
        this.report(
          "E0319",
          frame.file,
          operand.span,
          "`per task` applies to a construction, like `per task Bottleneck(d, r: 32)`",
          {
            hint:
              operand.kind === "WithExpr"
                ? "put `per task` on the adapter: `base with per task LoRA(r: 8)` gives each task its own adapter on one shared base"
                : "write `per task` before the call that builds the layer",
          },
        );
      }
      return UNKNOWN;
    }
    const set = this.taskSetOf(frame, span, "per task");
    if (set === undefined) return UNKNOWN;
    const members = this.taskMembers(frame, set);
    const path = hint ?? this.anonymousPath(frame, callee.decl.name.name);
    if (this.mode === "check") {
      const inst = this.construct(callee.decl, callee.file, call.args, call.span, frame, path, {
        perTaskSet: set,
      });
      if (!inst) return UNKNOWN;
      const varying = [...inst.inputs, ...inst.outputs].find((p) =>
        formatTensorType(p.type).includes("[task]"),
      );
      if (varying) {
        this.report(
          "E0407",
          frame.file,
          call.span,
          `the per-task instances of ${inst.component} differ in signature: \`${varying.name}\` is ${formatTensorType(varying.type)}`,
          {
            hint: "per-task arguments may change sizes inside the component, not its inputs or outputs",
          },
        );
        return UNKNOWN;
      }
      inst.perTask = set;
      return { k: "instance", inst };
    }
    let first: Instance | undefined;
    const byTask = new Map<string, Instance>();
    for (const t of members) {
      const inst = this.construct(
        callee.decl,
        callee.file,
        call.args,
        call.span,
        frame,
        this.childPath(path, t),
        { perTaskSet: set, taskPick: t },
      );
      if (!inst) return UNKNOWN;
      byTask.set(t, inst);
      if (!first) first = inst;
      else if (signatureText(inst) !== signatureText(first)) {
        this.report(
          "E0407",
          frame.file,
          call.span,
          `the instances for tasks \`${members[0]}\` and \`${t}\` differ in signature: ${signatureText(first)} vs ${signatureText(inst)}`,
          {
            hint: "per-task arguments may change sizes inside the component, not its inputs or outputs",
          },
        );
        return UNKNOWN;
      }
    }
    if (!first) return UNKNOWN;
    const wrapper: Instance = {
      ...first,
      perTask: set,
      perTaskInstances: byTask,
      path,
      id: this.nextId++,
    };
    return { k: "instance", inst: wrapper };
  }

  /** The task set of a component's task input, for `per task` and task-aware routers. */
  taskSetOf(frame: Frame, span: Span, what: string): string | undefined {
    if (frame.taskSets.length === 1) return frame.taskSets[0];
    if (frame.taskSets.length === 0) {
      this.report(
        "E0405",
        frame.file,
        span,
        `\`${what}\` needs task ids, but this component has no task input`,
        {
          hint: "declare one, e.g. `in task: Lang[B]`, and pass the task ids when applying it",
        },
      );
    } else {
      this.report(
        "E0405",
        frame.file,
        span,
        `\`${what}\` is ambiguous: this component has inputs of several task sets (${frame.taskSets.join(", ")})`,
      );
    }
    return undefined;
  }

  private taskMembers(frame: Frame, set: string): string[] {
    const g = this.lookupGlobal(frame, set);
    return g?.kind === "tasks" ? g.decl.members.map((m) => m.name) : [];
  }

  private evalWith(
    e: Extract<Expr, { kind: "WithExpr" }>,
    frame: Frame,
    hint: string | undefined,
  ): Value {
    const base = this.evalExpr(e.base, frame, hint);
    if (base.k !== "instance") {
      if (base.k !== "unknown")
        this.report(
          "E0408",
          frame.file,
          e.base.span,
          `\`with\` attaches an adapter to an instance, found ${describeValue(base)}`,
        );
      this.evalExpr(e.adapter, frame);
      return UNKNOWN;
    }
    const path = hint ?? base.inst.path ?? this.anonymousPath(frame, base.inst.component);
    // A base made in this `with` has its weights under the same name as the adapter's.
    const saved = this.sharedWithBinding;
    if (base.inst.path === path) this.sharedWithBinding = path;
    let adapterValue: Value;
    try {
      adapterValue = this.evalExpr(e.adapter, frame, path);
    } finally {
      this.sharedWithBinding = saved;
    }
    if (adapterValue.k !== "instance") {
      if (adapterValue.k !== "unknown")
        this.report(
          "E0408",
          frame.file,
          e.adapter.span,
          `expected an adapter after \`with\`, found ${describeValue(adapterValue)}`,
        );
      return UNKNOWN;
    }
    const adapter = adapterValue.inst;
    const b = base.inst;
    const targets = adapter.role === "adapter" ? stringList(adapter.args.get("targets")) : [];
    if (targets.length > 0) return this.attachTargeted(b, adapter, targets, e, frame, path);
    if (b.inputs.length !== 1 || b.outputs.length !== 1) {
      this.report(
        "E0408",
        frame.file,
        e.span,
        `${b.component} has ${b.inputs.length} inputs and ${b.outputs.length} outputs; adapters attach to components with one of each`,
      );
      return UNKNOWN;
    }
    const wrapped: Instance = {
      ...b,
      component: `${b.component} with ${adapter.component}`,
      children: new Map([...b.children, ["adapter", adapter]]),
      weights: new Map(b.weights),
      id: this.nextId++,
      span: e.span,
      file: frame.file,
      path,
    };
    wrapped.wrapOf = { base: b, adapter };
    if (adapter.perTask !== undefined) wrapped.perTask = adapter.perTask;
    if (adapter.role === "adapter") {
      const rule = this.library.rules.get(adapter.component);
      if (adapter.perTaskInstances) {
        // `base with per task LoRA(...)`: one base, each task its own adapter (parameters at
        // `<path>.<task>.lora_A.weight`). Lowering runs the tasks' adapters segmented.
        const byTask = new Map<string, Instance>();
        for (const [task, own] of adapter.perTaskInstances) {
          const one: Instance = { ...wrapped, weights: new Map(b.weights), perTask: undefined };
          one.wrapOf = { base: b, adapter: own };
          const taskFrame = { ...frame, task };
          rule?.attach?.(this.primitiveContext(taskFrame, e.span, own), own, b, one);
          byTask.set(task, one);
        }
        wrapped.perTaskInstances = byTask;
        return { k: "instance", inst: wrapped };
      }
      rule?.attach?.(this.primitiveContext(frame, e.span, adapter), adapter, b, wrapped);
      return { k: "instance", inst: wrapped };
    }
    if (adapter.role !== "module") {
      this.report(
        "E0408",
        frame.file,
        e.adapter.span,
        `a ${adapter.role} cannot be attached with \`with\``,
      );
      return UNKNOWN;
    }
    // A module adapter runs after the base (serial): base's output must fit its input and come out unchanged.
    const out = b.outputs[0]!.type;
    if (adapter.inputs.length !== 1 || adapter.outputs.length !== 1) {
      this.report(
        "E0408",
        frame.file,
        e.adapter.span,
        `${adapter.component} must take one input and give one output to be used as an adapter`,
      );
      return UNKNOWN;
    }
    const fresh = this.freshen(adapter);
    const c1 = unifyTensor(this.unifier, fresh.inputs[0]!, out);
    const c2 = c1 ?? unifyTensor(this.unifier, fresh.outputs[0]!, out);
    if (c1 || c2) {
      this.report(
        "E0408",
        frame.file,
        e.adapter.span,
        `${adapter.component} maps ${formatTensorType(adapter.inputs[0]!.type)} to ${formatTensorType(adapter.outputs[0]!.type)}, but ${b.component} gives ${formatTensorType(out)}`,
        {
          hint: "a serial adapter must keep the shape of its base's output",
        },
      );
      return UNKNOWN;
    }
    return { k: "instance", inst: wrapped };
  }

  /**
   * `base with LoRA(targets: [...])`: the adapter goes on each layer inside `base` whose path
   * ends with a pattern. Elaboration registers the adapters' parameters under those layers'
   * paths (`gpt.h.0.attn.q.lora_A.weight`) and reports a pattern that matches nothing;
   * lowering applies the adapter where it meets a matching layer (inlineApply).
   */
  private attachTargeted(
    b: Instance,
    adapter: Instance,
    patterns: string[],
    e: Extract<Expr, { kind: "WithExpr" }>,
    frame: Frame,
    path: string,
  ): Value {
    const wrapped: Instance = {
      ...b,
      component: `${b.component} with ${adapter.component}`,
      id: this.nextId++,
      span: e.span,
      file: frame.file,
      // The base's own layers, adapted: lowering names their weights and matches the targets
      // under the base's path, as elaboration does (a base bound elsewhere keeps its name).
      path: b.path ?? path,
      targeted: { adapter, patterns },
    };
    // `with per task LoRA(targets: ...)`: applied with the task ids as a last argument, which
    // lowering hands down to the targeted layers (each token gets its own task's LoRA).
    if (adapter.perTask !== undefined) wrapped.perTask = adapter.perTask;
    if (this.mode !== "elaborate") return { k: "instance", inst: wrapped };
    const hits = new Map(patterns.map((p) => [p, 0]));
    // Every instance elaborated inside the base (repeat bodies included), each path once.
    const seen = new Set<string>();
    for (const inner of this.elaborated) {
      if (inner.path === undefined || seen.has(inner.path)) continue;
      const pattern = patterns.find((p) => matchesTarget(inner.path, b.path, p));
      if (pattern === undefined) continue;
      seen.add(inner.path);
      hits.set(pattern, hits.get(pattern)! + 1);
      this.attachToTarget(adapter, inner, frame, e.span);
    }
    for (const [pattern, n] of hits) {
      if (n > 0) continue;
      this.report(
        "E0408",
        frame.file,
        e.adapter.span,
        `${adapter.component} target "${pattern}" matches no layer inside \`${path}\` (${b.component})`,
        { hint: 'a target is the end of a layer\'s path, e.g. "attn.q" or "h.*.mlp.up"' },
      );
    }
    return { k: "instance", inst: wrapped };
  }

  /**
   * A targeted adapter placed on one layer it targets: its parameters under the layer's path
   * (`attn.q.lora_A`), each task's under the task's name for a `per task` one
   * (`attn.q.en_de.lora_A`, as `Linear(d, d) with per task LoRA(...)` puts them under its
   * binding). Per placement (task-id order), the adapter's context and the layer with the
   * adapter attached, for lowering.
   */
  attachToTarget(
    adapter: Instance,
    layer: Instance,
    frame: Frame,
    span: Span,
  ): { ctx: PrimitiveContext; one: Instance }[] {
    const rule = this.library.rules.get(adapter.component);
    const placements = adapter.perTaskInstances
      ? [...adapter.perTaskInstances].map(([task, own]) => ({
          placed: { ...own, path: `${layer.path}.${task}` },
          at: { ...frame, task },
        }))
      : [{ placed: { ...adapter, path: layer.path }, at: frame }];
    return placements.map(({ placed, at }) => {
      const one: Instance = { ...layer, weights: new Map(layer.weights) };
      const ctx = this.primitiveContext(at, span, placed);
      rule?.attach?.(ctx, placed, layer, one);
      return { ctx, one };
    });
  }

  // ---------------------------------------------------------------- construction

  /**
   * Constructs a component: binds its arguments, evaluates its signature (check mode) or its
   * whole body (elaborate mode, registering parameters under `path`).
   */
  construct(
    decl: ComponentDecl,
    declFile: string,
    args: readonly Arg[],
    span: Span,
    caller: Frame,
    path: string,
    opts: { perTaskSet?: string; taskPick?: string },
    overrides?: Map<string, Value>,
  ): Instance | undefined {
    if (this.depth >= MAX_DEPTH) {
      this.report(
        "E0319",
        caller.file,
        span,
        `components nest deeper than ${MAX_DEPTH} levels (does \`${decl.name.name}\` construct itself?)`,
      );
      return undefined;
    }
    const name = decl.name.name;
    const frame = this.newFrame(this.scopeOf(declFile), declFile, path, caller.frozen);
    const task = opts.taskPick ?? caller.task;
    if (task !== undefined) frame.task = task;
    const bound = bindArgs(
      name,
      decl.params.map((p) => ({
        name: p.name.name,
        required: p.default === undefined && !overrides?.has(p.name.name),
      })),
      args,
      span,
      caller.file,
      this.diagnostics,
    );
    const argValues = new Map<string, Value>();
    this.depth++;
    this.sites.push({ file: caller.file, span, component: name });
    try {
      for (const p of decl.params) {
        const type = this.evalParamType(p.type, frame);
        const arg = bound.get(p.name.name);
        let v: Value;
        let vspan: Span;
        if (arg) {
          if (arg.name && this.recordReferences) {
            this.recordReference(caller.file, arg.name.span, {
              file: declFile,
              span: p.name.span,
              kind: "param",
              name: p.name.name,
            });
          }
          v = this.evalExpr(arg.value, caller, this.childPath(path, p.name.name), type);
          vspan = arg.value.span;
          v = this.pickPerTask(v, type, vspan, caller, opts, p.name.name);
          this.checkParamValue(v, type, vspan, caller, `argument \`${p.name.name}\` of ${name}`);
        } else if (overrides?.has(p.name.name)) {
          v = overrides.get(p.name.name)!;
          vspan = p.span;
          this.checkParamValue(v, type, p.span, frame, `--set ${p.name.name}`);
        } else if (p.default) {
          v = this.evalExpr(p.default, frame, this.childPath(path, p.name.name), type);
          vspan = p.default.span;
        } else {
          v = UNKNOWN;
          vspan = span;
        }
        if (type.k === "Dim" && v.k === "int") v = { ...v, isDim: true };
        argValues.set(p.name.name, v);
        frame.scope.vars.set(p.name.name, {
          value: v,
          span: p.name.span,
          role: "param",
          assigned: true,
          used: true,
        });
        void vspan;
      }
      frame.signatureOnly = this.mode !== "elaborate" || decl.form === "primitive";
      // A generic check needs only the signature, which depends on nothing but the arguments:
      // the same component with the same arguments (Linear(d, h) in every layer) is evaluated once.
      const cacheKey =
        this.mode === "check" &&
        decl.form !== "primitive" &&
        !this.recordTypes &&
        !this.recordReferences
          ? signatureKey(declFile, name, argValues, task)
          : undefined;
      const cached = cacheKey === undefined ? undefined : this.signatures.get(cacheKey);
      if (cached) {
        frame.inputs = cached.inputs;
        frame.outputs = cached.outputs;
        frame.weights = new Map(cached.weights);
        frame.freeAtoms = cached.freeAtoms;
      } else {
        this.evalBody(decl.body, frame);
        if (cacheKey !== undefined) {
          this.signatures.set(cacheKey, {
            inputs: frame.inputs,
            outputs: frame.outputs,
            weights: frame.weights,
            freeAtoms: frame.freeAtoms,
          });
        }
      }
      const rule = decl.form === "primitive" ? this.library.rules.get(name) : undefined;
      if (decl.form === "primitive" && !rule) {
        this.report(
          "E0208",
          declFile,
          decl.name.span,
          `the compiler does not implement primitive \`${name}\``,
        );
        return undefined;
      }
      const inst: Instance = {
        component: name,
        form: decl.form,
        role: rule?.role ?? "module",
        decl,
        declFile,
        args: argValues,
        inputs: frame.inputs,
        outputs: frame.outputs,
        weights: frame.weights,
        children: frame.children,
        frozen: frame.frozen,
        span,
        file: caller.file,
        path,
        id: frame.instId,
        freeAtoms: frame.freeAtoms,
      };
      if (task !== undefined) inst.task = task;
      if (rule?.construct) rule.construct(this.primitiveContext(caller, span, inst, frame));
      if (this.recordInstances) this.instances.push(inst);
      if (this.mode === "elaborate") this.elaborated.push(inst);
      return inst;
    } finally {
      this.depth--;
      this.sites.pop();
    }
  }

  /** Inside `per task`, a record argument gives each task its own value. */
  private pickPerTask(
    v: Value,
    type: ParamType,
    span: Span,
    caller: Frame,
    opts: { perTaskSet?: string; taskPick?: string },
    param: string,
  ): Value {
    if (v.k !== "record" || type.k === "TaskMap") return v;
    if (opts.perTaskSet === undefined) {
      this.report(
        "E0301",
        caller.file,
        span,
        `a record for \`${param}\` is only allowed under \`per task\``,
        {
          hint: `write \`per task ...\` to give each task its own value`,
        },
      );
      return UNKNOWN;
    }
    const members = this.taskMembers(caller, opts.perTaskSet);
    const missing = members.filter((m) => !v.fields.has(m));
    const extra = [...v.fields.keys()].filter((k) => !members.includes(k));
    if (missing.length > 0 || extra.length > 0) {
      const where = extra.length > 0 ? (v.keySpans.get(extra[0]!) ?? span) : span;
      this.report(
        "E0406",
        caller.file,
        where,
        `the values for \`${param}\` do not match task set ${opts.perTaskSet}`,
        {
          hint: [
            missing.length ? `missing ${missing.join(", ")}` : "",
            extra.length ? `not tasks of ${opts.perTaskSet}: ${extra.join(", ")}` : "",
          ]
            .filter(Boolean)
            .join("; "),
        },
      );
      return UNKNOWN;
    }
    if (opts.taskPick !== undefined) return v.fields.get(opts.taskPick)!;
    // Generic check: the value differs per task; a symbol keeps shapes honest.
    const sample = v.fields.values().next().value as Value;
    if (sample.k === "int") return { k: "int", v: dimAtom(`${param}[task]`), isDim: sample.isDim };
    if (sample.k === "float") return { k: "float" };
    return sample;
  }

  /** Checks a value against a declared parameter type. */
  checkParamValue(v: Value, type: ParamType, span: Span, frame: Frame, what: string): void {
    if (v.k === "unknown" || type.k === "error") return;
    const fail = (expected: string) =>
      this.report(
        "E0301",
        frame.file,
        span,
        `${what}: expected ${expected}, found ${describeValue(v)}`,
      );
    switch (type.k) {
      case "Dim":
      case "Int":
        if (v.k !== "int") return fail(type.k);
        if (type.k === "Dim") {
          const c = dimValue(v.v);
          if (c !== undefined && c <= 0)
            this.report("E0315", frame.file, span, `${what}: a Dim must be positive, found ${c}`);
        }
        return;
      case "Float":
        if (v.k !== "float" && v.k !== "int") fail("Float");
        return;
      case "Bool":
        if (v.k !== "bool") fail("Bool");
        return;
      case "String":
        if (v.k !== "string") fail("String");
        return;
      case "Tasks":
        if (v.k !== "taskset") fail("a task set");
        return;
      case "TaskMap":
        if (v.k !== "record") fail("a record of task names, like { en_de: [0, 1] }");
        return;
      case "enum":
        if (v.k !== "enum" || v.enumName !== type.name)
          fail(`a value of ${type.name} (${type.members.join(", ")})`);
        return;
      case "role":
        if (v.k !== "instance")
          return fail(type.role === "module" ? "an instance" : `a ${type.role}`);
        if (v.inst.role !== type.role)
          fail(type.role === "module" ? "a module instance" : `a ${type.role}`);
        return;
      case "list":
        if (v.k !== "list") return fail("a list");
        for (const item of v.items) {
          // Lists of modules may nest one level (expert groups); the router rule validates it.
          if (item.k === "list" && type.element.k === "role") {
            for (const inner of item.items)
              this.checkParamValue(inner, type.element, span, frame, what);
          } else this.checkParamValue(item, type.element, span, frame, what);
        }
        return;
      case "tensor":
        if (v.k !== "tensor") fail(formatTensorType(type.t));
        return;
    }
  }

  primitiveContext(frame: Frame, span: Span, inst: Instance, inner?: Frame): PrimitiveContext {
    return {
      mode: this.mode,
      file: frame.file,
      span,
      inst,
      unifier: this.unifier,
      report: (code, s, message, extra) => this.report(code, frame.file, s, message, extra ?? {}),
      registerParam: (name, t, init) => {
        const f =
          inner ??
          this.newFrame(frame.module, frame.file, inst.path ?? "", frame.frozen || inst.frozen);
        f.prefix = inst.path ?? "";
        if (frame.task !== undefined) f.task = frame.task;
        f.frozen = frame.frozen || inst.frozen;
        inst.weights.set(name, t);
        if (this.mode === "elaborate") this.registerParam(f, name, t, span, init);
      },
      registerParamAt: (path, t, init, taskRows) => {
        const f = this.newFrame(frame.module, frame.file, path, frame.frozen || inst.frozen);
        if (frame.task !== undefined) f.task = frame.task;
        if (this.mode === "elaborate") this.registerParam(f, "weight", t, span, init, taskRows);
      },
      taskSet: (what) => this.taskSetOf(frame, span, what),
      taskMembers: (set) => this.taskMembers(frame, set),
      recordMoe: (rec) => {
        if (this.mode === "elaborate") this.moes.push(rec);
      },
      freshen: (i) => this.freshen(i),
      expectTensor: (v, t, s, what) => this.expectTensor(v, t, s, frame, what),
    };
  }

  // ---------------------------------------------------------------- application

  /** Renames an instance's free dims to fresh variables, for one application. */
  freshen(inst: Instance): { inputs: TensorType[]; outputs: TensorType[] } {
    const map = new Map<string, string>();
    for (const a of inst.freeAtoms) map.set(a, this.unifier.fresh(a));
    const rename = (t: TensorType): TensorType => {
      const dims = t.dims.map((d) => substituteAtoms(d, map));
      const out: TensorType = { ...t, dims };
      if (t.lead !== undefined) out.lead = map.get(t.lead) ?? t.lead;
      return out;
    };
    return {
      inputs: inst.inputs.map((p) => rename(p.type)),
      outputs: inst.outputs.map((p) => rename(p.type)),
    };
  }

  private apply(inst: Instance, args: readonly Arg[], span: Span, frame: Frame): Value {
    const values: BuiltinArg[] = [];
    for (const a of args) {
      if (a.name)
        this.report(
          "E0306",
          frame.file,
          a.name.span,
          `inputs are passed by position, not by name (\`${a.name.name}:\`)`,
        );
      values.push({ value: this.evalExpr(a.value, frame), span: a.value.span });
    }
    if (inst.role !== "module") {
      this.report(
        "E0309",
        frame.file,
        span,
        `a ${inst.role} (${inst.component}) is not applied to tensors`,
        {
          hint:
            inst.role === "router"
              ? "pass it to MoE(router: ..., experts: [...])"
              : inst.role === "adapter"
                ? "attach it with `base with ...`"
                : undefined,
        },
      );
      return UNKNOWN;
    }
    const rule = inst.form === "primitive" ? this.library.rules.get(inst.component) : undefined;
    const typed = rule?.apply
      ? rule.apply(this.primitiveContext(frame, span, inst), values)
      : this.applyGeneric(inst, values, span, frame);
    // With hooks (lowering), an application whose types check is computed by them.
    if (this.hooks && typed.k !== "unknown") return this.hooks.apply(inst, values, span, frame);
    return typed;
  }

  /**
   * Evaluates an instance's own body with its inputs bound to `values` and returns its outputs
   * (concrete modes: hooks that inline applications call it).
   */
  evaluateBody(inst: Instance, values: BuiltinArg[], span: Span, frame: Frame): Value {
    if (this.depth >= MAX_DEPTH) {
      this.report("E0319", frame.file, span, `components nest deeper than ${MAX_DEPTH} levels`);
      return UNKNOWN;
    }
    const callee = this.newFrame(
      this.scopeOf(inst.declFile),
      inst.declFile,
      inst.path ?? "",
      inst.frozen,
    );
    if (inst.task !== undefined) callee.task = inst.task;
    for (const [name, v] of inst.args) {
      callee.scope.vars.set(name, { value: v, span, role: "param", assigned: true, used: true });
    }
    callee.pendingInputs = [...values];
    this.depth++;
    this.sites.push({ file: frame.file, span, component: inst.component });
    try {
      this.evalBody(inst.decl.body, callee);
    } finally {
      this.depth--;
      this.sites.pop();
    }
    return this.collectOutputs(callee);
  }

  /** Elaborate mode: every instance constructed so far (targeted adapters search it). */
  private readonly elaborated: Instance[] = [];

  private collectOutputs(frame: Frame): Value {
    const outs = frame.outputs.map((p) => frame.top.vars.get(p.name)?.value ?? UNKNOWN);
    if (outs.some((v) => v.k !== "tensor" || v.node === undefined)) return UNKNOWN;
    const tensors = outs as Extract<Value, { k: "tensor" }>[];
    if (tensors.length === 1) return tensors[0]!;
    return {
      k: "outputs",
      fields: new Map(frame.outputs.map((p, i) => [p.name, tensors[i]!.t])),
      nodes: new Map(frame.outputs.map((p, i) => [p.name, tensors[i]!.node!])),
    };
  }

  /**
   * Lower mode entry: constructs the model and evaluates its body with its `in` ports given by
   * the hooks; returns the outputs by name.
   */
  evaluateRoot(
    decl: ComponentDecl,
    file: string,
    overrides: Map<string, Value>,
  ): Map<string, Extract<Value, { k: "tensor" }>> | undefined {
    const caller = this.newFrame(this.scopeOf(file), file, "", false);
    const inst = this.construct(decl, file, [], decl.name.span, caller, "", {}, overrides);
    if (!inst) return undefined;
    const frame = this.newFrame(this.scopeOf(file), file, "", false);
    for (const [name, v] of inst.args) {
      frame.scope.vars.set(name, {
        value: v,
        span: decl.name.span,
        role: "param",
        assigned: true,
        used: true,
      });
    }
    frame.rootInputs = true;
    this.sites.push({ file, span: decl.name.span, component: decl.name.name });
    this.evalBody(decl.body, frame);
    this.sites.pop();
    const out = new Map<string, Extract<Value, { k: "tensor" }>>();
    for (const p of frame.outputs) {
      const v = frame.top.vars.get(p.name)?.value;
      if (v?.k === "tensor" && v.node !== undefined) out.set(p.name, v);
    }
    return out;
  }

  /**
   * Lower mode entry for a training program: binds its parameters (defaults or `overrides`),
   * evaluates its body with its `in` ports given by the hooks, and returns its top-level
   * bindings in source order (`loss`, `optimizer` and the loss terms among them).
   */
  evaluateTrainRoot(
    decl: TrainDecl,
    file: string,
    overrides: Map<string, Value>,
  ): Map<string, Value> | undefined {
    const frame = this.newFrame(this.scopeOf(file), file, "", false);
    for (const p of decl.params) {
      const type = this.evalParamType(p.type, frame);
      let v: Value = UNKNOWN;
      if (overrides.has(p.name.name)) {
        v = overrides.get(p.name.name)!;
        this.checkParamValue(v, type, p.span, frame, `--set ${p.name.name}`);
      } else if (p.default) v = this.evalExpr(p.default, frame, undefined, type);
      frame.scope.vars.set(p.name.name, {
        value: v,
        span: p.name.span,
        role: "param",
        assigned: true,
        used: true,
      });
    }
    frame.rootInputs = true;
    this.sites.push({ file, span: decl.name.span, component: decl.name.name });
    this.evalBody(decl.body, frame);
    this.sites.pop();
    const out = new Map<string, Value>();
    for (const [name, v] of frame.top.vars) if (v.role !== "param") out.set(name, v.value);
    return out;
  }

  /** Applies an instance by unifying its ports with the arguments. */
  applyGeneric(inst: Instance, values: BuiltinArg[], span: Span, frame: Frame): Value {
    const { inputs, outputs } = this.freshen(inst);
    const expected = inputs.length + (inst.perTask !== undefined ? 1 : 0);
    if (values.length !== expected) {
      const names = inst.inputs.map((p) => p.name);
      if (inst.perTask !== undefined) names.push(`task ids (${inst.perTask})`);
      this.report(
        "E0305",
        frame.file,
        span,
        `${inst.component} takes ${expected} input${expected === 1 ? "" : "s"} (${names.join(", ")}), found ${values.length}`,
        {
          hint:
            inst.perTask !== undefined && values.length === expected - 1
              ? "a `per task` instance takes the task ids as its last input"
              : undefined,
        },
      );
      return UNKNOWN;
    }
    let ok = true;
    inputs.forEach((pattern, i) => {
      const a = values[i]!;
      if (
        !this.expectTensor(
          a.value,
          pattern,
          a.span,
          frame,
          `input \`${inst.inputs[i]!.name}\` of ${inst.component}`,
        )
      )
        ok = false;
    });
    if (inst.perTask !== undefined) {
      const a = values[values.length - 1]!;
      if (
        a.value.k === "tensor" &&
        (a.value.t.dtype !== "task" || a.value.t.taskSet !== inst.perTask)
      ) {
        this.report(
          "E0404",
          frame.file,
          a.span,
          `expected task ids of ${inst.perTask}, found ${formatTensorType(a.value.t)}`,
          {
            hint: "the task ids come last when applying a `per task` instance",
          },
        );
        ok = false;
      } else if (a.value.k !== "tensor" && a.value.k !== "unknown") {
        this.report(
          "E0301",
          frame.file,
          a.span,
          `expected task ids of ${inst.perTask}, found ${describeValue(a.value)}`,
        );
        ok = false;
      }
    }
    if (!ok) return UNKNOWN;
    if (outputs.length === 0) {
      this.report("E0309", frame.file, span, `${inst.component} has no outputs`);
      return UNKNOWN;
    }
    if (outputs.length === 1) return { k: "tensor", t: this.unifier.resolveTensor(outputs[0]!) };
    return {
      k: "outputs",
      fields: new Map(
        inst.outputs.map((p, i) => [p.name, this.unifier.resolveTensor(outputs[i]!)]),
      ),
    };
  }

  /** Checks that `v` is a tensor fitting `expected`; reports and returns false otherwise. */
  expectTensor(v: Value, expected: TensorType, span: Span, frame: Frame, what: string): boolean {
    if (v.k === "unknown") return false;
    if (v.k !== "tensor") {
      this.report(
        "E0301",
        frame.file,
        span,
        `${what}: expected a tensor ${formatTensorType(this.unifier.resolveTensor(expected))}, found ${describeValue(v)}`,
      );
      return false;
    }
    // Unification never changes a dtype, so the unresolved type answers the dtype checks.
    const exp = expected;
    if (v.t.dtype === "task" && exp.dtype === "task" && v.t.taskSet !== exp.taskSet) {
      this.report(
        "E0404",
        frame.file,
        span,
        `${what}: expected task ids of ${exp.taskSet}, found task ids of ${v.t.taskSet}`,
      );
      return false;
    }
    if (v.t.dtype !== exp.dtype || v.t.taskSet !== exp.taskSet) {
      this.report(
        "E0304",
        frame.file,
        span,
        `${what}: expected ${formatTensorType(this.unifier.resolveTensor(exp))}, found ${formatTensorType(v.t)}`,
        {
          hint:
            exp.dtype === "task"
              ? `pass the task ids (${exp.taskSet}[B])`
              : v.t.dtype === "task"
                ? "task ids are not numbers; use task_ids(task) for an i32 tensor"
                : undefined,
        },
      );
      return false;
    }
    const conflict = unifyTensor(this.unifier, expected, v.t);
    if (conflict) {
      const found = formatTensorType(this.unifier.resolveTensor(v.t));
      const want = formatTensorType(this.unifier.resolveTensor(expected));
      if (conflict.kind === "rank") {
        this.report("E0303", frame.file, span, `${what}: expected ${want}, found ${found}`, {
          hint: "the number of dimensions differs",
        });
      } else {
        this.report("E0302", frame.file, span, `${what}: expected ${want}, found ${found}`, {
          hint: `dimension ${conflict.position}: expected ${formatDim(conflict.expected!)}, found ${formatDim(conflict.found!)}`,
        });
      }
      return false;
    }
    return true;
  }
}

// ---------------------------------------------------------------- helpers

/** The `param` or binding that declares `name` in a component body (first one, any depth). */
function findBodyDeclaration(
  body: readonly Stmt[],
  name: string,
): { span: Span; kind: "weight" | "binding" } | undefined {
  for (const s of body) {
    if (s.kind === "WeightDecl" && s.name.name === name)
      return { span: s.name.span, kind: "weight" };
    if (s.kind === "Binding" && s.target.name === name)
      return { span: s.target.span, kind: "binding" };
    const nested =
      s.kind === "RepeatStmt"
        ? findBodyDeclaration(s.body, name)
        : s.kind === "IfStmt"
          ? (findBodyDeclaration(s.then, name) ?? findBodyDeclaration(s.else ?? [], name))
          : undefined;
    if (nested) return nested;
  }
  return undefined;
}

/**
 * A cache key for a component's signature under these arguments, or undefined when an
 * argument has no stable identity (instances, lists, records: evaluated every time).
 */
function signatureKey(
  file: string,
  component: string,
  args: ReadonlyMap<string, Value>,
  task: string | undefined,
): string | undefined {
  const parts = [file, component, task ?? ""];
  for (const [name, v] of args) {
    let text: string;
    switch (v.k) {
      case "int":
        text = `${v.isDim ? "D" : "I"}${[...v.v].map(([k, c]) => `${c}${k}`).join("+")}`;
        break;
      case "float":
      case "bool":
      case "string":
        text = `${v.k}:${v.v === undefined ? "?" : String(v.v)}`;
        break;
      case "enum":
        text = `enum:${v.enumName}.${v.member ?? "?"}`;
        break;
      case "taskset":
        text = `tasks:${v.set}`;
        break;
      case "unknown":
        text = "?";
        break;
      default:
        return undefined;
    }
    parts.push(`${name}=${text}`);
  }
  return parts.join("|");
}

function snapshotTensors(scope: Scope): Map<string, TensorType> {
  const out = new Map<string, TensorType>();
  for (let s: Scope | undefined = scope; s; s = s.parent) {
    for (const [name, v] of s.vars)
      if (v.value.k === "tensor" && !out.has(name)) out.set(name, v.value.t);
  }
  return out;
}

function substituteAtoms(d: Dim, map: Map<string, string>): Dim {
  let changed = false;
  const out = new Map<string, number>();
  for (const [k, c] of d) {
    const key =
      k === ""
        ? k
        : k
            .split("*")
            .map((a) => {
              const r = map.get(a);
              if (r) changed = true;
              return r ?? a;
            })
            .sort()
            .join("*");
    out.set(key, (out.get(key) ?? 0) + c);
  }
  return changed ? out : d;
}

function scalarNumber(v: Value): number | undefined | null {
  if (v.k === "int") return dimValue(v.v);
  if (v.k === "float") return v.v;
  return null;
}

/** `LayerNorm` → `layer_norm`, `TaskMoE` → `task_moe`, `RMSNorm` → `rms_norm`, `FFN` → `ffn`. */
export function snakeCase(name: string): string {
  return name
    .replace(/([a-z0-9])([A-Z][a-z])/g, "$1_$2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1_$2")
    .toLowerCase();
}

export function signatureText(inst: Instance): string {
  const ports = (ps: Port[]) => ps.map((p) => formatTensorType(p.type)).join(", ");
  return `(${ports(inst.inputs)}) -> (${ports(inst.outputs)})`;
}

function typeText(t: TypeRef): string {
  if (t.kind === "ListType") return `[${typeText(t.element)}]`;
  return t.name.name + (t.dims ? "[...]" : "");
}

export type { Frame };

/** The strings of a `[String]` argument. */
function stringList(v: Value | undefined): string[] {
  if (v?.k !== "list") return [];
  return v.items.flatMap((i) => (i.k === "string" && i.v !== undefined ? [i.v] : []));
}

/**
 * Whether the layer at `path` inside the instance at `root` is targeted by `pattern`: the
 * pattern's dotted names match the end of the layer's path below the root, `*` any one name.
 */
export function matchesTarget(
  path: string | undefined,
  root: string | undefined,
  pattern: string,
): boolean {
  if (path === undefined || root === undefined) return false;
  if (root !== "" && !path.startsWith(`${root}.`)) return false;
  const names = (root === "" ? path : path.slice(root.length + 1)).split(".");
  const want = pattern.split(".");
  if (want.length > names.length) return false;
  const tail = names.slice(names.length - want.length);
  return want.every((w, i) => w === "*" || w === tail[i]);
}
