// docs/language.md's "Builtin functions" table names every builtin the checker knows.
import * as fs from "node:fs";
import * as path from "node:path";
import { expect, it } from "vitest";
import { BUILTINS } from "../../compiler/check/builtins.js";

it("docs/language.md lists every builtin", () => {
  const doc = fs.readFileSync(path.join(import.meta.dirname, "../../docs/language.md"), "utf8");
  const section = doc.slice(doc.indexOf("## Builtin functions"));
  const listed = new Set([...section.matchAll(/`(\w+)[(`]/g)].map((m) => m[1]!));
  const missing = [...BUILTINS.keys()].filter((name) => !listed.has(name));
  expect(missing).toEqual([]);
});
