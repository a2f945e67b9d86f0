/**
 * The hover of a training program's `loss`: its formula as written (`alpha·ce + (1 −
 * alpha)·kd + qa`), each term it reaches through the program's bindings with its kind
 * (cross_entropy, distill, mse), the program parameters it reads, and the auxiliary terms the
 * trainable MoE layers add (balance, z-loss), read from the routers' options in the checked
 * program (the elaborated MoE records), not from lowering: the server opens no device and
 * builds no IR.
 */
import type { Binding, Expr, TrainDecl } from "../../grammar/ast.js";
import type { EditorAnalysis } from "./analysis.js";
import { sourceText } from "./symbol-text.js";

/** The loss builtins, and what each computes (docs/training.md). */
const LOSS_KINDS: ReadonlyMap<string, string> = new Map([
  ["cross_entropy", "mean over positions of −log p(label)"],
  ["distill", "τ²·KL(teachers' mix ‖ student)"],
  ["mse", "mean squared error"],
]);

/** Binding strength of each binary operator, for parentheses in the rendered formula. */
const PRECEDENCE: Record<string, number> = {
  "==": 0,
  "!=": 0,
  "<": 0,
  "<=": 0,
  ">": 0,
  ">=": 0,
  "+": 1,
  "-": 1,
  "*": 2,
  "/": 2,
  "%": 2,
  "@": 2,
};
const SHOWN: Record<string, string> = { "*": "·", "-": "−" };

/** The markdown of the loss's terms, or undefined when the program has no `loss` binding. */
export function describeLoss(
  a: EditorAnalysis,
  train: TrainDecl,
  file: string,
): string | undefined {
  const text = a.textOf(file) ?? "";
  const bindings = train.body.filter((s): s is Binding => s.kind === "Binding");
  // The program's loss is its last top-level `loss` binding (an earlier one may be rebound).
  const loss = bindings.filter((b) => b.target.name === "loss").pop();
  if (!loss) return undefined;
  const src = (e: Expr) => sourceText(text, e.span);
  /** The binding of `name` that an expression at `offset` reads: the last one before it. */
  const bindingOf = (name: string, offset: number) =>
    bindings.filter((b) => b.target.name === name && b.span.end <= offset).pop();

  const terms: string[] = [];
  const params: string[] = [];
  const seen = new Set<Binding | Expr>();
  const termLine = (label: string, call: Expr & { kind: "CallExpr" }) => {
    const name = call.callee.kind === "NameExpr" ? call.callee.name.name : src(call.callee);
    const what = LOSS_KINDS.get(name);
    return `- \`${label}\`: **${name}**${what ? ` (${what})` : ""}${label === src(call) ? "" : ` — \`${src(call)}\``}`;
  };
  const walk = (e: Expr): void => {
    switch (e.kind) {
      case "NameExpr": {
        const name = e.name.name;
        const b = bindingOf(name, e.span.start);
        if (b) {
          if (seen.has(b)) return;
          seen.add(b);
          const v = b.value;
          if (v.kind === "CallExpr") terms.push(termLine(name, v));
          else if (v.kind === "BinaryExpr" || v.kind === "UnaryExpr" || v.kind === "NameExpr") {
            terms.push(`- \`${name}\` = \`${render(v)}\``);
            walk(v);
          } else terms.push(`- \`${name}\` = \`${src(v)}\``);
          return;
        }
        const p = train.params.find((q) => q.name.name === name);
        if (p && !params.some((l) => l.startsWith(`- \`${name}\``)))
          params.push(
            `- \`${name}\`: parameter${p.default ? `, default \`${src(p.default)}\`` : ""}`,
          );
        return;
      }
      case "CallExpr":
        if (seen.has(e)) return;
        seen.add(e);
        terms.push(termLine(src(e), e));
        return;
      case "BinaryExpr":
        walk(e.left);
        walk(e.right);
        return;
      case "UnaryExpr":
        walk(e.operand);
        return;
      default:
        return;
    }
  };
  /** The expression with · and −, calls shortened to `name(…)`, parentheses where needed. */
  const render = (e: Expr): string => {
    switch (e.kind) {
      case "BinaryExpr": {
        const p = PRECEDENCE[e.op] ?? 0;
        const side = (x: Expr, right: boolean) => {
          const inner = x.kind === "BinaryExpr" ? (PRECEDENCE[x.op] ?? 0) : 9;
          const wrap = inner < p || (right && inner === p && (e.op === "-" || e.op === "/"));
          return wrap ? `(${render(x)})` : render(x);
        };
        const op = SHOWN[e.op] ?? e.op;
        const gap = op === "·" ? "" : " ";
        return `${side(e.left, false)}${gap}${op}${gap}${side(e.right, true)}`;
      }
      case "UnaryExpr": {
        const inner = render(e.operand);
        return `${e.op === "-" ? "−" : e.op}${e.operand.kind === "BinaryExpr" ? `(${inner})` : inner}`;
      }
      case "CallExpr":
        return `${src(e.callee)}(…)`;
      default:
        return src(e);
    }
  };

  walk(loss.value);
  const lines = [`**loss** = \`${render(loss.value)}\``];
  lines.push(...terms, ...params);
  lines.push(...auxLines(a, train, file));
  return lines.join("\n");
}

/** The MoE auxiliary terms `moec train` adds to the loss (trainable layers only). */
function auxLines(a: EditorAnalysis, train: TrainDecl, file: string): string[] {
  const model = a.trainModel(train, file);
  if (!model || model.moes.length === 0) return [];
  // A layer trains its router when the router's parameters train (a teacher's do not).
  const trainable = (path: string) =>
    model.params.some((p) => p.path.startsWith(`${path}.router.`) && p.trainable);
  const layers = model.moes.filter((m) => trainable(m.path));
  const asking = layers.filter((m) => m.balance > 0 || m.zLoss > 0);
  const lines = ["", "**MoE auxiliary terms**, added to `loss`:"];
  for (const m of asking) {
    const parts: string[] = [];
    if (m.balance > 0) parts.push(`balance ${m.balance}·E·Σₑ fₑ·Pₑ (E = ${m.experts.length})`);
    if (m.zLoss > 0) parts.push(`z-loss ${m.zLoss}·mean(logsumexp(logits)²)`);
    lines.push(`- \`${m.path}\` (${m.router}): ${parts.join(" + ")}`);
  }
  const quiet = layers.length - asking.length;
  if (asking.length === 0)
    lines.push(`- none: no trainable router asks for \`balance\` or \`z_loss\``);
  else if (quiet > 0)
    lines.push(
      `- ${quiet} more MoE layer${quiet > 1 ? "s" : ""} without \`balance\` or \`z_loss\``,
    );
  const frozen = model.moes.length - layers.length;
  if (frozen > 0)
    lines.push(`- ${frozen} frozen MoE layer${frozen > 1 ? "s add" : " adds"} none (a teacher's)`);
  return lines;
}
