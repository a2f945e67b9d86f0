// Hover of a training program's `loss` through the protocol, from the real server process: the
// formula, each term with its kind, the program parameters it reads, and the MoE auxiliary
// terms of the trainable layers, read from the routers' options in the checked program.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Hover } from "vscode-languageserver";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LspClient, fileUri, positionOf } from "./lsp-client.js";

const MAIN = `import std.nn { Embedding, Linear, FFN }
import std.route { MoE, TopK }
import std.optim { AdamW }

model Student() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 5]
  out hidden: f32[B, T, 8]
  embed = Embedding(11, 8)
  moe = MoE(router: TopK(k: 1, balance: 0.02, z_loss: 0.001), experts: [FFN(8, 16); 4])
  plain = MoE(router: TopK(k: 1), experts: [FFN(8, 16); 2])
  head = Linear(8, 5)
  hidden = plain(moe(embed(tokens)))
  logits = head(hidden)
}

model Teacher() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 5]
  out hidden: f32[B, T, 8]
  embed = Embedding(11, 8)
  moe = MoE(router: TopK(k: 2, balance: 0.5), experts: [FFN(8, 16); 3])
  head = Linear(8, 5)
  hidden = moe(embed(tokens))
  logits = head(hidden)
}

train Distill(alpha: Float = 0.25, temperature: Float = 2.0) {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  student = Student()
  teacher = frozen Teacher()
  s = student(tokens)
  t = teacher(tokens)
  ce = cross_entropy(s.logits, labels)
  kd = distill(s.logits, [t.logits], temperature: temperature)
  match = mse(s.hidden, t.hidden)
  soft = (1.0 - alpha) * kd
  loss = alpha * ce + soft + 0.1 * match
  optimizer = AdamW()
}

train Plain() {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = Teacher()
  loss = cross_entropy(net(tokens).logits, labels)
  optimizer = AdamW()
}
`;

let client: LspClient;
let dir: string;
let uri: string;

beforeAll(async () => {
  dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "moec-lsp-loss-")));
  const file = path.join(dir, "distill.moe");
  uri = fileUri(file);
  fs.writeFileSync(file, MAIN);
  client = await LspClient.start({ rootDir: dir });
  await client.open(uri, MAIN);
  await client.waitForDiagnostics(uri);
}, 60_000);
afterAll(async () => {
  await client.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function hoverAt(needle: string, delta = 0, n = 0) {
  const h = await client.request<Hover | null>("textDocument/hover", {
    textDocument: { uri },
    position: positionOf(MAIN, needle, delta, n),
  });
  return h ? (h.contents as { value: string }).value : null;
}

describe("hover of a train program's loss", () => {
  it("expands the formula through the bindings into terms with their kinds", async () => {
    const v = await hoverAt("loss = alpha");
    expect(v).not.toBeNull();
    const [type, terms, aux] = v!.split("\n\n");
    expect(type).toBe("```moe\nloss: f32[]\n```");
    expect(terms!.split("\n")).toEqual([
      // Parentheses only where the precedence needs them; · for *, − for -.
      "**loss** = `alpha·ce + soft + 0.1·match`",
      "- `ce`: **cross_entropy** (mean over positions of −log p(label)) — `cross_entropy(s.logits, labels)`",
      // A binding that combines terms is shown and expanded in turn.
      "- `soft` = `(1.0 − alpha)·kd`",
      "- `kd`: **distill** (τ²·KL(teachers' mix ‖ student)) — `distill(s.logits, [t.logits], temperature: temperature)`",
      "- `match`: **mse** (mean squared error) — `mse(s.hidden, t.hidden)`",
      "- `alpha`: parameter, default `0.25`",
    ]);
    // The routers' options: the student's two layers (one asks for both terms, one for none);
    // the frozen teacher's layer adds nothing although its router asks for a balance loss.
    expect(aux!.split("\n")).toEqual([
      "**MoE auxiliary terms**, added to `loss`:",
      "- `student.moe` (TopK): balance 0.02·E·Σₑ fₑ·Pₑ (E = 4) + z-loss 0.001·mean(logsumexp(logits)²)",
      "- 1 more MoE layer without `balance` or `z_loss`",
      "- 1 frozen MoE layer adds none (a teacher's)",
    ]);
  });

  it("lists an inline loss call, and the same layer's terms once it trains", async () => {
    const v = await hoverAt("loss = cross");
    expect(v!.split("\n\n").slice(1)).toEqual([
      "**loss** = `cross_entropy(…)`\n- `cross_entropy(net(tokens).logits, labels)`: **cross_entropy** (mean over positions of −log p(label))",
      "**MoE auxiliary terms**, added to `loss`:\n- `net.moe` (TopK): balance 0.5·E·Σₑ fₑ·Pₑ (E = 3)",
    ]);
  });

  it("shows only the type for the program's other bindings", async () => {
    expect(await hoverAt("soft =")).toBe("```moe\nsoft: f32[]\n```");
  });
});
