/**
 * Pass 1: parse the entry files and everything they import (`std.*` from stdlib/, relative
 * `.moe` files), and report unreadable modules and import cycles. Pure over a file-system view.
 */
import * as path from "node:path";
import type { Comment, ImportDecl, SourceFile } from "../../grammar/ast.js";
import type { ParseResult } from "../../grammar/parse.js";
import { parseSource } from "../../grammar/parse.js";
import { type Diagnostic, diagnostic, suggest } from "../diagnostics.js";

/** What the front end may read. The language server passes open editor buffers through this. */
export interface FileSystemView {
  /** The text of a file, or undefined when it does not exist or cannot be read. */
  readFile(file: string): string | undefined;
  /** Absolute path of the standard library folder. */
  stdlibDir: string;
  /** Names of the standard library modules (`nn`, `route`, ...), for suggestions. */
  stdlibModules(): string[];
}

/** One parsed module. */
export interface LoadedModule {
  file: string;
  text: string;
  ast: SourceFile;
  comments: Comment[];
  isStdlib: boolean;
  /** For each import declaration (by index in `ast.items`), the file it resolved to. */
  importTargets: Map<ImportDecl, string>;
}

/** Every module reachable from the entry files. */
export interface ModuleGraph {
  entries: string[];
  modules: Map<string, LoadedModule>;
}

export function stdModulePath(fsView: FileSystemView, parts: string[]): string {
  return path.join(fsView.stdlibDir, ...parts.slice(1)) + ".moe";
}

/** How a module's text becomes an AST: `parseSource`, or a cache of it (the language server's). */
export type ParseFunction = (text: string, file: string) => ParseResult;

export function loadModules(
  entries: readonly string[],
  fsView: FileSystemView,
  diagnostics: Diagnostic[],
  parse: ParseFunction = parseSource,
): ModuleGraph {
  const modules = new Map<string, LoadedModule>();
  const stdlibDir = path.resolve(fsView.stdlibDir);

  const load = (file: string, text: string): LoadedModule => {
    const parsed = parse(text, file);
    diagnostics.push(...parsed.diagnostics);
    const mod: LoadedModule = {
      file,
      text,
      ast: parsed.file,
      comments: parsed.comments,
      isStdlib: path.resolve(file).startsWith(stdlibDir + path.sep),
      importTargets: new Map(),
    };
    modules.set(file, mod);
    return mod;
  };

  const visit = (mod: LoadedModule): void => {
    for (const item of mod.ast.items) {
      if (item.kind !== "ImportDecl") continue;
      const target = resolveImport(item, mod, fsView, diagnostics);
      if (target === undefined) continue;
      mod.importTargets.set(item, target);
      if (modules.has(target)) continue;
      const text = fsView.readFile(target);
      if (text === undefined) {
        if (item.module.kind === "file") {
          diagnostics.push(
            diagnostic("E0206", mod.file, item.module.span, `cannot read \`${item.module.path}\``, {
              hint: `the path is relative to the folder of ${path.basename(mod.file)}`,
            }),
          );
        }
        continue;
      }
      visit(load(target, text));
    }
  };

  for (const entry of entries) {
    if (modules.has(entry)) continue;
    const text = fsView.readFile(entry);
    if (text === undefined) continue; // the CLI reports unreadable entry files itself
    visit(load(entry, text));
  }
  reportCycles(modules, diagnostics);
  return { entries: [...entries], modules };
}

function resolveImport(
  decl: ImportDecl,
  mod: LoadedModule,
  fsView: FileSystemView,
  diagnostics: Diagnostic[],
): string | undefined {
  if (decl.module.kind === "file") {
    return path.resolve(path.dirname(mod.file), decl.module.path);
  }
  const parts = decl.module.parts.map((p) => p.name);
  const known = fsView.stdlibModules();
  if (parts[0] !== "std" || parts.length !== 2 || !known.includes(parts[1]!)) {
    const wanted = parts[parts.length - 1] ?? "";
    const close = suggest(wanted, known);
    diagnostics.push(
      diagnostic("E0203", mod.file, decl.module.span, `unknown module \`${parts.join(".")}\``, {
        hint: close
          ? `did you mean \`std.${close}\`?`
          : `the standard library has ${known.map((k) => `std.${k}`).join(", ")}; files are imported with a string path, e.g. import "../parts.moe" { Name }`,
      }),
    );
    return undefined;
  }
  return stdModulePath(fsView, parts);
}

function reportCycles(modules: Map<string, LoadedModule>, diagnostics: Diagnostic[]): void {
  const state = new Map<string, "active" | "done">();
  const stack: { file: string; via?: ImportDecl }[] = [];
  const reported = new Set<string>();
  const dfs = (file: string): void => {
    state.set(file, "active");
    const mod = modules.get(file);
    if (mod) {
      for (const [decl, target] of mod.importTargets) {
        if (!modules.has(target)) continue;
        const s = state.get(target);
        if (s === "active") {
          const start = stack.findIndex((f) => f.file === target);
          const cycle = [...stack.slice(start).map((f) => f.file), target];
          const key = [...new Set(cycle)].sort().join("|");
          if (!reported.has(key)) {
            reported.add(key);
            const names = cycle.map((f) => path.basename(f));
            diagnostics.push(
              diagnostic("E0205", file, decl.span, `import cycle: ${names.join(" → ")}`, {
                hint: "move the shared declarations into a module that both import",
              }),
            );
          }
        } else if (s === undefined) {
          stack.push({ file: target, via: decl });
          dfs(target);
          stack.pop();
        }
      }
    }
    state.set(file, "done");
  };
  for (const file of modules.keys()) {
    if (!state.has(file)) {
      stack.push({ file });
      dfs(file);
      stack.pop();
    }
  }
}
