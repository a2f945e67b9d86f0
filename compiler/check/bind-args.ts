/**
 * Matching call arguments to declared parameters (positional, then named), shared by
 * component construction and builtin calls.
 */
import type { Arg, Span } from "../../grammar/ast.js";
import { type Diagnostic, diagnostic, suggest } from "../diagnostics.js";

/** A parameter as far as argument matching cares. */
export interface ParamShape {
  name: string;
  required: boolean;
}

/** Arguments by parameter name; parameters with no argument are absent. */
export type BoundArgs = Map<string, Arg>;

export function bindArgs(
  callee: string,
  params: readonly ParamShape[],
  args: readonly Arg[],
  callSpan: Span,
  file: string,
  diagnostics: Diagnostic[],
): BoundArgs {
  const bound: BoundArgs = new Map();
  let positional = 0;
  let sawNamed = false;
  const misspelt = new Set<string>();
  for (const arg of args) {
    if (arg.name === undefined) {
      if (sawNamed) {
        diagnostics.push(
          diagnostic("E0305", file, arg.span, `positional argument after a named one`, {
            hint: "put positional arguments first",
          }),
        );
        continue;
      }
      const p = params[positional++];
      if (!p) {
        diagnostics.push(
          diagnostic(
            "E0305",
            file,
            arg.span,
            `${callee} takes ${params.length} argument${params.length === 1 ? "" : "s"}, found more`,
            {
              hint: params.length
                ? `its parameters are (${params.map((q) => q.name).join(", ")})`
                : `${callee} takes no arguments`,
            },
          ),
        );
        continue;
      }
      bound.set(p.name, arg);
      continue;
    }
    sawNamed = true;
    const name = arg.name.name;
    const p = params.find((q) => q.name === name);
    if (!p) {
      const close = suggest(
        name,
        params.map((q) => q.name),
      );
      if (close !== undefined) misspelt.add(close);
      diagnostics.push(
        diagnostic("E0306", file, arg.name.span, `${callee} has no parameter \`${name}\``, {
          hint: close
            ? `did you mean \`${close}\`?`
            : `its parameters are (${params.map((q) => q.name).join(", ")})`,
        }),
      );
      continue;
    }
    if (bound.has(name)) {
      diagnostics.push(
        diagnostic("E0308", file, arg.span, `argument \`${name}\` is given twice`, {
          related: [{ file, span: bound.get(name)!.span, message: "first given here" }],
        }),
      );
      continue;
    }
    bound.set(name, arg);
  }
  // A misspelt name already reported as unknown stands for the parameter it resembles.
  const missing = params.filter((p) => p.required && !bound.has(p.name) && !misspelt.has(p.name));
  if (missing.length > 0) {
    diagnostics.push(
      diagnostic(
        "E0307",
        file,
        callSpan,
        `${callee} is missing ${missing.map((p) => `\`${p.name}\``).join(", ")}`,
        { hint: `pass ${missing.map((p) => `${p.name}: ...`).join(", ")}` },
      ),
    );
  }
  return bound;
}
