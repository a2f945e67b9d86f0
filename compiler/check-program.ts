/**
 * Pass 3: check every block, model and training program generically: types, symbolic shapes,
 * argument lists, expert signatures and task sets. Each component is checked once, with its
 * constructor parameters as symbols, so an error is reported where it is written.
 */
import type { Diagnostic } from "./diagnostics.js";
import { Evaluator } from "./evaluator.js";
import type { ResolvedProgram } from "./resolve-names.js";

/** The checker's result: the evaluator keeps the type of every expression (for hovers). */
export interface CheckedProgram {
  program: ResolvedProgram;
  evaluator: Evaluator;
}

export function checkProgram(program: ResolvedProgram, diagnostics: Diagnostic[]): CheckedProgram {
  const evaluator = new Evaluator(program, diagnostics, "check");
  for (const scope of program.scopes.values()) {
    for (const item of scope.module.ast.items) {
      if (item.kind === "ComponentDecl") evaluator.checkComponent(item, scope.module.file);
      else if (item.kind === "TrainDecl") evaluator.checkTrain(item, scope.module.file);
    }
  }
  for (const scope of program.scopes.values()) {
    if (scope.module.isStdlib) continue;
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
