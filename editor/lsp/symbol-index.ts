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
import type { ReferenceKind } from "../../compiler/evaluator.js";
import { allStatements, forEachNode } from "./ast-walk.js";
import type { EditorAnalysis } from "./analysis.js";

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

export class SymbolIndex {
  readonly declarations = new Map<string, SymbolDecl>();
  private readonly uses = new Map<string, { file: string; span: Span; target: string }>();
  private readonly byFile = new Map<string, Occurrence[]>();
  private readonly byKey = new Map<string, Occurrence[]>();

  constructor(readonly analysis: EditorAnalysis) {
    for (const mod of analysis.graph.modules.values()) this.collectDeclarations(mod.file);
    for (const r of analysis.entryReferences()) {
      const target = declKey(r.target.file, r.target.span);
      if (!this.declarations.has(target)) {
        this.declarations.set(target, {
          key: target,
          file: r.target.file,
          span: r.target.span,
          name: r.target.name,
          kind: r.target.kind,
        });
      }
      this.uses.set(declKey(r.file, r.span), { file: r.file, span: r.span, target });
    }
    for (const mod of analysis.graph.modules.values()) this.collectImports(mod.file);
    // A binding that is recorded as a use is a rebinding, not a declaration.
    for (const key of this.uses.keys()) this.declarations.delete(key);
    for (const mod of analysis.graph.modules.values()) this.collectDims(mod.file);
    for (const d of this.declarations.values()) {
      if (d.kind !== "module")
        this.add({ file: d.file, span: d.span, key: d.key, declaration: true });
    }
    for (const u of this.uses.values()) {
      const key = this.resolve(u.target);
      if (key !== undefined) this.add({ file: u.file, span: u.span, key, declaration: false });
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
  private resolve(key: string): string | undefined {
    let k = key;
    for (let i = 0; i < 64; i++) {
      const u = this.uses.get(k);
      if (!u) return this.declarations.has(k) ? k : undefined;
      k = u.target;
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
    this.declarations.set(key, { key, file, span: name.span, name: name.name, kind, ...extra });
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
      const moduleKey = `module:${target}`;
      if (!this.declarations.has(moduleKey)) {
        this.declarations.set(moduleKey, {
          key: moduleKey,
          file: target,
          span: { start: 0, end: 0 },
          name:
            decl.module.kind === "std" ? decl.module.parts.map((p) => p.name).join(".") : target,
          kind: "module",
        });
      }
      this.uses.set(declKey(file, decl.module.span), {
        file,
        span: decl.module.span,
        target: moduleKey,
      });
      const scope = this.analysis.program.scopes.get(target);
      for (const imp of decl.names) {
        const found = scope?.names.get(imp.name.name);
        if (!found || found.file !== target) continue;
        const key = declKey(found.file, found.decl.name.span);
        for (const id of [imp.name, imp.alias]) {
          if (id) this.uses.set(declKey(file, id.span), { file, span: id.span, target: key });
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
          const key = declKey(file, name.span);
          if (this.uses.has(key)) return;
          if (!this.declarations.has(key)) this.declare(file, name, "dim", { owner: item });
          else this.declarations.get(key)!.owner = item;
        });
      }
    }
  }

  /** The innermost occurrence at an offset of a file. */
  at(file: string, offset: number): Occurrence | undefined {
    const list = this.byFile.get(file);
    if (!list) return undefined;
    let best: Occurrence | undefined;
    for (const o of list) {
      if (o.span.start > offset) break;
      if (
        offset <= o.span.end &&
        (!best || o.span.end - o.span.start <= best.span.end - best.span.start)
      )
        best = o;
    }
    return best;
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
