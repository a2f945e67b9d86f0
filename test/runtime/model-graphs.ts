// IR graphs shaped like what lowering produces from stdlib/nn.moe, for fusion and GPU tests.
import { IrBuilder } from "../../compiler/ir/builder.js";

/** y = x @ transpose(weight) + bias, as std.nn.Linear lowers. */
export function linear(
  b: IrBuilder,
  x: number,
  inF: number,
  outF: number,
  name: string,
  bias = true,
): number {
  const w = b.param(`${name}.weight`, [outF, inF], true, "normal(0.02)");
  let y = b.matmul(x, b.permute(w, [1, 0]));
  if (bias) y = b.binary("add", y, b.param(`${name}.bias`, [outF], true, "zeros"));
  return y;
}

/** std.nn.LayerNorm: centered · rsqrt(mean(centered²) + eps) · weight + bias. */
export function layerNorm(b: IrBuilder, x: number, d: number, name: string, eps = 1e-5): number {
  const mean = b.reduce("mean", x, -1, true);
  const centered = b.binary("sub", x, mean);
  const variance = b.reduce("mean", b.binary("mul", centered, centered), -1, true);
  const y = b.binary("mul", centered, b.unary("rsqrt", b.binary("add", variance, b.constant(eps))));
  const w = b.param(`${name}.weight`, [d], true, "ones");
  const bias = b.param(`${name}.bias`, [d], true, "zeros");
  return b.binary("add", b.binary("mul", y, w), bias);
}

/** std.nn.Attention (causal), x: [B, T, d]. */
export function attention(
  b: IrBuilder,
  x: number,
  B: number,
  T: number,
  d: number,
  heads: number,
  name: string,
): number {
  const hd = d / heads;
  const split = (t: number) => b.permute(b.reshape(t, [B, T, heads, hd]), [0, 2, 1, 3]);
  const q = split(linear(b, x, d, d, `${name}.q`));
  const k = split(linear(b, x, d, d, `${name}.k`));
  const v = split(linear(b, x, d, d, `${name}.v`));
  const scores = b.binary(
    "mul",
    b.matmul(q, b.permute(k, [0, 1, 3, 2])),
    b.constant(1 / Math.sqrt(hd)),
  );
  const p = b.softmax(b.causalMask(scores));
  const mixed = b.permute(b.matmul(p, v), [0, 2, 1, 3]);
  return linear(b, b.reshape(mixed, [B, T, d]), d, d, `${name}.o`);
}

/** std.nn.TransformerBlock: pre-norm, causal attention, GELU MLP. */
export function transformerBlock(
  b: IrBuilder,
  x: number,
  B: number,
  T: number,
  d: number,
  heads: number,
  hidden: number,
  name = "block",
): number {
  const h = b.binary(
    "add",
    x,
    attention(b, layerNorm(b, x, d, `${name}.ln_1`), B, T, d, heads, `${name}.attn`),
  );
  const up = b.unary(
    "gelu",
    linear(b, layerNorm(b, h, d, `${name}.ln_2`), d, hidden, `${name}.mlp.up`),
  );
  return b.binary("add", h, linear(b, up, hidden, d, `${name}.mlp.down`));
}

export function transformerBlockGraph(
  B: number,
  T: number,
  d: number,
  heads: number,
  hidden: number,
) {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [B, T, d]);
  b.output("y", transformerBlock(b, x, B, T, d, heads, hidden));
  return b.finish();
}
