/**
 * `moec export --format torch`: a checked program → one self-contained Python module. Every
 * component the model reaches (stdlib blocks included) becomes an `nn.Module` class whose
 * constructor takes the component's parameters (defaults as written, `--set` applied to the
 * model's) and whose `forward` takes its input ports by name. The body is translated statement
 * by statement from the AST, so `state_dict()` names are the bindings' names, as the
 * elaborator names parameters (`blocks.3.moe.experts.5.up.weight`). Primitives (MoE, routers,
 * `per task`) are hand-written classes in the prelude (torch-prelude.ts).
 *
 * Pure: no device, no file system. A construct it cannot translate throws TorchExportError
 * naming it and where it is written, never a module that computes something else.
 */
import { bindArgs as matchArgs } from "../check/bind-args.js";
import type {
  Arg,
  ComponentDecl,
  Expr,
  Ident,
  ParamDecl,
  Span,
  Stmt,
  TypeRef,
} from "../../grammar/ast.js";
import type { ResolvedProgram } from "../check/resolve-names.js";
import { LineMap } from "../diagnostics.js";
import { dimValue } from "../check/dims.js";
import { snakeCase } from "../check/evaluator.js";
import type { Value } from "../check/values.js";
import { TORCH_PRELUDE } from "./torch-prelude.js";

/** A construct that has no PyTorch translation (yet): its message names it and where it is. */
export class TorchExportError extends Error {}

export interface TorchExportInput {
  program: ResolvedProgram;
  model: { decl: ComponentDecl; file: string };
  /** `--set` values for the model's parameters: they become the class's defaults. */
  overrides: ReadonlyMap<string, Value>;
  /** The header's lines (source file, model, moec version). */
  header: string[];
  /** `--merge-adapters`: LoRAs on Linear layers run as one matmul by the merged weight. */
  mergeAdapters?: boolean;
  /** `--pin-groups`, resolved: the fixed group weights of Grouped MoE layers, by layer path. */
  pins?: ReadonlyMap<string, readonly number[]>;
}

type Kind =
  | "tensor"
  | "int"
  | "float"
  | "bool"
  | "string"
  | "enum"
  | "instance"
  | "list"
  | "record"
  | "taskset"
  | "outputs"
  | "tensors"
  | "unknown";

/** What a moe name means at one point of a component body, and its Python spelling. */
interface Binding {
  py: string;
  kind: Kind;
  /** For instances: the component whose instance it is (its outputs decide forward's result). */
  decl?: ComponentDecl;
  perTask?: boolean;
  /** For instances: the expression that made it (its port sizes are read from it). */
  made?: Expr;
}

/** The primitives with a prelude class, by name. */
const PRELUDE_ROUTERS = new Set([
  "TopK",
  "TaskRoute",
  "TaskMap",
  "Soft",
  "ExpertChoice",
  "Hash",
  "Grouped",
  "TokenMix",
]);
const PYTHON_KEYWORDS = new Set(
  "False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield".split(
    " ",
  ),
);
/**
 * nn.Module's own attributes (torch 1.13 to 2.x): a submodule or parameter of that name would
 * shadow one, so it takes another attribute name and keeps its name in state_dict().
 */
const MODULE_ATTRIBUTES = new Set(
  "T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half ipu load_state_dict modules mtia named_buffers named_children named_modules named_parameters parameters register_backward_hook register_buffer register_forward_hook register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory state_dict to to_empty train training type xpu zero_grad".split(
    " ",
  ),
);

/**
 * The attribute a member named `name` is kept under: the name itself, or, for a name Python
 * or nn.Module takes, the name with underscores appended past every member of the component
 * (`eval` → `eval_`); `keep_names` (the prelude) keeps the moec name in state_dict().
 */
function memberAttr(name: string, members: ReadonlySet<string>): string {
  if (!MODULE_ATTRIBUTES.has(name) && !PYTHON_KEYWORDS.has(name) && !name.startsWith("_"))
    return name;
  let py = `${name}_`;
  while (members.has(py)) py += "_";
  return py;
}

/** Names the prelude and the imports take: a moe name equal to one is renamed. */
const RESERVED = new Set([
  ..."False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield".split(
    " ",
  ),
  ..."self torch nn F math json struct super len range min max abs sum list dict tuple int float bool str print isinstance type object".split(
    " ",
  ),
  ..."activation variance take causal_mask positions load_file save_file keep_names submodule adopt modules PerTask Router MoE WithAdapter LoRA TargetedLoRA lora_targets cross_entropy distill router_losses adamw train_step".split(
    " ",
  ),
]);

const pyName = (name: string): string => (RESERVED.has(name) ? `${name}_` : name);

/** The prelude's own top-level names (classes, functions): a class never takes one. */
const PRELUDE_NAMES = new Set(
  [...TORCH_PRELUDE.matchAll(/^(?:class|def) (\w+)|^(\w+) = /gm)].map((m) => m[1] ?? m[2]!),
);

/** A tree of output lines: blocks (`if`, `for`) that end up empty are dropped when rendered. */
type Node = string | { head: string; body: Node[]; else?: Node[] };

function hasLines(nodes: Node[]): boolean {
  return nodes.some((n) => typeof n === "string" || hasLines(n.body) || hasLines(n.else ?? []));
}

function render(nodes: Node[], indent: string, out: string[]): void {
  for (const n of nodes) {
    if (typeof n === "string") {
      for (const line of n.split("\n")) out.push(indent + line);
      continue;
    }
    const thenHas = hasLines(n.body);
    const elseHas = hasLines(n.else ?? []);
    if (!thenHas && !elseHas) continue;
    if (!thenHas) {
      // `if c: (nothing) else: body` reads better as `if not c: body`.
      out.push(`${indent}${n.head.replace(/^if (.*):$/, "if not ($1):")}`);
      render(n.else!, indent + "    ", out);
      continue;
    }
    out.push(indent + n.head);
    render(n.body, indent + "    ", out);
    if (elseHas) {
      out.push(`${indent}else:`);
      render(n.else!, indent + "    ", out);
    }
  }
}

function pyFloat(v: number): string {
  if (!Number.isFinite(v)) return v > 0 ? 'float("inf")' : v < 0 ? 'float("-inf")' : 'float("nan")';
  const s = String(v);
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/** A `--set` value as a Python literal. */
function valueToPython(v: Value): string | undefined {
  switch (v.k) {
    case "int": {
      const n = dimValue(v.v);
      return n === undefined ? undefined : String(n);
    }
    case "float":
      return v.v === undefined ? undefined : pyFloat(v.v);
    case "bool":
      return v.v === undefined ? undefined : v.v ? "True" : "False";
    case "string":
      return v.v === undefined ? undefined : JSON.stringify(v.v);
    case "enum":
      return v.member === undefined ? undefined : JSON.stringify(v.member);
    default:
      return undefined;
  }
}

function kindOfType(
  t: TypeRef,
  enumOrTasks: (name: string) => "enum" | "taskset" | undefined,
): Kind {
  if (t.kind === "ListType") return "list";
  if (t.dims !== undefined) return "tensor";
  switch (t.name.name) {
    case "Dim":
    case "Int":
      return "int";
    case "Float":
      return "float";
    case "Bool":
      return "bool";
    case "String":
      return "string";
    case "Module":
    case "Router":
    case "Adapter":
    case "Optimizer":
      return "instance";
    case "TaskMap":
      return "record";
    default:
      return enumOrTasks(t.name.name) === "enum" ? "enum" : "unknown";
  }
}

/**
 * Positional and named arguments matched to a declaration's parameters, as the checker matched
 * them (check/bind-args.ts; the program checked clean, so there is nothing to report).
 */
function bindArgs(params: readonly { name: string }[], args: readonly Arg[]): Map<string, Expr> {
  const shapes = params.map((p) => ({ name: p.name, required: false }));
  const bound = matchArgs("", shapes, args, { start: 0, end: 0 }, "", []);
  return new Map([...bound].map(([name, arg]) => [name, arg.value]));
}

/** The torch dtype of each dtype a weight may have (check/values.ts's DTYPES). */
const TORCH_DTYPES: Record<string, string> = {
  f32: "torch.float32",
  f16: "torch.float16",
  bf16: "torch.bfloat16",
  i32: "torch.int32",
  i64: "torch.int64",
  bool: "torch.bool",
};

const ELEMENTWISE: Record<string, [tensor: string, scalar: string]> = {
  relu: ["F.relu", "max(0.0, %)"],
  gelu: ["F.gelu", ""],
  silu: ["F.silu", ""],
  tanh: ["torch.tanh", "math.tanh"],
  sigmoid: ["torch.sigmoid", "1.0 / (1.0 + math.exp(-%))"],
  exp: ["torch.exp", "math.exp"],
  log: ["torch.log", "math.log"],
  sqrt: ["torch.sqrt", "math.sqrt"],
  rsqrt: ["torch.rsqrt", "1.0 / math.sqrt(%)"],
  abs: ["torch.abs", "abs"],
};

export class TorchEmitter {
  private readonly classes = new Map<ComponentDecl, string>();
  private readonly classText: string[] = [];
  private readonly taskSets = new Map<string, string[]>();
  private readonly lineMaps = new Map<string, LineMap>();

  /** The options of the export that change how instances are made (see TorchExportInput). */
  mergeAdapters = false;
  private model: ComponentDecl | undefined;
  private pins: ReadonlyMap<string, readonly number[]> = new Map();

  constructor(private readonly program: ResolvedProgram) {}

  /** The whole module's text. */
  emit(input: TorchExportInput): string {
    const { model, overrides } = input;
    this.mergeAdapters = input.mergeAdapters === true;
    this.model = model.decl;
    this.pins = input.pins ?? new Map();
    const name = this.classFor(model.decl, model.file, overrides);
    // The file's train programs that train this model, or no model of the file (they train
    // its blocks, as gpt2.moe's LM): a class each (loss + optimizer), or a comment saying why
    // one is not exported.
    const skipped: string[] = [];
    const items = this.program.scopes.get(model.file)?.module.ast.items ?? [];
    const models = items.flatMap((i) =>
      i.kind === "ComponentDecl" && i.form === "model" ? [i.name.name] : [],
    );
    for (const item of items) {
      if (item.kind !== "TrainDecl") continue;
      const trained = models.filter((m) => constructs(item.body, m));
      if (trained.length > 0 && !trained.includes(model.decl.name.name)) continue;
      const before = this.classText.length;
      const known = new Set(this.classes.keys());
      try {
        const pseudo: ComponentDecl = {
          kind: "ComponentDecl",
          form: "block",
          doc: item.doc,
          name: item.name,
          params: item.params,
          body: item.body,
          span: item.span,
        };
        let cls = pyName(item.name.name);
        while ([...this.classes.values()].includes(cls) || PRELUDE_NAMES.has(cls)) cls += "_";
        this.classes.set(pseudo, cls);
        this.classText.push(
          new ComponentEmitter(this, pseudo, model.file, cls, overrides, true).emit(),
        );
      } catch (e) {
        if (!(e instanceof TorchExportError)) throw e;
        this.classText.length = before;
        for (const k of [...this.classes.keys()]) if (!known.has(k)) this.classes.delete(k);
        skipped.push(
          `# train ${item.name.name}: not exported (${e.message.replace(/^.*?:(\d+):\d+: /, "line $1: ")})`,
        );
      }
    }
    const lines = [
      `"""${input.header.join("\n")}`,
      "",
      `Load the weights moec reads and writes:`,
      `    model = ${name}()`,
      `    model.load_state_dict(load_file("model.safetensors"))`,
      `"""`,
      TORCH_PRELUDE,
    ];
    if (this.taskSets.size) {
      lines.push(
        "# ----------------------------------------------------------------------------- tasks",
      );
      lines.push("");
      for (const [set, members] of this.taskSets)
        lines.push(
          `${set} = (${members.map((m) => JSON.stringify(m)).join(", ")}${members.length === 1 ? "," : ""})`,
        );
      lines.push("");
    }
    lines.push(
      "# ----------------------------------------------------------------------------- model",
    );
    lines.push("");
    for (const c of this.classText) lines.push("", c);
    if (skipped.length) lines.push("", ...skipped);
    return lines.join("\n").replace(/\n{3,}(?=class )/g, "\n\n\n") + "\n";
  }

  /** Lines the model's constructor ends with: `--pin-groups` fixing its layers' group weights. */
  modelInit(decl: ComponentDecl): string[] {
    if (decl !== this.model || this.pins.size === 0) return [];
    return [
      "# moec export --pin-groups: these layers' group weights are fixed",
      ...[...this.pins].map(
        ([layer, w]) =>
          `submodule(self, ${JSON.stringify(layer)}).router.pin = [${w.map(pyFloat).join(", ")}]`,
      ),
    ];
  }

  fail(file: string, span: Span, what: string): never {
    let map = this.lineMaps.get(file);
    const text = this.program.scopes.get(file)?.module.text;
    if (!map && text !== undefined) this.lineMaps.set(file, (map = new LineMap(text)));
    const at = map ? map.lineColumn(span.start) : { line: 0, column: 0 };
    throw new TorchExportError(
      `${file}:${at.line}:${at.column}: ${what} cannot be exported to PyTorch yet`,
    );
  }

  /** The global a name refers to in `file`. */
  global(file: string, name: string) {
    return this.program.scopes.get(file)?.names.get(name);
  }

  /** Whether `name` in `file` names an enum or a task set. */
  typeKind(file: string, name: string): "enum" | "taskset" | undefined {
    const g = this.global(file, name);
    return g?.kind === "enum" ? "enum" : g?.kind === "tasks" ? "taskset" : undefined;
  }

  /** An enum of `file`'s scope with `member` (a bare enum value like `gelu`). */
  isEnumMember(file: string, member: string): boolean {
    for (const g of this.program.scopes.get(file)?.names.values() ?? [])
      if (g.kind === "enum" && g.decl.members.some((m) => m.name === member)) return true;
    // Enums of the standard library's modules, reachable through the types of parameters.
    for (const s of this.program.scopes.values())
      for (const g of s.names.values())
        if (g.kind === "enum" && g.decl.members.some((m) => m.name === member)) return true;
    return false;
  }

  useTaskSet(file: string, name: string): string {
    const g = this.global(file, name);
    if (g?.kind !== "tasks") throw new Error(`internal: ${name} is not a task set`);
    this.taskSets.set(
      g.decl.name.name,
      g.decl.members.map((m) => m.name),
    );
    return g.decl.name.name;
  }

  /** The Python class of a block or model (emitted once). */
  classFor(decl: ComponentDecl, file: string, overrides?: ReadonlyMap<string, Value>): string {
    const known = this.classes.get(decl);
    if (known) return known;
    if (decl.form === "primitive") this.fail(file, decl.span, `the primitive ${decl.name.name}`);
    let name = pyName(decl.name.name);
    while ([...this.classes.values()].includes(name) || PRELUDE_NAMES.has(name)) name += "_";
    this.classes.set(decl, name);
    this.classText.push(new ComponentEmitter(this, decl, file, name, overrides).emit());
    return name;
  }
}

/** Emits one component's class: constructor, then forward. */
class ComponentEmitter {
  private readonly init: Node[] = [];
  private readonly fwd: Node[] = [];
  private readonly members = new Set<string>();
  /** Names bound to instances more than once (see the Binding case), and bindings so far. */
  private readonly rebound: Set<string>;
  private readonly reboundCount = new Map<string, number>();
  /** Members given Python-safe attribute names, by owner: attribute → moec name. */
  private readonly renames = new Map<string, Map<string, string>>();
  private readonly usedNames = new Set<string>();
  /** Python names of compile-time values the constructor computes (kept only where used). */
  private readonly initScalars = new Set<string>();
  /** Weights read with `take` (lookup tables: no weight decay in training). */
  private readonly tables = new Set<string>();
  /** Where the statement being translated puts instances (for ones made inside expressions). */
  private cur: { init: Node[]; owner: string } = { init: [], owner: "self" };
  /** Instances constructed and applied in one expression, counted per owner and type. */
  private readonly anonymous = new Map<string, number>();
  private taskSet: string | undefined;
  private loopDepth = 0;

  constructor(
    private readonly e: TorchEmitter,
    private readonly decl: ComponentDecl,
    private readonly file: string,
    private readonly className: string,
    private readonly overrides: ReadonlyMap<string, Value> | undefined,
    /** A train program: forward returns the loss; the optimizer is its configuration. */
    private readonly train = false,
  ) {
    collectMembers(decl.body, this.members);
    collectNames(decl.body, this.usedNames);
    this.rebound = boundTwice(decl.body);
  }

  private fail(span: Span, what: string): never {
    return this.e.fail(this.file, span, what);
  }

  /** The attribute a constructor parameter is kept under (not one a weight or child takes). */
  private configAttr(p: ParamDecl, kind: Kind): string {
    const n = pyName(p.name.name);
    if (!this.members.has(p.name.name) && !MODULE_ATTRIBUTES.has(n)) return n;
    return kind === "bool" ? `use_${n}` : `${n}_arg`;
  }

  emit(): string {
    const d = this.decl;
    const env = new Map<string, Binding>();
    const sig: string[] = [];
    const setDefaults: string[] = [];
    const kinds = (n: string) => this.e.typeKind(this.file, n);
    const cfg: string[] = [];
    const fwdCfg = new Map<string, { py: string; attr: string }>();
    for (const p of d.params) {
      const kind = kindOfType(p.type, kinds);
      const py = pyName(p.name.name);
      const over = this.overrides?.get(p.name.name);
      const overPy = over ? valueToPython(over) : undefined;
      if (overPy !== undefined) sig.push(`${py}=${overPy}`);
      else if (p.default === undefined) sig.push(py);
      else {
        // Defaults may use earlier parameters (`renormalize = k > 1`): computed in the body.
        const lit = this.literal(p.default, p.type);
        if (lit !== undefined) sig.push(`${py}=${lit}`);
        else {
          sig.push(`${py}=None`);
          const value = this.expr(p.default, env, p.type);
          setDefaults.push(`if ${py} is None:`, `    ${py} = ${value.py}`);
        }
      }
      env.set(p.name.name, { py, kind });
      const attr = this.configAttr(p, kind);
      cfg.push(`self.${attr} = ${py}`);
      fwdCfg.set(p.name.name, { py, attr });
    }
    // Ports: the forward's arguments, its free dims, its results.
    const inputs = d.body.filter(
      (s): s is Extract<Stmt, { kind: "PortDecl" }> =>
        s.kind === "PortDecl" && s.direction === "in",
    );
    const outputs = d.body.filter(
      (s): s is Extract<Stmt, { kind: "PortDecl" }> =>
        s.kind === "PortDecl" && s.direction === "out",
    );
    const fwdEnv = new Map(env);
    const dimLines: string[] = [];
    for (const port of inputs) {
      const py = pyName(port.name.name);
      fwdEnv.set(port.name.name, { py, kind: "tensor" });
      const t = port.type;
      if (t.kind !== "NamedType") continue;
      if (this.e.typeKind(this.file, t.name.name) === "taskset" && this.taskSet === undefined)
        this.taskSet = this.e.useTaskSet(this.file, t.name.name);
      const dims = t.dims ?? [];
      const ellipsis = dims.findIndex((x) => x.kind === "Ellipsis");
      dims.forEach((dim, i) => {
        if (dim.kind !== "NameExpr") return;
        const n = dim.name.name;
        if (fwdEnv.has(n) || this.e.global(this.file, n)) return;
        const index = ellipsis >= 0 && i > ellipsis ? i - dims.length : i;
        fwdEnv.set(n, { py: pyName(n), kind: "int" });
        if (this.usedNames.has(n)) dimLines.push(`${pyName(n)} = ${py}.shape[${index}]`);
        void index;
      });
    }
    // The constructor's parameters the forward reads, bound once at its top.
    this.body(d.body, env, fwdEnv);
    const ret = this.train
      ? "loss + router_losses(self)"
      : outputs.length === 1
        ? (fwdEnv.get(outputs[0]!.name.name)?.py ?? pyName(outputs[0]!.name.name))
        : `{${outputs.map((o) => `${JSON.stringify(o.name.name)}: ${fwdEnv.get(o.name.name)?.py ?? pyName(o.name.name)}`).join(", ")}}`;
    if (this.train && !fwdEnv.has("loss")) this.fail(d.name.span, "a train program without `loss`");
    for (const o of outputs)
      if (!fwdEnv.has(o.name.name))
        this.fail(o.span, `output \`${o.name.name}\` that is never bound`);

    const out: string[] = [];
    out.push(`class ${this.className}(nn.Module):`);
    const doc = d.doc ?? "";
    if (doc) out.push(`    """${doc.replace(/"""/g, '\\"\\"\\"').replace(/\n/g, "\n    ")}"""`, "");
    if (this.tables.size)
      out.push(
        `    tables = (${[...this.tables].map((t) => JSON.stringify(t)).join(", ")},)  # read with take: no weight decay`,
        "",
      );
    out.push(`    def __init__(self${sig.length ? ", " : ""}${sig.join(", ")}):`);
    out.push("        super().__init__()");
    for (const l of setDefaults) out.push(`        ${l}`);
    for (const l of cfg) out.push(`        ${l}`);
    const uses = (text: string, name: string) =>
      new RegExp(`(?<![\\w.])${name}(?![\\w])`).test(text);
    const initLines: string[] = [];
    render(this.init, "        ", initLines);
    // A size computed for forward that the constructor does not use is left out of it.
    out.push(
      ...initLines.filter((l, i) => {
        const m = /^\s*(\w+) = /.exec(l);
        if (!m || !this.initScalars.has(m[1]!)) return true;
        return initLines.some((o, j) => j > i && uses(o.replace(/^\s*\w+ = /, ""), m[1]!));
      }),
    );
    for (const l of this.keepNames("self")) out.push(`        ${l}`);
    if (!this.train) for (const l of this.e.modelInit(d)) out.push(`        ${l}`);
    out.push("");
    out.push(`    def forward(self${inputs.map((p) => `, ${pyName(p.name.name)}`).join("")}):`);
    const fwdLines: string[] = [];
    render(this.fwd, "        ", fwdLines);
    const fwdText = [...fwdLines, ret].join("\n");
    const usedDims = dimLines.filter((l) => uses(fwdText, l.split(" ")[0]!));
    const fwdParams = [...fwdCfg.entries()].filter(([, v]) =>
      uses([fwdText, ...usedDims].join("\n"), v.py),
    );
    if (fwdParams.length)
      out.push(
        `        ${fwdParams.map(([, v]) => v.py).join(", ")} = ${fwdParams.map(([, v]) => `self.${v.attr}`).join(", ")}`,
      );
    for (const l of usedDims) out.push(`        ${l}`);
    out.push(...fwdLines);
    out.push(`        return ${ret}`);
    if (this.train)
      out.push(
        "",
        "    def configure_optimizer(self):",
        '        """AdamW as the program configures it: weight decay on matrices that are not lookup',
        "        tables, its parameter groups as torch param groups (train_step keeps the rows a group",
        '        does not train); clip the gradient norm to self.optimizer_config["max_norm"] before',
        '        each step."""',
        "        return adamw(self, **self.optimizer_config)",
      );
    return out.join("\n") + "\n";
  }

  /** A default value that is a literal (no reference to other parameters), as Python. */
  private literal(e: Expr, type: TypeRef): string | undefined {
    switch (e.kind) {
      case "NumberLit":
        return e.isInt && !(type.kind === "NamedType" && type.name.name === "Float")
          ? String(e.value)
          : pyFloat(e.value);
      case "BoolLit":
        return e.value ? "True" : "False";
      case "StringLit":
        return JSON.stringify(e.value);
      case "NameExpr":
        if (type.kind === "NamedType" && this.e.typeKind(this.file, type.name.name) === "enum")
          return JSON.stringify(e.name.name);
        return undefined;
      case "UnaryExpr":
        if (e.op === "-" && e.operand.kind === "NumberLit")
          return `-${this.literal(e.operand, type)}`;
        return undefined;
      case "ListExpr": {
        const items = e.elements.map((x) =>
          this.literal(x, type.kind === "ListType" ? type.element : type),
        );
        return items.every((x) => x !== undefined) ? `[${items.join(", ")}]` : undefined;
      }
      default:
        return undefined;
    }
  }

  /**
   * Statements into the constructor (`init`) and forward (`fwd`) at once: instances and
   * weights go to the constructor, tensor computations to forward, compile-time values
   * (sizes) to both, `if` and `repeat` open a block in both.
   */
  private body(
    stmts: readonly Stmt[],
    initEnv: Map<string, Binding>,
    fwdEnv: Map<string, Binding>,
    init: Node[] = this.init,
    fwd: Node[] = this.fwd,
    owner = "self",
  ): void {
    for (const s of stmts) {
      this.cur = { init, owner };
      switch (s.kind) {
        case "PortDecl":
          break;
        case "WeightDecl": {
          if (s.type.kind !== "NamedType" || s.type.dims === undefined)
            this.fail(s.span, "a weight without a tensor type");
          const dims = s.type.dims.map((x) => {
            if (x.kind === "Ellipsis") this.fail(x.span, "a weight with `...` dims");
            return this.expr(x, initEnv).py;
          });
          const dtype = TORCH_DTYPES[s.type.name.name];
          if (!dtype) return this.fail(s.span, `a ${s.type.name.name} weight`);
          const shape = dims.join(", ");
          const py = `${owner}.${this.attr(s.name)}`;
          let value = this.initializer(s.init, shape, initEnv);
          if (dtype !== "torch.float32") value = `(${value}).to(${dtype})`;
          // Only floating-point tensors take gradients: an integer or bool weight is data.
          const floating = ["torch.float32", "torch.float16", "torch.bfloat16"].includes(dtype);
          init.push(`${py} = nn.Parameter(${value}${floating ? "" : ", requires_grad=False"})`);
          const b: Binding = { py, kind: "tensor" };
          initEnv.set(s.name.name, b);
          fwdEnv.set(s.name.name, b);
          break;
        }
        case "Binding": {
          const name = s.target.name;
          if (this.train && name === "optimizer") {
            init.push(`self.optimizer_config = ${this.optimizerConfig(s.value, initEnv)}`);
            break;
          }
          const shared = frozenName(s.value, initEnv);
          if (shared) {
            // `t = frozen base`: base itself is frozen (moec marks its weights so), t is base.
            init.push(`${shared.py}.requires_grad_(False)`);
            initEnv.set(name, shared);
            fwdEnv.set(name, shared);
            break;
          }
          const group = this.train ? this.paramGroup(s.value, initEnv) : undefined;
          if (group !== undefined) {
            // A parameter group bound by name: a dict the optimizer's groups list names.
            const py = pyName(name);
            init.push(`${py} = ${group}`);
            initEnv.set(name, { py, kind: "record" });
            break;
          }
          if (this.isConstruction(s.value, initEnv)) {
            const attr = `${owner}.${this.attr(s.target)}`;
            const made = this.construct(s.value, initEnv);
            // A list of instances is an nn.ModuleList, so its weights are registered.
            const value = made.kind === "list" ? `modules(${made.py})` : made.py;
            let py = attr;
            if (this.rebound.has(name)) {
              // A name bound to several instances: moec keeps all their weights under the
              // name, so one empty module there registers each one's; forward calls each
              // instance (kept unregistered, in __dict__) where its binding is in force.
              const key = `${owner}|${name}`;
              const n = this.reboundCount.get(key) ?? 0;
              this.reboundCount.set(key, n + 1);
              if (n === 0) init.push(`${attr} = nn.Module()  # every instance bound to ${name}`);
              let hidden = `${attr.slice(owner.length + 1)}_${n}`;
              while (this.members.has(hidden)) hidden += "_";
              init.push(`${owner}.__dict__[${JSON.stringify(hidden)}] = adopt(${attr}, ${value})`);
              py = `${owner}.${hidden}`;
            } else init.push(`${py} = ${value}`);
            const b: Binding = { ...made, py, made: s.value };
            initEnv.set(name, b);
            fwdEnv.set(name, b);
            break;
          }
          const v = this.expr(s.value, fwdEnv);
          const py = pyName(name);
          fwd.push(`${py} = ${v.py}`);
          const prior = fwdEnv.get(name);
          if (prior && prior.kind === "instance")
            this.fail(s.span, `rebinding instance \`${name}\``);
          fwdEnv.set(name, { py, kind: v.kind, decl: v.decl });
          if (v.kind !== "tensor" && v.kind !== "outputs" && v.kind !== "tensors") {
            // Compile-time values (sizes) are needed by the constructor too.
            const iv = this.expr(s.value, initEnv);
            init.push(`${py} = ${iv.py}`);
            this.initScalars.add(py);
            initEnv.set(name, { py, kind: iv.kind });
          }
          break;
        }
        case "IfStmt": {
          const c = this.expr(s.condition, initEnv);
          const fc = this.expr(s.condition, fwdEnv);
          const iThen: Node[] = [];
          const fThen: Node[] = [];
          const iElse: Node[] = [];
          const fElse: Node[] = [];
          // Names first bound inside a branch are local to it; rebinding updates the outer.
          const ie1 = new Map(initEnv);
          const fe1 = new Map(fwdEnv);
          this.body(s.then, ie1, fe1, iThen, fThen, owner);
          const ie2 = new Map(initEnv);
          const fe2 = new Map(fwdEnv);
          if (s.else) this.body(s.else, ie2, fe2, iElse, fElse, owner);
          for (const [k, v] of fe1) if (fwdEnv.has(k) || fe2.has(k)) fwdEnv.set(k, v);
          for (const [k, v] of ie1) if (initEnv.has(k)) initEnv.set(k, v);
          init.push({ head: `if ${c.py}:`, body: iThen, else: iElse });
          fwd.push({ head: `if ${fc.py}:`, body: fThen, else: fElse });
          break;
        }
        case "RepeatStmt": {
          const count = this.expr(s.count, initEnv).py;
          const label = s.label?.name ?? "layers";
          const hasParts = this.makesMembers(s.body, initEnv);
          const ie = new Map(initEnv);
          const fe = new Map(fwdEnv);
          const iBody: Node[] = [];
          const fBody: Node[] = [];
          if (!hasParts) {
            this.body(s.body, ie, fe, iBody, fBody, owner);
            init.push({ head: `for _ in range(${count}):`, body: iBody });
            fwd.push({ head: `for _ in range(${count}):`, body: fBody });
          } else {
            const item = this.loopVar(label);
            const list = `${owner}.${s.label ? this.attr(s.label) : label}`;
            iBody.push(`${item} = nn.Module()`);
            this.body(s.body, ie, fe, iBody, fBody, item);
            iBody.push(...this.keepNames(item));
            iBody.push(`${list}.append(${item})`);
            init.push(`${list} = nn.ModuleList()`);
            init.push({ head: `for _ in range(${count}):`, body: iBody });
            fwd.push({ head: `for ${item} in ${list}:`, body: fBody });
          }
          // Rebinding an outer name inside the body updates it.
          for (const [k, v] of fe) if (fwdEnv.has(k)) fwdEnv.set(k, v);
          for (const [k, v] of ie) if (initEnv.has(k)) initEnv.set(k, v);
          break;
        }
      }
    }
  }

  /** `AdamW(lr: ..., ...)` as the keyword arguments of configure_optimizer. */
  private optimizerConfig(e: Expr, env: Map<string, Binding>): string {
    if (e.kind !== "CallExpr" || e.callee.kind !== "NameExpr" || e.callee.name.name !== "AdamW")
      return this.fail(e.span, "an optimizer other than AdamW");
    const g = this.e.global(this.file, "AdamW");
    if (g?.kind !== "component") return this.fail(e.span, "this optimizer");
    const bound = bindArgs(
      g.decl.params.map((p) => ({ name: p.name.name })),
      e.args,
    );
    const value = (n: string) => {
      const v = bound.get(n);
      const p = g.decl.params.find((x) => x.name.name === n)!;
      const d = v ?? p.default;
      return d ? this.expr(d, env, p.type).py : "None";
    };
    const groups = this.paramGroups(bound.get("groups"), env);
    const config = `dict(lr=${value("lr")}, betas=(${value("beta1")}, ${value("beta2")}), eps=${value("eps")}, weight_decay=${value("weight_decay")}, max_norm=${value("max_norm")}`;
    if (groups.length === 0) return `${config})`;
    return `${config}, groups=[\n${groups.map((g) => `    ${g},\n`).join("")}])`;
  }

  /**
   * AdamW's `groups: [Group(...), ...]` as std.optim's Group in dicts, one per group, with
   * the arguments written (the prelude's adamw() applies Group's defaults and resolves the
   * patterns against the module's parameter names, as the train lowering does).
   */
  private paramGroups(e: Expr | undefined, env: Map<string, Binding>): string[] {
    if (e === undefined) return [];
    if (e.kind !== "ListExpr")
      return this.fail(e.span, "AdamW groups that are not a list of Group(...)");
    return e.elements.map((item) => {
      const named = item.kind === "NameExpr" ? env.get(item.name.name) : undefined;
      if (named?.kind === "record") return named.py;
      return (
        this.paramGroup(item, env) ??
        this.fail(item.span, "a parameter group that is not written as Group(...)")
      );
    });
  }

  /** `Group(...)` as a dict of the arguments written; undefined for another expression. */
  private paramGroup(e: Expr, env: Map<string, Binding>): string | undefined {
    if (e.kind !== "CallExpr" || e.callee.kind !== "NameExpr") return undefined;
    const g = this.e.global(this.file, e.callee.name.name);
    if (g?.kind !== "component" || g.decl.form !== "primitive" || g.decl.name.name !== "Group")
      return undefined;
    const bound = bindArgs(
      g.decl.params.map((p) => ({ name: p.name.name })),
      e.args,
    );
    const fields = g.decl.params.flatMap((p) => {
      const v = bound.get(p.name.name);
      return v ? [`${p.name.name}=${this.expr(v, env, p.type).py}`] : [];
    });
    return `dict(${fields.join(", ")})`;
  }

  /**
   * A member's attribute name on `owner` (self, or a repeat's per-iteration module): the moe
   * name, since it is the state_dict() key, or a Python-safe name recorded for `keep_names`.
   */
  private attr(id: Ident, owner = this.cur.owner): string {
    const py = memberAttr(id.name, this.members);
    if (py !== id.name) {
      let renames = this.renames.get(owner);
      if (!renames) this.renames.set(owner, (renames = new Map()));
      renames.set(py, id.name);
    }
    return py;
  }

  /** `keep_names(owner, ...)` for the members of `owner` given Python-safe names, if any. */
  private keepNames(owner: string): string[] {
    const renames = this.renames.get(owner);
    if (!renames?.size) return [];
    const args = [...renames].map(([py, moe]) => `${py}=${JSON.stringify(moe)}`);
    return [`keep_names(${owner}, ${args.join(", ")})  # state_dict() keys keep moec's names`];
  }

  /** The loop variable over a repeat's instances: `blocks` → `block`, not a name in use. */
  private loopVar(label: string): string {
    let base = label.endsWith("s") && label.length > 1 ? label.slice(0, -1) : `${label}_layer`;
    base = pyName(base);
    if (this.loopDepth > 0) base = `${base}_${this.loopDepth}`;
    while (this.usedNames.has(base)) base += "_";
    this.usedNames.add(base);
    return base;
  }

  private initializer(init: Expr | undefined, shape: string, env: Map<string, Binding>): string {
    if (init === undefined) return `torch.zeros(${shape})`;
    const name =
      init.kind === "NameExpr"
        ? init.name.name
        : init.kind === "CallExpr" && init.callee.kind === "NameExpr"
          ? init.callee.name.name
          : "";
    const args = init.kind === "CallExpr" ? init.args : [];
    switch (name) {
      case "zeros":
        return `torch.zeros(${shape})`;
      case "ones":
        return `torch.ones(${shape})`;
      case "normal": {
        const std = args[0] ? this.expr(args[0].value, env).py : "0.02";
        return `torch.randn(${shape}) * ${std}`;
      }
      case "uniform": {
        const b = this.expr(args[0]!.value, env).py;
        return `torch.empty(${shape}).uniform_(-${b}, ${b})`;
      }
    }
    return this.fail(init.span, "this initialiser");
  }

  /** Whether a body makes instances or weights (a repeat's is then a ModuleList). */
  private makesMembers(stmts: readonly Stmt[], env: Map<string, Binding>): boolean {
    return stmts.some(
      (s) =>
        s.kind === "WeightDecl" ||
        (s.kind === "Binding" &&
          (this.isConstruction(s.value, env) || appliesConstruction(s.value))) ||
        (s.kind === "IfStmt" &&
          (this.makesMembers(s.then, env) || this.makesMembers(s.else ?? [], env))) ||
        (s.kind === "RepeatStmt" && this.makesMembers(s.body, env)),
    );
  }

  /** Whether an expression makes instances (a constructor call, `frozen`, `per task`, ...). */
  private isConstruction(e: Expr, env: Map<string, Binding>): boolean {
    switch (e.kind) {
      case "CallExpr":
        return (
          e.callee.kind === "NameExpr" &&
          !env.has(e.callee.name.name) &&
          this.e.global(this.file, e.callee.name.name)?.kind === "component"
        );
      case "FrozenExpr":
      case "PerTaskExpr":
      case "WithExpr":
        return true;
      case "RepeatListExpr":
        return this.isConstruction(e.element, env);
      case "ListExpr":
        return e.elements.length > 0 && e.elements.every((x) => this.isConstruction(x, env));
      default:
        return false;
    }
  }

  /** Python that makes the instance(s) of a construction expression. */
  private construct(
    e: Expr,
    env: Map<string, Binding>,
    perTask?: string,
  ): { py: string; kind: Kind; decl?: ComponentDecl; perTask?: boolean } {
    switch (e.kind) {
      case "FrozenExpr": {
        const inner = this.construct(e.operand, env, perTask);
        return { ...inner, py: `${inner.py}.requires_grad_(False)` };
      }
      case "PerTaskExpr": {
        if (!this.taskSet) this.fail(e.span, "`per task` in a component without a task input");
        const inner = this.construct(e.operand, env, "task");
        return {
          py: `PerTask({task: ${inner.py} for task in ${this.taskSet}})`,
          kind: "instance",
          decl: inner.decl,
          perTask: true,
        };
      }
      case "WithExpr":
        return this.withAdapter(e, env, perTask);
      case "RepeatListExpr": {
        const inner = this.construct(e.element, env, perTask);
        const n = this.expr(e.count, env).py;
        return { py: `[${inner.py} for _ in range(${n})]`, kind: "list", decl: inner.decl };
      }
      case "ListExpr": {
        const items = e.elements.map((x) => this.construct(x, env, perTask));
        return { py: `[${items.map((i) => i.py).join(", ")}]`, kind: "list", decl: items[0]?.decl };
      }
      case "CallExpr": {
        if (e.callee.kind !== "NameExpr") return this.fail(e.span, "this construction");
        const g = this.e.global(this.file, e.callee.name.name);
        if (g?.kind !== "component") return this.fail(e.span, "this construction");
        const callee = g.decl;
        const bound = bindArgs(
          callee.params.map((p) => ({ name: p.name.name })),
          e.args,
        );
        for (const a of e.args)
          if (a.name && !callee.params.some((p) => p.name.name === a.name!.name))
            this.fail(a.span, `argument \`${a.name.name}\``);
        // As written: positional arguments stay positional, named ones keep their names.
        const paramType = new Map(callee.params.map((p) => [p.name.name, p.type]));
        const args: string[] = [];
        let position = 0;
        for (const a of e.args) {
          const p = a.name ? a.name.name : callee.params[position++]?.name.name;
          const type = p === undefined ? undefined : paramType.get(p);
          if (p === undefined || type === undefined) return this.fail(a.span, "this argument");
          const py = this.argValue(a.value, type, env, perTask);
          args.push(a.name ? `${pyName(p)}=${py}` : py);
        }
        if (callee.form === "primitive")
          return this.primitive(e, callee, g.file, bound, args, env, perTask);
        const cls = this.e.classFor(callee, g.file);
        return { py: `${cls}(${args.join(", ")})`, kind: "instance", decl: callee };
      }
      default:
        return this.fail(e.span, "this construction");
    }
  }

  /**
   * `base with LoRA(...)` and `base with per task LoRA(...)`: the prelude's LoRA over a base
   * bound to a name (shared), or made here (its weights then under this binding).
   */
  private withAdapter(
    e: Extract<Expr, { kind: "WithExpr" }>,
    env: Map<string, Binding>,
    perTask?: string,
  ): { py: string; kind: Kind; decl?: ComponentDecl; perTask?: boolean } {
    let basePy: string;
    let made: Expr | undefined;
    let decl: ComponentDecl | undefined;
    let owns = false;
    if (e.base.kind === "NameExpr") {
      const base = env.get(e.base.name.name);
      if (!base || base.kind !== "instance" || base.perTask)
        return this.fail(e.base.span, "an adapter on a base that is not an instance");
      basePy = base.py;
      made = base.made;
      decl = base.decl;
    } else if (this.isConstruction(e.base, env) && e.base.kind !== "PerTaskExpr") {
      const base = this.construct(e.base, env, perTask);
      if (base.kind !== "instance") return this.fail(e.base.span, "an adapter on a list");
      basePy = base.py;
      made = e.base;
      decl = base.decl;
      owns = true;
    } else return this.fail(e.base.span, "an adapter on this base");
    let a = e.adapter;
    const byTask = a.kind === "PerTaskExpr";
    if (a.kind === "PerTaskExpr") a = a.operand;
    if (byTask && !this.taskSet)
      return this.fail(e.adapter.span, "`per task` in a component without a task input");
    const callee = a.kind === "CallExpr" && a.callee.kind === "NameExpr" ? a.callee.name.name : "";
    const g = callee ? this.e.global(this.file, callee) : undefined;
    if (g?.kind === "component" && g.decl.form !== "primitive") {
      // A module adapter applies to the base's output: adapter(base(x)). A base made here
      // has its weights beside the adapter's (tuned.weight, tuned.down.weight), as moec names them.
      // `per task`: the adapter is a PerTask (tuned.<task>.down.weight), given the task ids.
      const adapter = this.construct(byTask ? e.adapter : a, env, perTask);
      const args = [basePy, adapter.py, ...(owns ? ["owns_base=True"] : [])];
      return { py: `WithAdapter(${args.join(", ")})`, kind: "instance", decl, perTask: byTask };
    }
    if (
      g?.kind !== "component" ||
      g.decl.form !== "primitive" ||
      callee !== "LoRA" ||
      a.kind !== "CallExpr"
    )
      return this.fail(a.span, "an adapter other than LoRA attached with `with`");
    const bound = bindArgs(
      g.decl.params.map((p) => ({ name: p.name.name })),
      a.args,
    );
    if (bound.has("targets")) {
      // PEFT's target_modules: the LoRAs go on the matching layers inside the base, which a
      // base made here owns; a shared base gets them only when applied through this binding.
      const args = [basePy];
      for (const p of g.decl.params) {
        const v = bound.get(p.name.name);
        if (v)
          args.push(
            `${p.name.name === "targets" ? "targets" : p.name.name}=${this.argValue(v, p.type, env, perTask)}`,
          );
      }
      if (byTask) {
        // Each task's pairs in each targeted layer; the task ids come last when it is applied.
        args.push(`tasks=${this.taskSet}`);
        if (owns) args.push("owns_base=True");
        return { py: `TargetedLoRA(${args.join(", ")})`, kind: "instance", decl, perTask: true };
      }
      if (this.e.mergeAdapters) args.push("merge=True");
      const fn = owns ? "lora_targets" : "TargetedLoRA";
      return { py: `${fn}(${args.join(", ")})`, kind: "instance", decl };
    }
    // A base passed in as a `Module` parameter has no sizes here: LoRA reads them off it.
    const fin = made ? this.portDim(made, env, "in") : "None";
    const fout = made ? this.portDim(made, env, "out") : "None";
    if (fin === undefined || fout === undefined)
      return this.fail(e.base.span, "a LoRA base whose sizes are not known here");
    const args = [basePy, fin, fout];
    for (const p of g.decl.params) {
      const v = bound.get(p.name.name);
      if (v) args.push(`${p.name.name}=${this.argValue(v, p.type, env, perTask)}`);
    }
    if (owns) args.push("owns_base=True");
    if (byTask) args.push(`tasks=${this.taskSet}`);
    // moec merges a LoRA into a Linear base; a per-task LoRA stays a delta per task.
    else if (this.e.mergeAdapters) args.push("merge=True");
    return { py: `LoRA(${args.join(", ")})`, kind: "instance", decl, perTask: byTask };
  }

  /** An argument to a constructor: enum members as strings, per-task records by task. */
  private argValue(v: Expr, type: TypeRef, env: Map<string, Binding>, perTask?: string): string {
    if (
      perTask &&
      v.kind === "RecordExpr" &&
      !(type.kind === "NamedType" && type.name.name === "TaskMap")
    ) {
      const fields = v.fields.map(
        (f) => `${JSON.stringify(f.name.name)}: ${this.expr(f.value, env, type).py}`,
      );
      return `{${fields.join(", ")}}[${perTask}]`;
    }
    if (this.isConstruction(v, env)) return this.construct(v, env, perTask).py;
    return this.expr(v, env, type).py;
  }

  /** A primitive: MoE with its router and experts, or a router (prelude classes). */
  private primitive(
    e: Extract<Expr, { kind: "CallExpr" }>,
    callee: ComponentDecl,
    calleeFile: string,
    bound: Map<string, Expr>,
    args: string[],
    env: Map<string, Binding>,
    perTask?: string,
  ): { py: string; kind: Kind; decl?: ComponentDecl } {
    const name = callee.name.name;
    if (PRELUDE_ROUTERS.has(name))
      return { py: `${name}(${args.join(", ")})`, kind: "instance", decl: callee };
    if (name !== "MoE") return this.fail(e.span, `${name}`);
    const router = bound.get("router");
    const experts = bound.get("experts");
    if (!router || !experts) return this.fail(e.span, "an MoE without router or experts");
    // A part bound to a name elsewhere (`r = TopK(2)`, `es = [FFN(d, d); 4]`) keeps its
    // weights under that name: the layer is handed it without owning it.
    const boundParts: string[] = [];
    const part = (name: string, x: Expr): { py: string; kind: Kind; made: Expr } => {
      const b = x.kind === "NameExpr" ? env.get(x.name.name) : undefined;
      if (b?.made && (b.kind === "instance" || b.kind === "list") && !b.perTask) {
        boundParts.push(name);
        return { py: b.py, kind: b.kind, made: b.made };
      }
      if (!this.isConstruction(x, env)) return this.fail(x.span, `this MoE ${name}`);
      return { ...this.construct(x, env, perTask), made: x };
    };
    const routerPart = part("router", router);
    const routerCall =
      routerPart.made.kind === "FrozenExpr" ? routerPart.made.operand : routerPart.made;
    const routerName =
      routerCall.kind === "CallExpr" && routerCall.callee.kind === "NameExpr"
        ? routerCall.callee.name.name
        : "?";
    if (!PRELUDE_ROUTERS.has(routerName)) return this.fail(router.span, `the ${routerName} router`);
    const expertList = part("experts", experts);
    if (expertList.kind !== "list") return this.fail(experts.span, "experts that are not a list");
    const parts = [`router=${routerPart.py}`, `experts=${expertList.py}`];
    const shared = bound.get("shared");
    if (shared) parts.push(`shared=${part("shared", shared).py}`);
    const firstOf = (x: Expr | undefined): Expr | undefined =>
      x?.kind === "RepeatListExpr" ? x.element : x?.kind === "ListExpr" ? x.elements[0] : x;
    let first = firstOf(expertList.made);
    if (first && (first.kind === "RepeatListExpr" || first.kind === "ListExpr")) {
      if (routerName !== "Grouped")
        return this.fail(experts.span, `groups of experts (a list of lists) under ${routerName}`);
      first = firstOf(first);
    } else if (routerName === "Grouped")
      return this.fail(experts.span, "Grouped over experts that are not groups (a list of lists)");
    const d = first ? this.portDim(first, env, "in") : undefined;
    if (d === undefined)
      return this.fail(experts.span, "experts whose input size is not known here");
    parts.push(`d=${d}`);
    if (this.taskSet) parts.push(`tasks=${this.taskSet}`);
    if (boundParts.length)
      parts.push(
        `bound=(${boundParts.map((p) => JSON.stringify(p)).join(", ")}${boundParts.length === 1 ? "," : ""})`,
      );
    void calleeFile;
    // One argument a line: a layer's router and experts read as a table.
    return { py: `MoE(\n    ${parts.join(",\n    ")},\n)`, kind: "instance", decl: callee };
  }

  /**
   * The size of the last dim of an instance's first input (or output), as Python in this scope: the
   * expert's port type with its constructor arguments substituted (`FFN(d, h)` → `d`).
   */
  private portDim(e: Expr, env: Map<string, Binding>, dir: "in" | "out"): string | undefined {
    if (e.kind === "FrozenExpr" || e.kind === "PerTaskExpr")
      return this.portDim(e.operand, env, dir);
    if (e.kind === "WithExpr") return this.portDim(e.base, env, dir);
    if (e.kind === "NameExpr") {
      const b = env.get(e.name.name);
      return b?.made ? this.portDim(b.made, env, dir) : undefined;
    }
    if (e.kind !== "CallExpr" || e.callee.kind !== "NameExpr") return undefined;
    const g = this.e.global(this.file, e.callee.name.name);
    if (g?.kind !== "component" || g.decl.form === "primitive") return undefined;
    const port = g.decl.body.find(
      (s): s is Extract<Stmt, { kind: "PortDecl" }> => s.kind === "PortDecl" && s.direction === dir,
    );
    const dims = port?.type.kind === "NamedType" ? port.type.dims : undefined;
    const last = dims?.[dims.length - 1];
    if (!last || last.kind === "Ellipsis") return undefined;
    const bound = bindArgs(
      g.decl.params.map((p) => ({ name: p.name.name })),
      e.args,
    );
    // The callee's parameters as Python of the caller's scope, defaults in the callee's.
    const sub = new Map<string, Binding>();
    for (const p of g.decl.params) {
      const a = bound.get(p.name.name);
      const kind = kindOfType(p.type, (n) => this.e.typeKind(g.file, n));
      if (a) sub.set(p.name.name, { py: `(${this.expr(a, env, p.type).py})`, kind });
      else if (p.default) {
        const inner = new ComponentEmitter(this.e, g.decl, g.file, "", undefined);
        sub.set(p.name.name, { py: `(${inner.expr(p.default, sub, p.type).py})`, kind });
      }
    }
    const inner = new ComponentEmitter(this.e, g.decl, g.file, "", undefined);
    return inner.expr(last, sub).py.replace(/^\((\w+)\)$/, "$1");
  }

  /** A value expression as Python, with its kind. `type` is the expected type, if known. */
  expr(
    e: Expr,
    env: Map<string, Binding>,
    type?: TypeRef,
  ): { py: string; kind: Kind; decl?: ComponentDecl } {
    switch (e.kind) {
      case "NumberLit": {
        const asFloat = !e.isInt || (type?.kind === "NamedType" && type.name.name === "Float");
        return asFloat
          ? { py: pyFloat(e.value), kind: "float" }
          : { py: String(e.value), kind: "int" };
      }
      case "BoolLit":
        return { py: e.value ? "True" : "False", kind: "bool" };
      case "StringLit":
        return { py: JSON.stringify(e.value), kind: "string" };
      case "NameExpr":
        return this.name(e.name, env, type);
      case "MemberExpr": {
        const obj = this.expr(e.object, env);
        if (obj.kind === "outputs")
          return { py: `${obj.py}[${JSON.stringify(e.member.name)}]`, kind: "tensor" };
        if (obj.kind === "instance") {
          const decl = obj.decl;
          const isWeight = decl?.body.some(
            (s) => s.kind === "WeightDecl" && s.name.name === e.member.name,
          );
          return {
            py: `${obj.py}.${decl ? memberAttr(e.member.name, membersOf(decl)) : e.member.name}`,
            kind: isWeight ? "tensor" : "instance",
          };
        }
        return this.fail(e.span, "this member access");
      }
      case "UnaryExpr": {
        const v = this.expr(e.operand, env, type);
        return e.op === "-"
          ? { py: `-${wrap(v.py)}`, kind: v.kind }
          : { py: `not ${wrap(v.py)}`, kind: "bool" };
      }
      case "BinaryExpr": {
        const l = this.expr(e.left, env);
        const r = this.expr(e.right, env);
        const tensor = l.kind === "tensor" || r.kind === "tensor";
        const ints = l.kind === "int" && r.kind === "int";
        let op: string = e.op;
        if (op === "/" && ints) op = "//"; // sizes divide exactly (checked)
        const cmp = ["==", "!=", "<", "<=", ">", ">="].includes(op);
        const kind: Kind = cmp
          ? tensor
            ? "tensor"
            : "bool"
          : tensor
            ? "tensor"
            : ints
              ? "int"
              : "float";
        return { py: `${wrap(l.py)} ${op} ${wrap(r.py)}`, kind };
      }
      case "ListExpr": {
        const el = type?.kind === "ListType" ? type.element : undefined;
        const items = e.elements.map((x) => this.expr(x, env, el));
        const py = `[${items.map((i) => i.py).join(", ")}]`;
        // A list of tensors is computed in forward only, as a tensor is.
        return { py, kind: items.some((i) => i.kind === "tensor") ? "tensors" : "list" };
      }
      case "RecordExpr": {
        const fields = e.fields.map(
          (f) => `${JSON.stringify(f.name.name)}: ${this.expr(f.value, env).py}`,
        );
        return { py: `{${fields.join(", ")}}`, kind: "record" };
      }
      case "CallExpr":
        return this.call(e, env);
      default:
        return this.fail(e.span, `\`${e.kind}\` here`);
    }
  }

  private name(
    id: Ident,
    env: Map<string, Binding>,
    type?: TypeRef,
  ): { py: string; kind: Kind; decl?: ComponentDecl } {
    const b = env.get(id.name);
    if (b) return { py: b.py, kind: b.kind, decl: b.decl };
    const g = this.e.global(this.file, id.name);
    if (g?.kind === "const")
      return {
        py: wrap(this.expr(g.decl.value, new Map(), g.decl.type).py),
        kind: this.expr(g.decl.value, new Map(), g.decl.type).kind,
      };
    if (g?.kind === "tasks") return { py: this.e.useTaskSet(this.file, id.name), kind: "taskset" };
    if (type?.kind === "NamedType" && this.e.typeKind(this.file, type.name.name) === "enum")
      return { py: JSON.stringify(id.name), kind: "enum" };
    if (this.e.isEnumMember(this.file, id.name))
      return { py: JSON.stringify(id.name), kind: "enum" };
    return this.fail(id.span, `the name \`${id.name}\``);
  }

  private call(
    e: Extract<Expr, { kind: "CallExpr" }>,
    env: Map<string, Binding>,
  ): { py: string; kind: Kind; decl?: ComponentDecl } {
    const callee = e.callee;
    if (
      callee.kind === "NameExpr" &&
      !env.has(callee.name.name) &&
      !this.e.global(this.file, callee.name.name)
    )
      return this.builtin(callee.name.name, e, env);
    if (this.isConstruction(e, env))
      return this.fail(e.span, "an instance constructed here and not bound to a name");
    let f: { py: string; kind: Kind; decl?: ComponentDecl };
    if (this.isConstruction(callee, env)) {
      // `LayerNorm(d)(x)`: an instance named after its type and position, as moec names it.
      const made = this.construct(callee, env);
      if (made.kind !== "instance")
        return this.fail(callee.span, "this construction applied in one expression");
      const { init, owner } = this.cur;
      const type = snakeCase(made.decl?.name.name ?? "module");
      const key = `${owner}|${type}`;
      const n = this.anonymous.get(key) ?? 0;
      this.anonymous.set(key, n + 1);
      const py = `${owner}.${type}_${n}`;
      init.push(`${py} = ${made.py}`);
      f = { py, kind: "instance", decl: made.decl };
    } else f = this.expr(callee, env);
    if (f.kind !== "instance") return this.fail(e.span, "this call");
    const args = e.args.map((a) => {
      if (a.name) this.fail(a.span, "a named argument to an instance");
      return this.expr(a.value, env).py;
    });
    const outs =
      f.decl?.body.filter((s) => s.kind === "PortDecl" && s.direction === "out").length ?? 1;
    return { py: `${f.py}(${args.join(", ")})`, kind: outs > 1 ? "outputs" : "tensor" };
  }

  private builtin(
    name: string,
    e: Extract<Expr, { kind: "CallExpr" }>,
    env: Map<string, Binding>,
  ): { py: string; kind: Kind } {
    const names: Record<string, string[]> = {
      activation: ["x", "fn"],
      softmax: ["x", "axis"],
      log_softmax: ["x", "axis"],
      mean: ["x", "axis", "keepdim"],
      sum: ["x", "axis", "keepdim"],
      max: ["x", "axis", "keepdim"],
      variance: ["x", "axis", "keepdim"],
      transpose: ["x", "a", "b"],
      reshape: ["x", "shape"],
      permute: ["x", "order"],
      concat: ["xs", "axis"],
      take: ["table", "ids"],
      select: ["x", "axis", "index"],
      causal_mask: ["x"],
      positions: ["x"],
      task_ids: ["x"],
      num_tasks: ["tasks"],
      cross_entropy: ["logits", "labels", "ignore_index", "label_smoothing"],
      mse: ["a", "b"],
      distill: ["student", "teachers", "temperature", "weights", "labels"],
    };
    const unary = ELEMENTWISE[name];
    const params = unary || name === "gelu_tanh" ? ["x"] : names[name];
    if (!params) return this.fail(e.span, `the builtin \`${name}\``);
    const bound = bindArgs(
      params.map((p) => ({ name: p })),
      e.args,
    );
    const arg = (n: string) => {
      const v = bound.get(n);
      return v ? this.expr(v, env) : undefined;
    };
    const x = arg(params[0]!)!;
    const t = (py: string): { py: string; kind: Kind } => ({ py, kind: "tensor" });
    if (unary) {
      if (x.kind === "tensor") return t(`${unary[0]}(${x.py})`);
      const s = unary[1] || unary[0];
      return { py: s.includes("%") ? s.replace("%", x.py) : `${s}(${x.py})`, kind: "float" };
    }
    const axis = (def: string) => arg("axis")?.py ?? def;
    const keepdim = () =>
      arg("keepdim")?.py === "True"
        ? ", keepdim=True"
        : arg("keepdim")
          ? `, keepdim=${arg("keepdim")!.py}`
          : "";
    switch (name) {
      case "gelu_tanh":
        return t(`F.gelu(${x.py}, approximate="tanh")`);
      case "activation": {
        const fn = bound.get("fn");
        const fnPy =
          fn?.kind === "NameExpr" && !env.has(fn.name.name)
            ? JSON.stringify(fn.name.name)
            : arg("fn")!.py;
        return t(`activation(${x.py}, ${fnPy})`);
      }
      case "softmax":
        return t(`torch.softmax(${x.py}, ${axis("-1")})`);
      case "log_softmax":
        return t(`torch.log_softmax(${x.py}, ${axis("-1")})`);
      case "mean":
      case "sum":
        return t(`${wrap(x.py)}.${name}(${axis("-1")}${keepdim()})`);
      case "max":
        return t(`${wrap(x.py)}.amax(${axis("-1")}${keepdim()})`);
      case "variance":
        return t(`variance(${x.py}, ${axis("-1")}${keepdim()})`);
      case "transpose":
        return t(`${wrap(x.py)}.transpose(${arg("a")?.py ?? "-2"}, ${arg("b")?.py ?? "-1"})`);
      case "reshape": {
        const s = bound.get("shape");
        const dims =
          s?.kind === "ListExpr"
            ? s.elements.map((d) => this.expr(d, env).py).join(", ")
            : `*${arg("shape")!.py}`;
        return t(`${wrap(x.py)}.reshape(${dims})`);
      }
      case "permute": {
        const o = bound.get("order");
        const dims =
          o?.kind === "ListExpr"
            ? o.elements.map((d) => this.expr(d, env).py).join(", ")
            : `*${arg("order")!.py}`;
        return t(`${wrap(x.py)}.permute(${dims})`);
      }
      case "concat":
        return t(`torch.cat(${x.py}, ${axis("-1")})`);
      case "take":
        if (/^self\.\w+$/.test(x.py)) this.tables.add(x.py.slice(5));
        return t(`take(${x.py}, ${arg("ids")!.py})`);
      case "select":
        return t(`${wrap(x.py)}.select(${arg("axis")!.py}, ${arg("index")!.py})`);
      case "causal_mask":
        return t(`causal_mask(${x.py})`);
      case "positions":
        return t(`positions(${x.py})`);
      case "task_ids":
        return t(x.py);
      case "num_tasks":
        return { py: `len(${x.py})`, kind: "int" };
      case "cross_entropy": {
        const extra = ["ignore_index", "label_smoothing"].flatMap((n) =>
          bound.has(n) ? [`${n}=${arg(n)!.py}`] : [],
        );
        return t(`cross_entropy(${[x.py, arg("labels")!.py, ...extra].join(", ")})`);
      }
      case "distill": {
        const extra = ["temperature", "weights", "labels"].flatMap((n) =>
          bound.has(n) ? [`${n}=${arg(n)!.py}`] : [],
        );
        return t(`distill(${[x.py, arg("teachers")!.py, ...extra].join(", ")})`);
      }
      case "mse":
        return t(`((${x.py} - ${arg("b")!.py}) ** 2).mean()`);
    }
    return this.fail(e.span, `the builtin \`${name}\``);
  }
}

/**
 * Parenthesises an operand unless it is atomic: names, calls, indexing and attribute chains
 * (`self.q(x).reshape(B, T)`), i.e. nothing but word characters and dots outside brackets.
 */
function wrap(py: string): string {
  let depth = 0;
  let quote: string | undefined;
  for (let i = 0; i < py.length; i++) {
    const c = py[i]!;
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === '"' || c === "'") quote = c;
    else if (c === "(" || c === "[" || c === "{") depth++;
    else if (c === ")" || c === "]" || c === "}") depth--;
    else if (depth === 0 && !/[\w.]/.test(c)) return `(${py})`;
  }
  return py;
}

/** Whether a train program's body constructs the component `name` (`net = Model(...)`). */
function constructs(node: unknown, name: string): boolean {
  if (Array.isArray(node)) return node.some((n) => constructs(n, name));
  if (node === null || typeof node !== "object") return false;
  const o = node as Record<string, unknown>;
  const callee = o.callee as { kind: string; name?: Ident } | undefined;
  if (o.kind === "CallExpr" && callee?.kind === "NameExpr" && callee.name?.name === name)
    return true;
  return Object.entries(o).some(([k, v]) => k !== "span" && constructs(v, name));
}

/**
 * Names a body binds more than once to a construction (a call of a component, `frozen`,
 * `per task`, `with`, a list of them), in one block of statements or its branches and loops.
 */
function boundTwice(stmts: readonly Stmt[]): Set<string> {
  const makes = (e: Expr): boolean =>
    (e.kind === "CallExpr" && e.callee.kind === "NameExpr") ||
    ((e.kind === "FrozenExpr" || e.kind === "PerTaskExpr") && makes(e.operand)) ||
    e.kind === "WithExpr" ||
    e.kind === "RepeatListExpr" ||
    (e.kind === "ListExpr" && e.elements.length > 0 && e.elements.every(makes));
  // Bindings per name along one path through the body: one branch of an `if` or the other.
  const count = (body: readonly Stmt[], counts: Map<string, number>): Map<string, number> => {
    for (const s of body) {
      if (s.kind === "Binding" && makes(s.value))
        counts.set(s.target.name, (counts.get(s.target.name) ?? 0) + 1);
      else if (s.kind === "IfStmt") {
        const a = count(s.then, new Map(counts));
        const b = count(s.else ?? [], new Map(counts));
        for (const k of new Set([...a.keys(), ...b.keys()]))
          counts.set(k, Math.max(a.get(k) ?? 0, b.get(k) ?? 0));
      } else if (s.kind === "RepeatStmt") count(s.body, counts);
    }
    return counts;
  };
  return new Set([...count(stmts, new Map())].filter(([, n]) => n > 1).map(([k]) => k));
}

/** `frozen name` of an instance bound elsewhere: that binding. */
function frozenName(e: Expr, env: Map<string, Binding>): Binding | undefined {
  if (e.kind !== "FrozenExpr" || e.operand.kind !== "NameExpr") return undefined;
  const b = env.get(e.operand.name.name);
  return b?.kind === "instance" ? b : undefined;
}

/** Whether an expression constructs an instance and applies it at once (`LayerNorm(d)(x)`). */
function appliesConstruction(node: unknown): boolean {
  if (Array.isArray(node)) return node.some(appliesConstruction);
  if (node === null || typeof node !== "object") return false;
  const o = node as Record<string, unknown>;
  if (o.kind === "CallExpr" && (o.callee as { kind: string }).kind === "CallExpr") return true;
  return Object.entries(o).some(([k, v]) => k !== "span" && appliesConstruction(v));
}

/** The members of a component (names bound to instances or weights: its attributes). */
function membersOf(decl: ComponentDecl): Set<string> {
  const out = new Set<string>();
  collectMembers(decl.body, out);
  return out;
}

/** Names bound to instances or weights anywhere in a body (they are attributes). */
function collectMembers(stmts: readonly Stmt[], out: Set<string>): void {
  for (const s of stmts) {
    if (s.kind === "WeightDecl") out.add(s.name.name);
    else if (s.kind === "Binding") out.add(s.target.name);
    else if (s.kind === "IfStmt") {
      collectMembers(s.then, out);
      collectMembers(s.else ?? [], out);
    } else if (s.kind === "RepeatStmt") {
      out.add(s.label?.name ?? "layers");
      collectMembers(s.body, out);
    }
  }
}

/** Every name referenced in a body (to bind only the free dims and parameters forward uses). */
function collectNames(node: unknown, out: Set<string>): void {
  if (Array.isArray(node)) {
    for (const n of node) collectNames(n, out);
    return;
  }
  if (node === null || typeof node !== "object") return;
  const o = node as Record<string, unknown>;
  if (o.kind === "NameExpr") out.add((o.name as Ident).name);
  if (o.kind === "Binding") out.add((o.target as Ident).name);
  for (const [k, v] of Object.entries(o)) if (k !== "span") collectNames(v, out);
}
