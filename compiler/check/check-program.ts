/**
 * Pass 3: check every block, model and training program generically: types, symbolic shapes,
 * argument lists, expert signatures and task sets. Each component is checked once, with its
 * constructor parameters as symbols, so an error is reported where it is written.
 */
import type { Span } from "../../grammar/ast.js";
import { type Diagnostic, diagnostic } from "../diagnostics.js";
import { Evaluator } from "./evaluator.js";
import type { PrimitiveLibrary } from "./primitive-rule.js";
import type { ResolvedProgram } from "./resolve-names.js";

/** The checker's result: the evaluator keeps the type of every expression (for hovers). */
export interface CheckedProgram {
  program: ResolvedProgram;
  evaluator: Evaluator;
}

export function checkProgram(
  program: ResolvedProgram,
  diagnostics: Diagnostic[],
  library: PrimitiveLibrary,
): CheckedProgram {
  const evaluator = new Evaluator(program, diagnostics, "check", library);
  for (const scope of program.scopes.values()) {
    for (const item of scope.module.ast.items) {
      guardDepth(diagnostics, scope.module.file, item.span, () => {
        if (item.kind === "ComponentDecl") evaluator.checkComponent(item, scope.module.file);
        else if (item.kind === "TrainDecl") evaluator.checkTrain(item, scope.module.file);
      });
    }
  }
  // An error stops the evaluation of the expression it is in, so names used there were never
  // looked up: a file with errors gets no unused-import warnings, which would be false ones.
  const withErrors = new Set(diagnostics.filter((d) => d.severity === "error").map((d) => d.file));
  for (const scope of program.scopes.values()) {
    if (scope.module.isStdlib || withErrors.has(scope.module.file)) continue;
    for (const [name, ident] of scope.imported) {
      diagnostics.push({
        code: "W0503",
        severity: "warning",
        message: `\`${name}\` is imported but never used`,
        file: scope.module.file,
        span: ident.span,
        hint: "remove it from the import list",
      });
    }
  }
  return { program, evaluator };
}

/**
 * Runs `f`, turning a stack overflow (an expression nested hundreds of thousands deep, which
 * the parser accepts as a flat chain) into a diagnostic instead of a crash.
 */
export function guardDepth(
  diagnostics: Diagnostic[],
  file: string,
  span: Span,
  f: () => void,
): void {
  try {
    f();
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
    diagnostics.push(
      diagnostic("E0105", file, span, "this declaration is nested too deeply to check", {
        hint: "split long expressions into several bindings",
      }),
    );
  }
}
