/**
 * The formatter (compiler/format/format-source.ts).
 *
 * - Goldens: every `test/compiler/format-cases/NAME.moe` (deliberately badly formatted) must
 *   format to `NAME.formatted.moe` beside it. A missing or different golden fails, unless the
 *   environment sets UPDATE_GOLDEN=1, which (re)writes it.
 * - Invariants, over every example, stdlib file and grammar case without syntax errors, and
 *   over fuzzed inputs (random programs from the grammar; valid files re-spaced token by token
 *   with comments sprinkled in): the output parses to the same AST (spans aside), keeps every
 *   comment in order, and formatting it again changes nothing.
 * - The Prettier plugin formats through Prettier's API exactly as `formatSource` does.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as prettier from "prettier";
import { describe, expect, it } from "vitest";
import {
  formatSource,
  normalizeComment,
  sameTree,
  type FormatOptions,
} from "../../compiler/format/format-source.js";
import plugin from "../../editor/prettier-plugin/index.js";
import { parseSource } from "../../grammar/parse.js";
import { isValid, ProgramGenerator, Rng, scramble } from "./format-fuzz.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const casesDir = join(root, "test/compiler/format-cases");
const update = process.env["UPDATE_GOLDEN"] === "1";

function moeFiles(dir: string): string[] {
  const abs = join(root, dir);
  if (!existsSync(abs)) return [];
  return readdirSync(abs)
    .filter((n) => n.endsWith(".moe"))
    .sort()
    .map((n) => `${dir}/${n}`);
}

function read(rel: string): string {
  return readFileSync(join(root, rel), "utf8");
}

/**
 * Formats `text` and checks the invariants: same AST, every comment kept in order,
 * idempotent. Returns the formatted text.
 */
function formatChecked(text: string, label: string, options: FormatOptions = {}): string {
  const before = parseSource(text, "f.moe");
  expect(before.diagnostics, `${label}: the input must be valid`).toEqual([]);
  const { formatted, diagnostics } = formatSource(text, "f.moe", options);
  expect(diagnostics).toEqual([]);
  const after = parseSource(formatted, "f.moe");
  expect(after.diagnostics, `${label}: the output must parse\n${formatted}`).toEqual([]);
  expect(sameTree(before.file, after.file), `${label}: same AST\n${formatted}`).toBe(true);
  expect(
    after.comments.map((c) => normalizeComment(c.text)),
    `${label}: comments`,
  ).toEqual(before.comments.map((c) => normalizeComment(c.text)));
  const again = formatSource(formatted, "f.moe", options).formatted;
  if (again !== formatted) {
    expect(again, `${label}: formatting twice changes the output`).toBe(formatted);
  }
  return formatted;
}

describe("goldens", () => {
  const inputs = moeFiles("test/compiler/format-cases").filter(
    (f) => !f.endsWith(".formatted.moe"),
  );

  it("has cases", () => {
    expect(inputs.length).toBeGreaterThanOrEqual(5);
  });

  for (const rel of inputs) {
    it(rel, () => {
      const formatted = formatChecked(read(rel), rel);
      const golden = join(root, rel.replace(/\.moe$/, ".formatted.moe"));
      if (update) {
        writeFileSync(golden, formatted);
        return;
      }
      if (!existsSync(golden)) {
        expect.fail(
          `missing golden ${relative(root, golden)}: run UPDATE_GOLDEN=1 npx vitest run test/compiler/format-source.test.ts`,
        );
      }
      expect(formatted).toBe(readFileSync(golden, "utf8"));
    });
  }
});

describe("the repository's sources", () => {
  const files = [
    ...moeFiles("examples"),
    ...moeFiles("stdlib"),
    ...moeFiles("test/grammar/cases"),
    ...moeFiles("test/compiler/format-cases"),
  ];

  it("has sources to check", () => {
    expect(files.length).toBeGreaterThan(10);
  });

  for (const rel of files) {
    const text = read(rel);
    if (!isValid(text)) continue; // the recovery cases have syntax errors on purpose
    it(`${rel}: same AST, every comment, idempotent (widths 100, 60, 30)`, () => {
      for (const printWidth of [100, 60, 30])
        formatChecked(text, `${rel} @${printWidth}`, { printWidth });
    });
  }
});

describe("behaviour", () => {
  const fmt = (text: string, options?: FormatOptions) =>
    formatSource(text, "t.moe", options).formatted;

  it("returns a file with syntax errors unchanged, with the diagnostics", () => {
    const text = "block A {\n  x =   \n  y = f(a,, b)\n}\n";
    const result = formatSource(text, "t.moe");
    expect(result.formatted).toBe(text);
    expect(result.diagnostics.length).toBeGreaterThan(0);
    expect(result.diagnostics.every((d) => d.file === "t.moe")).toBe(true);
  });

  it("keeps numbers as written and re-escapes strings", () => {
    expect(fmt('const a = 1_000\nconst b = 1e-5\nconst c = "x\\"y\\\\z\\n\tw"\n')).toBe(
      'const a = 1_000\nconst b = 1e-5\nconst c = "x\\"y\\\\z\\n\\tw"\n',
    );
  });

  it("ends with one newline; an empty file stays empty", () => {
    expect(fmt("block A {}")).toBe("block A {}\n");
    expect(fmt("block A {}\n\n\n")).toBe("block A {}\n");
    expect(fmt("")).toBe("");
    expect(fmt("  \n\n")).toBe("");
  });

  it("keeps the dominant line ending and a byte order mark", () => {
    expect(fmt("block A {\r\n  x = 1\r\n}\r\n")).toBe("block A {\r\n  x = 1\r\n}\r\n");
    expect(fmt("block A {\r\n  x = 1\n}\n")).toBe("block A {\n  x = 1\n}\n");
    expect(fmt("\uFEFFblock A { x = 1 }")).toBe("\uFEFFblock A {\n  x = 1\n}\n");
  });

  it("collapses runs of blank lines to one and drops them at the start and end of bodies", () => {
    expect(fmt("block A {\n\n\n  x = 1\n\n\n\n  y = 2\n\n}\n\n\n\nblock B {}\n")).toBe(
      "block A {\n  x = 1\n\n  y = 2\n}\n\nblock B {}\n",
    );
  });

  it("breaks lists that do not fit one per line with a trailing comma", () => {
    const text = "block A(d: Dim) { y = f(aaaa, bbbb, k: cccc) }";
    expect(fmt(text, { printWidth: 24 })).toBe(
      "block A(d: Dim) {\n  y = f(\n    aaaa,\n    bbbb,\n    k: cccc,\n  )\n}\n",
    );
    expect(fmt(text)).toBe("block A(d: Dim) {\n  y = f(aaaa, bbbb, k: cccc)\n}\n");
  });

  it("never adds a trailing comma to tensor dimensions (the grammar has none)", () => {
    const out = fmt("block A { in x: f32[batch_size, sequence_length, model_width] }", {
      printWidth: 20,
    });
    expect(out).toContain("model_width\n  ]");
    expect(isValid(out)).toBe(true);
  });

  it("keeps a trailing // comment on its line", () => {
    expect(fmt("block A {\n  x = f(a,   b)    // why\n}\n")).toBe(
      "block A {\n  x = f(a, b) // why\n}\n",
    );
  });

  it("keeps the `;` that ends a doc comment (else the comment would document the next line)", () => {
    const text = "block A {\n  x = 1 /// about x\n  ; y = 2\n}\n";
    const before = parseSource(text, "t.moe").file;
    const out = fmt(text);
    expect(out).toContain(";");
    expect(sameTree(before, parseSource(out, "t.moe").file)).toBe(true);
  });

  it("keeps the trailing spaces of a doc comment (they are part of the doc text)", () => {
    const text = "block A {\n  /// doc   \n  x = 1\n}\n";
    expect(fmt(text)).toBe(text);
  });

  it("survives very long operator chains and member chains (no recursion on them)", () => {
    const terms = Array.from({ length: 5000 }, (_, i) => `a${i}`);
    const text = `block A {\n  x = ${terms.join(" + ")}\n  y = ${terms.join(".")}\n}\n`;
    const before = parseSource(text, "t.moe").file;
    const out = fmt(text);
    expect(sameTree(before, parseSource(out, "t.moe").file)).toBe(true);
  });
});

describe("fuzz", () => {
  it("random programs from the grammar, as generated and scrambled with comments", () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rng = new Rng(seed);
      const program = new ProgramGenerator(rng).program();
      const printWidth = rng.pick([30, 60, 100]);
      formatChecked(program, `program ${seed}`, { printWidth });
      const scrambled = scramble(program, rng, rng.pick([0.05, 0.2, 0.5]));
      formatChecked(scrambled, `scrambled program ${seed}:\n${scrambled}`, { printWidth });
    }
  });

  it("the examples and the stdlib, re-spaced with comments sprinkled in", () => {
    const files = [...moeFiles("examples"), ...moeFiles("stdlib")];
    for (const rel of files) {
      const text = read(rel);
      for (let seed = 1; seed <= 8; seed++) {
        const scrambled = scramble(text, new Rng(seed * 7919), 0.15);
        formatChecked(scrambled, `${rel} scrambled ${seed}:\n${scrambled}`);
      }
    }
  });
});

describe("Prettier plugin", () => {
  it("formats through prettier.format exactly as formatSource does", async () => {
    for (const rel of ["examples/task-moe.moe", "test/compiler/format-cases/comments.moe"]) {
      const text = read(rel);
      const viaPrettier = await prettier.format(text, { parser: "moe", plugins: [plugin] });
      expect(viaPrettier).toBe(formatSource(text, rel).formatted);
    }
  });

  it("is picked by the .moe extension and follows Prettier's options", async () => {
    const text = "block A { y = f(aaaa, bbbb) }\r\n";
    const out = await prettier.format(text, {
      filepath: "model.moe",
      plugins: [plugin],
      printWidth: 12,
      useTabs: true,
      endOfLine: "auto",
    });
    expect(out).toBe("block A {\r\n\ty = f(\r\n\t\taaaa,\r\n\t\tbbbb,\r\n\t)\r\n}\r\n");
  });

  it("reports a syntax error with its position", async () => {
    await expect(
      prettier.format("block A {\n  x =\n}\n", { parser: "moe", plugins: [plugin] }),
    ).rejects.toThrow(/E0101/);
    let error: { loc?: { start: { line: number } } } = {};
    try {
      await prettier.format("block A {\n  x =\n}\n", { parser: "moe", plugins: [plugin] });
    } catch (e) {
      error = e as typeof error;
    }
    expect(error.loc?.start.line).toBe(3);
  });
});
