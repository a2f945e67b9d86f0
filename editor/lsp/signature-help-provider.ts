/**
 * Signature help inside a call: a component's constructor parameters (as written, with
 * defaults and their doc comments), a builtin's signature, or an instance's input ports; the
 * active parameter follows the comma count or the name of a named argument.
 */
import type {
  ParameterInformation,
  SignatureHelp,
  SignatureInformation,
} from "vscode-languageserver/node";
import { BUILTINS } from "../../compiler/check/builtins.js";
import { allStatements } from "./ast-walk.js";
import { CompletionContext } from "./completion-provider.js";
import { paramText, sourceText, tensorText } from "./symbol-text.js";
import { WORD_BEFORE, innermostOpen, lastTopLevelComma } from "./text-context.js";
import type { DocumentView } from "./workspace.js";

export function signatureHelp(view: DocumentView, offset: number): SignatureHelp | null {
  const text = view.document.text;
  const open = innermostOpen(text, offset);
  if (open?.char !== "(") return null;
  const callee = WORD_BEFORE.exec(text.slice(0, open.index).trimEnd())?.[0];
  if (!callee) return null;
  const args = text.slice(open.index + 1, offset);
  const commas = countTopLevelCommas(args);
  const segment = args.slice(lastTopLevelComma(args) + 1);
  const named = /^\s*([\p{L}_][\p{L}\p{M}\p{Nd}_]*)\s*:/u.exec(segment)?.[1];
  const ctx = new CompletionContext(view, open.index);

  const c = ctx.findComponent(callee);
  if (c) {
    const params = c.decl.params.map((p) => paramText(c.text, p));
    const sig = signature(callee, params);
    if (c.decl.doc) sig.documentation = { kind: "markdown", value: c.decl.doc };
    c.decl.params.forEach((p, i) => {
      if (p.doc) sig.parameters![i]!.documentation = { kind: "markdown", value: p.doc };
    });
    const byName = named ? c.decl.params.findIndex((p) => p.name.name === named) : -1;
    return {
      signatures: [sig],
      activeSignature: 0,
      activeParameter: byName >= 0 ? byName : commas,
    };
  }
  const b = BUILTINS.get(callee);
  if (b) {
    const sig: SignatureInformation = { label: b.signature, documentation: b.doc, parameters: [] };
    let from = b.signature.indexOf("(") + 1;
    for (const p of b.params) {
      const at = b.signature.indexOf(p.name, from);
      if (at < 0) continue;
      const end = b.signature.slice(at).search(/[,)]/);
      const label: [number, number] = [at, end < 0 ? b.signature.length : at + end];
      sig.parameters!.push({ label });
      from = label[1];
    }
    const byName = named ? b.params.findIndex((p) => p.name === named) : -1;
    return {
      signatures: [sig],
      activeSignature: 0,
      activeParameter: byName >= 0 ? byName : commas,
    };
  }
  // Applying an instance: its input ports.
  const body = ctx.body;
  if (!body) return null;
  const a = view.analysis;
  const bt = a.bodyTypes(view.file, body);
  for (const s of allStatements(body.body)) {
    if (s.kind !== "Binding" || s.target.name !== callee || s.span.start > ctx.at) continue;
    const v = bt.types.get(s.value);
    if (v?.k !== "instance" || v.inst.role !== "module") continue;
    const inst = v.inst;
    const params = inst.inputs.map((p) => `${p.name}: ${tensorText(p.type, bt.unifier)}`);
    if (inst.perTask !== undefined) params.push(`task: ${inst.perTask}[...]`);
    const outs = inst.outputs.map((p) => tensorText(p.type, bt.unifier));
    const sig = signature(callee, params, outs.length === 1 ? outs[0] : `(${outs.join(", ")})`);
    sig.documentation = `instance of ${inst.component}${declText(a.textOf(inst.declFile), inst.decl.span)}`;
    return { signatures: [sig], activeSignature: 0, activeParameter: commas };
  }
  return null;
}

function declText(text: string | undefined, span: { start: number; end: number }): string {
  if (!text) return "";
  const header = sourceText(text, span).split("{")[0]!.trim();
  return header ? ` (${header})` : "";
}

function signature(name: string, params: string[], result?: string): SignatureInformation {
  let label = `${name}(`;
  const parameters: ParameterInformation[] = [];
  params.forEach((p, i) => {
    if (i > 0) label += ", ";
    parameters.push({ label: [label.length, label.length + p.length] });
    label += p;
  });
  label += ")";
  if (result) label += ` -> ${result}`;
  return { label, parameters };
}

function countTopLevelCommas(args: string): number {
  let depth = 0;
  let n = 0;
  for (const c of args) {
    if (c === "(" || c === "[" || c === "{") depth++;
    else if (c === ")" || c === "]" || c === "}") depth--;
    else if (c === "," && depth === 0) n++;
  }
  return n;
}
