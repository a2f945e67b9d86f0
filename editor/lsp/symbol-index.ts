/**
 * Declarations and name occurrences of one analysis, for go to definition, references,
 * rename, document highlights and semantic tokens. Declarations come from the AST (every
 * module of the analysis); uses of the entry file come from the checker's name resolution
 * (`Evaluator.references`), which is flow-sensitive: a
 * rebinding `x = x + 1` is a use of the first binding of `x`, and chains of such uses are
 * followed to the declaration.
 */
import type {
  Binding,
  ComponentDecl,
  ConstDecl,
  EnumDecl,
  Ident,
  ParamDecl,
  PortDecl,
  Span,
  TasksDecl,
  TrainDecl,
  WeightDecl,
} from "../../grammar/ast.js";
import type { NameReference, ReferenceKind } from "../../compiler/check/evaluator.js";
import type { ModuleGraph } from "../../compiler/check/load-modules.js";
import type { ResolvedProgram } from "../../compiler/check/resolve-names.js";
import { allStatements, forEachNode } from "./ast-walk.js";

export type SymbolKind = ReferenceKind | "module";

/** A declared name. */
export interface SymbolDecl {
  key: string;
  file: string;
  /** The span of the declared name. */
  span: Span;
  name: string;
  kind: SymbolKind;
  node?:
    | ComponentDecl
    | TrainDecl
    | TasksDecl
    | EnumDecl
    | ConstDecl
    | ParamDecl
    | PortDecl
    | WeightDecl
    | Binding;
  /** For parameters, ports, weights, bindings and dims: the body they belong to. */
  owner?: ComponentDecl | TrainDecl;
  /** For task and enum members: their set. */
  parent?: TasksDecl | EnumDecl;
}

/** One place a name is written: its declaration or a use of it. */
export interface Occurrence {
  file: string;
  span: Span;
  key: string;
  declaration: boolean;
}

export function declKey(file: string, span: Span): string {
  return `${file}#${span.start}`;
}

/** A map keyed by (file, offset), without building a string per key. */
class SpanMap<T> {
  private readonly files = new Map<string, Map<number, T>>();
  get(file: string, start: number): T | undefined {
    return this.files.get(file)?.get(start);
  }
  set(file: string, start: number, value: T): void {
    let m = this.files.get(file);
    if (!m) this.files.set(file, (m = new Map()));
    m.set(start, value);
  }
  delete(file: string, start: number): void {
    this.files.get(file)?.delete(start);
  }
  *values(): IterableIterator<T> {
    for (const m of this.files.values()) yield* m.values();
  }
}

/** A name use: where it is written and the (file, offset) of what it refers to. */
interface Use {
  file: string;
  span: Span;
  targetFile: string;
  /** The target's offset; -1 for a module (the file itself). */
  targetStart: number;
}

/** What the index reads of an analysis (EditorAnalysis has it; the index never imports it). */
export interface IndexedAnalysis {
  readonly graph: ModuleGraph;
  readonly program: ResolvedProgram;
  entryReferences(): NameReference[];
}

export class SymbolIndex {
  readonly declarations = new Map<string, SymbolDecl>();
  private readonly decls = new SpanMap<SymbolDecl>();
  private readonly uses = new SpanMap<Use>();
  private readonly byFile = new Map<string, Occurrence[]>();
  private readonly byKey = new Map<string, Occurrence[]>();

  constructor(readonly analysis: IndexedAnalysis) {
    for (const mod of analysis.graph.modules.values()) this.collectDeclarations(mod.file);
    for (const r of analysis.entryReferences()) {
      const t = r.target;
      if (!this.decls.get(t.file, t.span.start)) {
        this.decls.set(t.file, t.span.start, {
          key: declKey(t.file, t.span),
          file: t.file,
          span: t.span,
          name: t.name,
          kind: t.kind,
        });
      }
      this.uses.set(r.file, r.span.start, {
        file: r.file,
        span: r.span,
        targetFile: t.file,
        targetStart: t.span.start,
      });
    }
    for (const mod of analysis.graph.modules.values()) this.collectImports(mod.file);
    // A binding that is recorded as a use is a rebinding, not a declaration.
    for (const u of this.uses.values()) this.decls.delete(u.file, u.span.start);
    for (const mod of analysis.graph.modules.values()) this.collectDims(mod.file);
    for (const d of this.decls.values()) {
      this.declarations.set(d.key, d);
      if (d.kind !== "module")
        this.add({ file: d.file, span: d.span, key: d.key, declaration: true });
    }
    for (const u of this.uses.values()) {
      const d = this.resolve(u);
      if (d) this.add({ file: u.file, span: u.span, key: d.key, declaration: false });
    }
    for (const list of this.byFile.values()) list.sort((a, b) => a.span.start - b.span.start);
  }

  private add(o: Occurrence): void {
    let f = this.byFile.get(o.file);
    if (!f) this.byFile.set(o.file, (f = []));
    f.push(o);
    let k = this.byKey.get(o.key);
    if (!k) this.byKey.set(o.key, (k = []));
    k.push(o);
  }

  /** Follows uses of uses (rebindings) to the declaration. */
  private resolve(use: Use): SymbolDecl | undefined {
    let u = use;
    for (let i = 0; i < 64; i++) {
      const next = this.uses.get(u.targetFile, u.targetStart);
      if (!next) return this.decls.get(u.targetFile, u.targetStart);
      u = next;
    }
    return undefined;
  }

  private declare(
    file: string,
    name: Ident,
    kind: SymbolKind,
    extra: Pick<SymbolDecl, "node" | "owner" | "parent"> = {},
  ): void {
    const key = declKey(file, name.span);
    this.decls.set(file, name.span.start, {
      key,
      file,
      span: name.span,
      name: name.name,
      kind,
      ...extra,
    });
  }

  private collectDeclarations(file: string): void {
    const mod = this.analysis.graph.modules.get(file)!;
    for (const item of mod.ast.items) {
      switch (item.kind) {
        case "ImportDecl":
          break;
        case "TasksDecl":
        case "EnumDecl": {
          const member = item.kind === "TasksDecl" ? "task" : "enumMember";
          this.declare(file, item.name, item.kind === "TasksDecl" ? "tasks" : "enum", {
            node: item,
          });
          for (const m of item.members) this.declare(file, m, member, { parent: item });
          break;
        }
        case "ConstDecl":
          this.declare(file, item.name, "const", { node: item });
          break;
        case "ComponentDecl":
        case "TrainDecl": {
          this.declare(file, item.name, item.kind === "TrainDecl" ? "train" : "component", {
            node: item,
          });
          for (const p of item.params)
            this.declare(file, p.name, "param", { node: p, owner: item });
          for (const s of allStatements(item.body)) {
            if (s.kind === "PortDecl") this.declare(file, s.name, "port", { node: s, owner: item });
            else if (s.kind === "WeightDecl")
              this.declare(file, s.name, "weight", { node: s, owner: item });
            else if (s.kind === "Binding")
              this.declare(file, s.target, "binding", { node: s, owner: item });
          }
          break;
        }
      }
    }
  }

  /** Imported names point at their declarations; module paths at their files. */
  private collectImports(file: string): void {
    const mod = this.analysis.graph.modules.get(file)!;
    for (const [decl, target] of mod.importTargets) {
      if (!this.decls.get(target, -1)) {
        this.decls.set(target, -1, {
          key: `module:${target}`,
          file: target,
          span: { start: 0, end: 0 },
          name:
            decl.module.kind === "std" ? decl.module.parts.map((p) => p.name).join(".") : target,
          kind: "module",
        });
      }
      this.uses.set(file, decl.module.span.start, {
        file,
        span: decl.module.span,
        targetFile: target,
        targetStart: -1,
      });
      const scope = this.analysis.program.scopes.get(target);
      for (const imp of decl.names) {
        const found = scope?.names.get(imp.name.name);
        if (!found || found.file !== target) continue;
        for (const id of [imp.name, imp.alias]) {
          if (!id) continue;
          this.uses.set(file, id.span.start, {
            file,
            span: id.span,
            targetFile: found.file,
            targetStart: found.decl.name.span.start,
          });
        }
      }
    }
  }

  /** A free dimension is declared where it first appears in a port type. */
  private collectDims(file: string): void {
    const mod = this.analysis.graph.modules.get(file)!;
    for (const item of mod.ast.items) {
      if (item.kind !== "ComponentDecl" && item.kind !== "TrainDecl") continue;
      for (const s of item.body) {
        if (s.kind !== "PortDecl") continue;
        forEachNode(s.type, (n) => {
          if (n.kind !== "NameExpr") return;
          const name = (n as unknown as { name: Ident }).name;
          if (this.uses.get(file, name.span.start)) return;
          const d = this.decls.get(file, name.span.start);
          if (!d) this.declare(file, name, "dim", { owner: item });
          else d.owner = item;
        });
      }
    }
  }

  /** The innermost occurrence at an offset of a file. */
  at(file: string, offset: number): Occurrence | undefined {
    const list = this.byFile.get(file);
    if (!list) return undefined;
    // Names do not overlap: the last occurrence starting at or before the offset, or the one
    // before it when the offset is right after a name.
    let lo = 0;
    let hi = list.length - 1;
    let last = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid]!.span.start <= offset) {
        last = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    for (let i = last; i >= 0 && i >= last - 1; i--) {
      const o = list[i]!;
      if (o.span.start <= offset && offset <= o.span.end) return o;
    }
    return undefined;
  }

  occurrencesOf(key: string): Occurrence[] {
    return this.byKey.get(key) ?? [];
  }

  occurrencesIn(file: string): Occurrence[] {
    return this.byFile.get(file) ?? [];
  }

  declaration(key: string): SymbolDecl | undefined {
    return this.declarations.get(key);
  }
}
