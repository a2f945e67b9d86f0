/**
 * Pass 2: build each module's top-level scope (its own declarations plus what it imports),
 * reporting duplicate definitions, names a module does not have, and misplaced primitives.
 * Names inside component bodies are flow-sensitive (rebinding) and resolved by the checker.
 */
import type {
  ComponentDecl,
  ConstDecl,
  EnumDecl,
  Ident,
  TasksDecl,
  TrainDecl,
} from "../../grammar/ast.js";
import { type Diagnostic, diagnostic, suggest } from "../diagnostics.js";
import type { LoadedModule, ModuleGraph } from "./load-modules.js";

/** A top-level declaration, wherever it was defined. */
export type GlobalDecl =
  | { kind: "component"; decl: ComponentDecl; file: string }
  | { kind: "tasks"; decl: TasksDecl; file: string }
  | { kind: "enum"; decl: EnumDecl; file: string }
  | { kind: "const"; decl: ConstDecl; file: string }
  | { kind: "train"; decl: TrainDecl; file: string };

/** A module's scope: local declarations and imports by the name they are visible under. */
export interface ModuleScope {
  module: LoadedModule;
  names: Map<string, GlobalDecl>;
  /** Names introduced by imports, with the span of the import (for unused-import warnings). */
  imported: Map<string, Ident>;
}

/** The resolved program: one scope per module. */
export interface ResolvedProgram {
  graph: ModuleGraph;
  scopes: Map<string, ModuleScope>;
}

function declName(d: GlobalDecl): Ident {
  return d.decl.name;
}

export function resolveNames(graph: ModuleGraph, diagnostics: Diagnostic[]): ResolvedProgram {
  const scopes = new Map<string, ModuleScope>();
  // Own declarations first, so imports can refer to any module's exports.
  for (const mod of graph.modules.values()) {
    const names = new Map<string, GlobalDecl>();
    for (const item of mod.ast.items) {
      let d: GlobalDecl | undefined;
      switch (item.kind) {
        case "ComponentDecl":
          d = { kind: "component", decl: item, file: mod.file };
          if (item.form === "primitive" && !mod.isStdlib) {
            diagnostics.push(
              diagnostic(
                "E0208",
                mod.file,
                item.name.span,
                `\`primitive ${item.name.name}\` outside the standard library`,
                { hint: "primitives are implemented by the compiler; write a `block` instead" },
              ),
            );
          }
          break;
        case "TasksDecl":
          d = { kind: "tasks", decl: item, file: mod.file };
          reportDuplicateMembers(item.members, mod.file, "task", diagnostics);
          break;
        case "EnumDecl":
          d = { kind: "enum", decl: item, file: mod.file };
          reportDuplicateMembers(item.members, mod.file, "enum member", diagnostics);
          break;
        case "ConstDecl":
          d = { kind: "const", decl: item, file: mod.file };
          break;
        case "TrainDecl":
          d = { kind: "train", decl: item, file: mod.file };
          break;
        case "ImportDecl":
          break;
      }
      if (d) define(names, d, mod.file, diagnostics);
    }
    scopes.set(mod.file, { module: mod, names, imported: new Map() });
  }
  for (const scope of scopes.values()) {
    const mod = scope.module;
    for (const [decl, target] of mod.importTargets) {
      const source = scopes.get(target);
      if (!source) continue;
      for (const imp of decl.names) {
        const found = source.names.get(imp.name.name);
        // Only a module's own declarations are exported, not what it imported.
        if (!found || found.file !== target) {
          const own = [...source.names.entries()].filter(([, g]) => g.file === target);
          const close = suggest(
            imp.name.name,
            own.map(([n]) => n),
          );
          diagnostics.push(
            diagnostic(
              "E0204",
              mod.file,
              imp.name.span,
              `\`${imp.name.name}\` is not declared in ${describeModule(decl.module)}`,
              {
                hint: close
                  ? `did you mean \`${close}\`?`
                  : `it declares ${
                      own
                        .map(([n]) => n)
                        .slice(0, 12)
                        .join(", ") || "nothing"
                    }`,
              },
            ),
          );
          continue;
        }
        const local = imp.alias ?? imp.name;
        const existing = scope.names.get(local.name);
        if (existing) {
          diagnostics.push(
            diagnostic("E0202", mod.file, local.span, `\`${local.name}\` is already defined`, {
              related: [
                { file: existing.file, span: declName(existing).span, message: "defined here" },
              ],
              hint: `import it under another name: \`${imp.name.name} as Other\``,
            }),
          );
          continue;
        }
        scope.names.set(local.name, found);
        scope.imported.set(local.name, local);
      }
    }
  }
  return { graph, scopes };
}

function describeModule(
  m: { kind: "std"; parts: Ident[] } | { kind: "file"; path: string },
): string {
  return m.kind === "std" ? `\`${m.parts.map((p) => p.name).join(".")}\`` : `"${m.path}"`;
}

function define(
  names: Map<string, GlobalDecl>,
  d: GlobalDecl,
  file: string,
  diagnostics: Diagnostic[],
): void {
  const name = declName(d);
  const existing = names.get(name.name);
  if (existing) {
    diagnostics.push(
      diagnostic("E0202", file, name.span, `\`${name.name}\` is defined twice`, {
        related: [
          { file: existing.file, span: declName(existing).span, message: "first defined here" },
        ],
        hint: "rename one of them",
      }),
    );
    return;
  }
  names.set(name.name, d);
}

function reportDuplicateMembers(
  members: Ident[],
  file: string,
  what: string,
  diagnostics: Diagnostic[],
): void {
  const seen = new Map<string, Ident>();
  for (const m of members) {
    const first = seen.get(m.name);
    if (first) {
      diagnostics.push(
        diagnostic("E0202", file, m.span, `${what} \`${m.name}\` is listed twice`, {
          related: [{ file, span: first.span, message: "first listed here" }],
        }),
      );
    } else seen.set(m.name, m);
  }
}
