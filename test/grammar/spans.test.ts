/** Every node's span lies inside its parent's span and inside the text. */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parseSource } from "../../grammar/parse.js";
import { walkSpans } from "./ast-print.js";

const root = fileURLToPath(new URL("../../", import.meta.url));

function moeFiles(dir: string): string[] {
  const abs = join(root, dir);
  if (!existsSync(abs)) return [];
  return readdirSync(abs).flatMap((name) => {
    const rel = join(dir, name);
    if (statSync(join(root, rel)).isDirectory()) return moeFiles(rel);
    return name.endsWith(".moe") ? [rel] : [];
  });
}

function checkSpans(text: string, label: string): number {
  const result = parseSource(text, label);
  let count = 0;
  walkSpans(result.file, (node, parent) => {
    count++;
    const where = `${label}: ${String(node["kind"] ?? "field")} ${node.span.start}-${node.span.end}`;
    expect(node.span.start, where).toBeGreaterThanOrEqual(0);
    expect(node.span.start, where).toBeLessThanOrEqual(node.span.end);
    expect(node.span.end, where).toBeLessThanOrEqual(text.length);
    if (parent !== undefined) {
      expect(node.span.start, where).toBeGreaterThanOrEqual(parent.span.start);
      expect(node.span.end, where).toBeLessThanOrEqual(parent.span.end);
    }
  });
  return count;
}

describe("spans", () => {
  const files = [...moeFiles("test/grammar/cases"), ...moeFiles("examples"), ...moeFiles("stdlib")];
  for (const rel of files) {
    it(`nest in ${rel}`, () => {
      expect(checkSpans(readFileSync(join(root, rel), "utf8"), rel)).toBeGreaterThan(0);
    });
  }

  it("nest in broken programs", () => {
    const broken = [
      "block A {\n  x = f(a b)\n  y = (1 +\n  z = [1, 2\n}\n",
      "block A(d Dim, {\n  in x: f32[B,\n  out y f32\n  y = x with\n",
      "tasks T { a b\nconst c = { a: 1, b }\nmodel M { repeat n as { } if { } else }\n",
      "block A { x = per (y) ; z = -frozen w; v = [a; ] }",
    ];
    for (const text of broken) checkSpans(text, JSON.stringify(text));
  });

  it("nest in random token soup", () => {
    const words = [
      "block",
      "model",
      "in",
      "out",
      "param",
      "repeat",
      "if",
      "else",
      "per",
      "task",
      "frozen",
      "with",
      "x",
      "y",
      "=",
      "(",
      ")",
      "[",
      "]",
      "{",
      "}",
      ",",
      ";",
      ":",
      ".",
      "...",
      "+",
      "-",
      "*",
      "<",
      "==",
      "1",
      "2.5",
      '"s"',
      "import",
      "tasks",
      "const",
      "as",
      "\n",
    ];
    let seed = 11;
    for (let round = 0; round < 20; round++) {
      let text = "block A {\n";
      for (let i = 0; i < 300; i++) {
        seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
        text += words[(seed >>> 24) % words.length] + " ";
      }
      checkSpans(text, `soup ${round}`);
    }
  });

  it("cover exactly the text of simple nodes", () => {
    const text = "const x = (a + b) * f(c, k: 2).y";
    const result = parseSource(text, "t.moe");
    const pieces: string[] = [];
    walkSpans(result.file.items[0]!, (node) => {
      pieces.push(`${String(node["kind"])}:${text.slice(node.span.start, node.span.end)}`);
    });
    expect(pieces.sort()).toEqual(
      [
        "ConstDecl:const x = (a + b) * f(c, k: 2).y",
        "Ident:x",
        "BinaryExpr:(a + b) * f(c, k: 2).y",
        "BinaryExpr:(a + b)",
        "NameExpr:a",
        "Ident:a",
        "NameExpr:b",
        "Ident:b",
        "MemberExpr:f(c, k: 2).y",
        "CallExpr:f(c, k: 2)",
        "NameExpr:f",
        "Ident:f",
        "Arg:c",
        "NameExpr:c",
        "Ident:c",
        "Arg:k: 2",
        "Ident:k",
        "NumberLit:2",
        "Ident:y",
      ].sort(),
    );
  });
});
