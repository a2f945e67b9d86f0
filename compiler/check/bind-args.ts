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
      const close = suggestParam(
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

/**
 * Other frameworks' names for our parameters (PyTorch, Hugging Face, PEFT, Megatron, Switch),
 * each with the parameters it may mean, in order of preference: `top_k` is `k`.
 */
const ARGUMENT_ALIASES: ReadonlyMap<string, readonly string[]> = new Map([
  ["top_k", ["k"]],
  ["topk", ["k"]],
  ["num_experts_per_tok", ["k"]],
  ["experts_per_token", ["k"]],
  ["capacity_factor", ["capacity"]],
  ["expert_capacity", ["capacity"]],
  ["jitter", ["noise"]],
  ["router_jitter_noise", ["noise"]],
  ["jitter_noise", ["noise"]],
  ["aux_loss_coef", ["balance"]],
  ["router_aux_loss_coef", ["balance"]],
  ["load_balance", ["balance"]],
  ["load_balancing_loss", ["balance"]],
  ["router_z_loss_coef", ["z_loss"]],
  ["norm_topk_prob", ["renormalize"]],
  ["normalize", ["renormalize"]],
  ["tau", ["temperature"]],
  ["group_size", ["group"]],
  ["num_heads", ["heads"]],
  ["n_heads", ["heads"]],
  ["nhead", ["heads"]],
  ["num_attention_heads", ["heads"]],
  ["is_causal", ["causal"]],
  ["d_model", ["d", "dim"]],
  ["hidden_size", ["d", "dim", "hidden"]],
  ["embed_dim", ["d", "dim", "embedding_dim"]],
  ["d_ff", ["hidden"]],
  ["dim_feedforward", ["hidden"]],
  ["intermediate_size", ["hidden"]],
  ["ffn_dim", ["hidden"]],
  ["activation", ["act"]],
  ["hidden_act", ["act"]],
  ["act_fn", ["act"]],
  ["in_dim", ["in_features"]],
  ["input_dim", ["in_features"]],
  ["out_dim", ["out_features"]],
  ["output_dim", ["out_features"]],
  ["use_bias", ["bias"]],
  ["vocab_size", ["num_embeddings"]],
  ["epsilon", ["eps"]],
  ["layer_norm_eps", ["eps"]],
  ["rank", ["r"]],
  ["lora_r", ["r"]],
  ["target_modules", ["targets"]],
  ["learning_rate", ["lr"]],
  ["betas", ["beta1"]],
  ["max_grad_norm", ["max_norm"]],
  ["param_groups", ["groups"]],
]);

/**
 * "Did you mean" for a named argument: another framework's name for a parameter (alias table),
 * then a parameter whose name is a run of the argument's words (`capacity_factor`), then
 * the closest spelling.
 */
export function suggestParam(name: string, params: readonly string[]): string | undefined {
  const key = name.toLowerCase();
  const alias = ARGUMENT_ALIASES.get(key)?.find((p) => params.includes(p));
  if (alias !== undefined) return alias;
  const words = `_${key}_`;
  const within = params
    .filter((p) => p.length > 0 && words.includes(`_${p.toLowerCase()}_`))
    .sort((a, b) => b.length - a.length)[0];
  return within ?? suggest(name, params);
}
