/**
 * Prettier plugin for `.moe` files: `prettier --plugin moec/dist/editor/prettier-plugin/index.js`.
 *
 * The parser wraps `parseSource` (a syntax error becomes Prettier's syntax error, with its
 * line and column); the printer returns the document of the whole file built by
 * compiler/format/format-source.ts, the same code as `moec fmt`, so both format identically (the
 * plugin follows Prettier's `printWidth`, `tabWidth`, `useTabs` and `endOfLine` options;
 * `moec fmt` uses 100, 2, spaces and the file's own line ending).
 */
import type {
  AstPath,
  Doc,
  Parser,
  ParserOptions,
  Plugin,
  Printer,
  SupportLanguage,
} from "prettier";
import type { ParseResult } from "../../grammar/parse.js";
import { hasErrors, LineMap } from "../../compiler/diagnostics.js";
import { DEFAULT_PRINT_WIDTH, formatDocument } from "../../compiler/format/format-source.js";
import { parseSource } from "../../grammar/parse.js";

/** The plugin's AST: the whole parsed file (the printer lays it out in one piece). */
export interface MoeRoot {
  kind: "MoeRoot";
  text: string;
  parsed: ParseResult;
  span: { start: number; end: number };
}

export const languages: SupportLanguage[] = [
  {
    name: "moe",
    parsers: ["moe"],
    extensions: [".moe"],
    vscodeLanguageIds: ["moe"],
  },
];

function parse(text: string, options: ParserOptions<MoeRoot>): MoeRoot {
  const path = options.filepath ?? "<input>";
  const parsed = parseSource(text, path);
  if (hasErrors(parsed.diagnostics)) {
    const d = parsed.diagnostics.find((x) => x.severity === "error")!;
    const map = new LineMap(text);
    const start = map.lineColumn(d.span.start);
    const end = map.lineColumn(d.span.end);
    const more =
      parsed.diagnostics.length > 1 ? ` (and ${parsed.diagnostics.length - 1} more)` : "";
    throw Object.assign(new SyntaxError(`${d.message} [${d.code}]${more}`), {
      loc: { start, end },
      cause: d,
    });
  }
  return { kind: "MoeRoot", text, parsed, span: { start: 0, end: text.length } };
}

export const parsers: Record<string, Parser<MoeRoot>> = {
  moe: {
    parse,
    astFormat: "moe-ast",
    locStart: (node: MoeRoot) => node.span.start,
    locEnd: (node: MoeRoot) => node.span.end,
  },
};

export const printers: Record<string, Printer<MoeRoot>> = {
  "moe-ast": {
    print(path: AstPath<MoeRoot>, options): Doc {
      const root = path.node;
      return formatDocument(root.text, root.parsed, {
        printWidth: options.printWidth,
        tabWidth: options.tabWidth,
        useTabs: options.useTabs ?? false,
      });
    },
    // The root is opaque to Prettier: comments are attached and printed by the formatter.
    getVisitorKeys: () => [],
  },
};

/** The house style's width; Prettier's own default is 80. */
export const defaultOptions = { printWidth: DEFAULT_PRINT_WIDTH, tabWidth: 2 };

const plugin: Plugin<MoeRoot> = { languages, parsers, printers, defaultOptions };
export default plugin;
