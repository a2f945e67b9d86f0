/**
 * Incremental checking for the language server: after an edit inside one block's body, only
 * that block is checked again; the other bodies' results are reused by their text.
 *
 * The checker evaluates each body once, generically; a body's result depends on its own text
 * and on the *signatures* around it (every import, task set, enum and constant, and each
 * component's header, ports and top-level `param`s; a body's bindings are never read by
 * another body). So results are cached per body text, valid while those signatures (and every
 * other module) are unchanged, and the cached run is exactly `checkProgram`'s when at most one
 * body reports anything: then no diagnostic of one body can be deduplicated against another's,
 * and the warnings the checker holds back after an error depend on the body's own errors only.
 * In every other case (a header changed, two bodies with problems, problems outside the entry
 * file) `checkProgram` runs on everything.
 */
import type { ComponentDecl, Item, TrainDecl } from "../../grammar/ast.js";
import { checkProgram, guardDepth } from "../../compiler/check/check-program.js";
import type { Diagnostic } from "../../compiler/diagnostics.js";
import { Evaluator } from "../../compiler/check/evaluator.js";
import { STANDARD_LIBRARY } from "../../compiler/library/index.js";
import type { ModuleScope, ResolvedProgram } from "../../compiler/check/resolve-names.js";

type Body = ComponentDecl | TrainDecl;

interface BodyResult {
  /** Where the body started when it was checked (its diagnostics' spans are absolute). */
  start: number;
  diagnostics: Diagnostic[];
  /** Imported names the body uses (for unused-import warnings). */
  usedImports: Set<string>;
}

/** How the last check went, for benchmarks and tests. */
export interface CheckStats {
  full: number;
  incremental: number;
  /** Bodies checked by the last incremental run. */
  lastChecked: number;
}

export class CheckCache {
  private signatures: string[] = [];
  /** Diagnostics of the other modules at the last full check (only unused imports are allowed). */
  private otherModules: Diagnostic[] | undefined;
  private bodies = new Map<string, BodyResult>();
  /** Set by a full check: the per-body results are not known yet (see `warm`). */
  private cold = true;
  readonly stats: CheckStats = { full: 0, incremental: 0, lastChecked: 0 };

  /** Checks `program` with `entry` as the edited file, adding diagnostics as checkProgram does. */
  check(program: ResolvedProgram, entry: string, diagnostics: Diagnostic[]): void {
    const scope = program.scopes.get(entry);
    const signatures = scope ? signaturesOf(program, entry) : [];
    const sameSignatures =
      signatures.length === this.signatures.length &&
      signatures.every((s, i) => s === this.signatures[i]);
    this.signatures = signatures;
    // Results are valid only in the surroundings they were computed in.
    if (!sameSignatures) this.bodies = new Map();
    if (scope && sameSignatures && this.otherModules !== undefined) {
      const found = this.incremental(program, scope, entry, diagnostics);
      if (found) {
        diagnostics.push(...found, ...this.otherModules);
        this.stats.incremental++;
        return;
      }
    }
    this.full(program, entry, diagnostics);
  }

  private full(program: ResolvedProgram, entry: string, diagnostics: Diagnostic[]): void {
    const before = diagnostics.length;
    checkProgram(program, diagnostics, STANDARD_LIBRARY);
    this.stats.full++;
    this.cold = true;
    const added = diagnostics.slice(before);
    const others = added.filter((d) => d.file !== entry);
    // Bodies of other modules must be clean for the per-body run to be exact, and while two
    // bodies have problems it would only fall back here again.
    const items = program.scopes.get(entry)?.module.ast.items ?? [];
    const withProblems = new Set(
      added
        .filter((d) => d.file === entry && d.code !== "W0503")
        .map((d) =>
          items.findIndex((i) => i.span.start <= d.span.start && d.span.end <= i.span.end),
        ),
    );
    const usable =
      others.every((d) => d.code === "W0503") && withProblems.size <= 1 && !withProblems.has(-1);
    this.otherModules = usable ? others : undefined;
  }

  /** Whether `warm` has work to do. */
  get needsWarmup(): boolean {
    return this.cold && this.otherModules !== undefined;
  }

  /**
   * After a full check, checks every body on its own ahead of the next edit (the server does
   * this when idle), so that edit only re-checks the body it touched.
   */
  warm(program: ResolvedProgram, entry: string): void {
    const scope = program.scopes.get(entry);
    if (!this.needsWarmup || !scope) return;
    const signatures = signaturesOf(program, entry);
    if (signatures.length !== this.signatures.length) return;
    if (!signatures.every((s, i) => s === this.signatures[i])) return;
    this.incremental(program, scope, entry);
    this.cold = false;
  }

  /** The per-body run, or undefined when it would not be exactly checkProgram's. */
  private incremental(
    program: ResolvedProgram,
    scope: ModuleScope,
    entry: string,
    earlier: readonly Diagnostic[] = [],
  ): Diagnostic[] | undefined {
    const text = scope.module.text;
    const allImported = new Map(scope.imported);
    const next = new Map<string, BodyResult>();
    const results: BodyResult[] = [];
    let checked = 0;
    for (const item of scope.module.ast.items) {
      if (item.kind !== "ComponentDecl" && item.kind !== "TrainDecl") continue;
      const key = text.slice(item.span.start, item.span.end);
      let r = this.bodies.get(key);
      // A result with diagnostics carries absolute spans: reused only where it was.
      if (!r || (r.diagnostics.length > 0 && r.start !== item.span.start)) {
        r = checkBody(program, scope, allImported, item, entry);
        checked++;
      }
      next.set(key, r);
      results.push(r);
    }
    this.bodies = next;
    this.cold = false;
    scope.imported.clear();
    for (const [k, v] of allImported) scope.imported.set(k, v);
    if (results.filter((r) => r.diagnostics.length > 0).length > 1) return undefined;
    this.stats.lastChecked = checked;
    const out: Diagnostic[] = [];
    const used = new Set<string>();
    for (const r of results) {
      out.push(...r.diagnostics);
      for (const n of r.usedImports) used.add(n);
    }
    // As checkProgram: imported names no body used, in import order, unless the file has an
    // error (from an earlier phase or a body), which may have hidden a use.
    const hasError = [...earlier, ...out].some((d) => d.severity === "error" && d.file === entry);
    if (!scope.module.isStdlib && !hasError) {
      for (const [name, ident] of allImported) {
        if (used.has(name)) continue;
        out.push({
          code: "W0503",
          severity: "warning",
          message: `\`${name}\` is imported but never used`,
          file: entry,
          span: ident.span,
          hint: "remove it from the import list",
        });
      }
    }
    for (const name of used) scope.imported.delete(name);
    return out;
  }
}

function checkBody(
  program: ResolvedProgram,
  scope: ModuleScope,
  allImported: Map<string, unknown>,
  item: Body,
  file: string,
): BodyResult {
  // Each body sees every import as unused, so its own uses are what it deletes.
  scope.imported.clear();
  for (const [k, v] of allImported) scope.imported.set(k, v as never);
  const diagnostics: Diagnostic[] = [];
  const evaluator = new Evaluator(program, diagnostics, "check", STANDARD_LIBRARY);
  guardDepth(diagnostics, file, item.span, () => {
    if (item.kind === "ComponentDecl") evaluator.checkComponent(item, file);
    else evaluator.checkTrain(item, file);
  });
  const usedImports = new Set<string>();
  for (const k of allImported.keys()) if (!scope.imported.has(k)) usedImports.add(k);
  return { start: item.span.start, diagnostics, usedImports };
}

/**
 * What the bodies of `entry` can see of their surroundings: every other module's text, and the
 * entry's items without their bodies' statements (headers, ports, top-level `param`s kept).
 */
function signaturesOf(program: ResolvedProgram, entry: string): string[] {
  const out: string[] = [];
  for (const [file, s] of program.scopes) {
    if (file !== entry) out.push(file, s.module.text);
  }
  const mod = program.scopes.get(entry)!.module;
  for (const item of mod.ast.items) out.push(signature(mod.text, item));
  return out;
}

function signature(text: string, item: Item): string {
  if (item.kind !== "ComponentDecl" && item.kind !== "TrainDecl") {
    return text.slice(item.span.start, item.span.end);
  }
  const first = item.body[0];
  let sig = text.slice(item.span.start, first ? first.span.start : item.span.end);
  for (const s of item.body) {
    if (s.kind === "PortDecl" || s.kind === "WeightDecl")
      sig += "\n" + text.slice(s.span.start, s.span.end);
  }
  return sig;
}
