/**
 * Inputs for the formatter's fuzz tests: random valid programs drawn from the grammar
 * (docs/language.md), and a "scrambler" that re-spaces any valid file token by token (random
 * indentation, line breaks, blank lines, CRLF) and sprinkles `//`, `///` and block comments
 * between tokens. Deterministic: every input comes from a seed.
 */
import { tokenize } from "../../grammar/lexer.js";
import { parseSource } from "../../grammar/parse.js";

/** A small deterministic generator (linear congruential; the tests must not be flaky). */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (seed * 2654435761) >>> 0 || 1;
  }
  next(): number {
    this.s = (Math.imul(this.s, 1103515245) + 12345) >>> 0;
    return (this.s >>> 8) / (1 << 24);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

const NAMES = [
  "x",
  "y",
  "d",
  "h",
  "a",
  "b",
  "base",
  "experts",
  "lang",
  "Δ",
  "größe",
  "t_2",
  "task",
];
const NUMBERS = ["0", "1", "8", "256", "1_000", "1.25", "0.5", "1e-5", "3.0e2", "2E+3", "50_257"];
const STRINGS = ['"plain"', '"q\\"uote"', '"back\\\\slash"', '"nl\\n tab\\t"', '""', '"ünï ✓"'];
const TYPES = ["Dim", "Int", "Float", "Bool", "String", "Module", "Router", "Act", "Lang"];
const DTYPES = ["f32", "f16", "bf16", "i32", "i64", "bool", "Lang"];

/** Binding strength of an expression's top construct (what may hold it without parentheses). */
const enum Level {
  With = 0,
  Compare = 1,
  Add = 2,
  Mul = 3,
  Unary = 4,
  Prefixed = 5,
  Postfix = 6,
}

interface Gen {
  text: string;
  level: Level;
}

/** Random programs from the grammar. `size` bounds the nesting of expressions. */
export class ProgramGenerator {
  constructor(
    private readonly rng: Rng,
    private readonly size = 3,
  ) {}

  private name(): string {
    return this.rng.pick(NAMES);
  }

  /** `g` where a construct of at least `min` is needed: in parentheses when weaker. */
  private at(g: Gen, min: Level): string {
    const needs = g.level < min;
    const extra = !needs && this.rng.chance(0.08);
    return needs || extra ? `(${g.text})` : g.text;
  }

  expr(depth = this.size): Gen {
    const r = this.rng;
    if (depth <= 0 || r.chance(0.25)) return this.primary();
    switch (r.int(12)) {
      case 0:
      case 1: {
        const op = r.pick(["+", "-"]);
        return {
          text: `${this.at(this.expr(depth - 1), Level.Add)} ${op} ${this.at(this.expr(depth - 1), Level.Mul)}`,
          level: Level.Add,
        };
      }
      case 2: {
        const op = r.pick(["*", "/", "%", "@"]);
        return {
          text: `${this.at(this.expr(depth - 1), Level.Mul)} ${op} ${this.at(this.expr(depth - 1), Level.Unary)}`,
          level: Level.Mul,
        };
      }
      case 3: {
        const op = r.pick(["==", "!=", "<", "<=", ">", ">="]);
        return {
          text: `${this.at(this.expr(depth - 1), Level.Add)} ${op} ${this.at(this.expr(depth - 1), Level.Add)}`,
          level: Level.Compare,
        };
      }
      case 4: {
        const op = r.pick(["-", "!"]);
        return { text: `${op}${this.at(this.expr(depth - 1), Level.Unary)}`, level: Level.Unary };
      }
      case 5: {
        const kw = r.pick(["per task ", "frozen "]);
        return { text: kw + this.at(this.expr(depth - 1), Level.Prefixed), level: Level.Prefixed };
      }
      case 6:
        return {
          text: `${this.at(this.expr(depth - 1), Level.Compare)} with ${this.at(this.expr(depth - 1), Level.Prefixed)}`,
          level: Level.With,
        };
      case 7:
      case 8:
        return this.call(depth);
      case 9: {
        const object = this.expr(depth - 1);
        const text = object.text.match(/^[0-9]/)
          ? `(${object.text})`
          : this.at(object, Level.Postfix);
        return { text: `${text}.${this.name()}`, level: Level.Postfix };
      }
      case 10:
        return this.list(depth);
      default:
        return this.record(depth);
    }
  }

  private primary(): Gen {
    const r = this.rng;
    const k = r.int(10);
    const text =
      k < 5
        ? this.name()
        : k < 8
          ? r.pick(NUMBERS)
          : k < 9
            ? r.pick(STRINGS)
            : r.pick(["true", "false"]);
    return { text, level: Level.Postfix };
  }

  private call(depth: number): Gen {
    const r = this.rng;
    const callee = r.chance(0.7)
      ? { text: this.name(), level: Level.Postfix }
      : this.expr(depth - 1);
    const n = r.int(r.chance(0.2) ? 8 : 4);
    const args: string[] = [];
    for (let i = 0; i < n; i++) {
      const value = this.expr(depth - 1).text;
      args.push(r.chance(0.4) ? `${this.name()}: ${value}` : value);
    }
    const trailing = n > 0 && r.chance(0.2) ? "," : "";
    return {
      text: `${this.at(callee, Level.Postfix)}(${args.join(", ")}${trailing})`,
      level: Level.Postfix,
    };
  }

  private list(depth: number): Gen {
    const r = this.rng;
    if (r.chance(0.3)) {
      return {
        text: `[${this.expr(depth - 1).text}; ${this.expr(depth - 1).text}]`,
        level: Level.Postfix,
      };
    }
    const n = r.int(5);
    const items = Array.from({ length: n }, () => this.expr(depth - 1).text);
    const trailing = n > 0 && r.chance(0.2) ? "," : "";
    return { text: `[${items.join(", ")}${trailing}]`, level: Level.Postfix };
  }

  private record(depth: number): Gen {
    const n = 1 + this.rng.int(3);
    const fields = Array.from({ length: n }, () => `${this.name()}: ${this.expr(depth - 1).text}`);
    return { text: `{ ${fields.join(", ")} }`, level: Level.Postfix };
  }

  /** An expression that can follow `if` / `repeat` (a record there would be read as the body). */
  private header(): string {
    const e = this.expr().text;
    return e.startsWith("{") ? `(${e})` : e;
  }

  type(): string {
    const r = this.rng;
    switch (r.int(4)) {
      case 0:
        return r.pick(TYPES);
      case 1:
        return `[${this.type()}]`;
      default: {
        const n = r.int(4);
        const dims = Array.from({ length: n }, (_, i) =>
          i === 0 && r.chance(0.3) ? "..." : this.rng.chance(0.7) ? this.name() : this.expr(1).text,
        );
        return `${r.pick(DTYPES)}[${dims.join(", ")}]`;
      }
    }
  }

  private params(): string {
    const r = this.rng;
    if (r.chance(0.2)) return "";
    const n = r.int(r.chance(0.2) ? 7 : 4);
    const ps = Array.from({ length: n }, () => {
      const def = r.chance(0.5) ? ` = ${this.expr(2).text}` : "";
      return `${this.name()}: ${this.type()}${def}`;
    });
    return `(${ps.join(", ")}${n > 0 && r.chance(0.2) ? "," : ""})`;
  }

  stmts(depth: number): string[] {
    const r = this.rng;
    const n = r.int(6);
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(this.stmt(depth));
    return out;
  }

  private body(depth: number): string {
    const stmts = this.stmts(depth);
    return stmts.length === 0 ? "{}" : `{\n${stmts.join("\n")}\n}`;
  }

  stmt(depth: number): string {
    const r = this.rng;
    switch (r.int(depth > 0 ? 9 : 7)) {
      case 0:
        return `${r.pick(["in", "out"])} ${this.name()}: ${this.type()}`;
      case 1:
        return `param ${this.name()}: ${this.type()}${r.chance(0.5) ? ` = ${this.expr().text}` : ""}`;
      case 2:
        return ";";
      case 7: {
        const label = r.chance(0.5) ? ` as ${this.name()}` : "";
        return `repeat ${this.header()}${label} ${this.body(depth - 1)}`;
      }
      case 8: {
        const otherwise = r.chance(0.5) ? ` else ${this.body(depth - 1)}` : "";
        return `if ${this.header()} ${this.body(depth - 1)}${otherwise}`;
      }
      default:
        return `${this.name()} = ${this.expr().text}`;
    }
  }

  item(): string {
    const r = this.rng;
    switch (r.int(8)) {
      case 0: {
        const module = r.chance(0.7)
          ? `std.${this.name()}`
          : r.pick(['"./parts.moe"', '"../x.moe"']);
        const n = 1 + r.int(4);
        const names = Array.from({ length: n }, () =>
          r.chance(0.3) ? `${this.name()} as ${this.name()}` : this.name(),
        );
        return `import ${module} { ${names.join(", ")}${r.chance(0.2) ? "," : ""} }`;
      }
      case 1:
      case 2: {
        const n = 1 + r.int(5);
        const members = Array.from({ length: n }, () => this.name());
        return `${r.pick(["tasks", "enum"])} ${this.name()} { ${members.join(", ")} }`;
      }
      case 3:
        return `const ${this.name()}${r.chance(0.5) ? `: ${this.type()}` : ""} = ${this.expr().text}`;
      case 4:
        return `train ${this.name()}${this.params()} ${this.body(2)}`;
      default:
        return `${r.pick(["block", "model", "primitive"])} ${this.name()}${this.params()} ${this.body(2)}`;
    }
  }

  program(): string {
    const n = 1 + this.rng.int(5);
    return Array.from({ length: n }, () => this.item()).join("\n\n") + "\n";
  }
}

const GAPS = [" ", " ", " ", " ", "  ", "\t", "\n", "\n", "\n    ", "\n\n", "\n\n\n  "];

/**
 * The tokens and comments of a valid `text`, re-emitted with random whitespace between them
 * and, with probability `commentRate` per gap, a new comment (`//`, `///`, `/* *\/`, a block
 * comment over two lines). Sometimes with CRLF line endings. Returns valid source.
 */
export function scramble(text: string, rng: Rng, commentRate = 0.08): string {
  const lexed = tokenize(text, "s.moe");
  const pieces = [
    ...lexed.tokens.map((t) => ({ start: t.startOffset, image: t.image, line: false })),
    ...lexed.comments.map((c) => ({
      start: c.startOffset,
      image: c.image,
      line: c.image.startsWith("//"),
    })),
  ].sort((a, b) => a.start - b.start);
  let out = "";
  let n = 0;
  let afterLine = false;
  for (const p of pieces) {
    if (out !== "") out += afterLine ? "\n" + rng.pick(["", "  ", "\n"]) : rng.pick(GAPS);
    afterLine = false;
    if (rng.chance(commentRate)) {
      n++;
      switch (rng.int(5)) {
        case 0:
          out += `/* c${n} */ `;
          break;
        case 1:
          out += `/* c${n}\n   more ${n} */` + rng.pick([" ", "\n"]);
          break;
        case 2:
          out += `/// d${n}${rng.chance(0.2) ? "  " : ""}\n`;
          break;
        default:
          out += `// c${n}${rng.chance(0.2) ? "   " : ""}\n`;
      }
      out += rng.pick(["", "  ", "\n"]);
    }
    out += p.image;
    afterLine = p.line;
  }
  out += "\n";
  return rng.chance(0.15) ? out.replace(/\n/g, "\r\n") : out;
}

/** Whether `text` parses without diagnostics. */
export function isValid(text: string): boolean {
  return parseSource(text, "v.moe").diagnostics.length === 0;
}
