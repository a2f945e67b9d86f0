// `moec completion bash|zsh|fish`: scripts generated from commander's definitions name every
// command, subcommand and option; the bash script parses (`bash -n`) and completes.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { moec, root } from "./moec-cli.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-completion-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The command names a `--help` page lists under "Commands:". */
function commandsOf(help: string): string[] {
  const section = help.slice(help.indexOf("Commands:"));
  return [...section.matchAll(/^ {2}([a-z][\w-]*)/gm)].map((m) => m[1]!);
}

/** The long options a `--help` page lists. */
function optionsOf(help: string): string[] {
  return [...help.matchAll(/^ {2}(?:-\w, )?(--[\w-]+)/gm)].map((m) => m[1]!);
}

const top = moec(["--help"]);
const commands = commandsOf(top.stdout);
const dataCommands = commandsOf(moec(["data", "--help"]).stdout);
const runOptions = optionsOf(moec(["run", "--help"]).stdout);
const scripts = Object.fromEntries(
  ["bash", "zsh", "fish"].map((shell) => {
    const r = moec(["completion", shell]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    return [shell, r.stdout];
  }),
);

describe("moec completion", () => {
  it("knows the commands it should name", () => {
    expect(commands).toEqual(expect.arrayContaining(["check", "params", "run", "completion"]));
    expect(commands.length).toBeGreaterThanOrEqual(12);
    expect(dataCommands).toContain("gen");
    expect(runOptions).toEqual(expect.arrayContaining(["--weights", "--backend", "--stats"]));
  });

  for (const shell of ["bash", "zsh", "fish"]) {
    it(`${shell}: names every command, data's subcommands and every option of run`, () => {
      const script = scripts[shell]!;
      const word = (w: string) => new RegExp(`(^|[\\s'"(,{*])${w}($|[\\s'"):,}\\[])`, "m");
      for (const c of [...commands, ...dataCommands]) expect(script).toMatch(word(c));
      for (const o of runOptions) {
        // fish names long options without their dashes (`-l weights`).
        expect(script).toMatch(shell === "fish" ? word(`-l ${o.slice(2)}`) : word(o));
      }
    });
  }

  it("bash: the script parses and completes commands, options, values and files", () => {
    const file = path.join(tmp, "moec.bash");
    fs.writeFileSync(file, scripts.bash!);
    expect(spawnSync("bash", ["-n", file], { encoding: "utf8" }).status).toBe(0);
    const complete = (...words: string[]) => {
      const script = `source ${JSON.stringify(file)}
COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}
_moec_completion; printf '%s\\n' "\${COMPREPLY[@]}"`;
      const r = spawnSync("bash", ["-c", script], { cwd: root, encoding: "utf8" });
      expect(r.stderr).toBe("");
      return r.stdout.split("\n").filter((l) => l !== "");
    };
    expect(complete("moec", "pa")).toEqual(["params"]);
    expect(complete("moec", "--verbose", "com")).toEqual(["compile", "completion"]);
    expect(complete("moec", "run", "--we")).toEqual(["--weights", "--weights-map"]);
    expect(complete("moec", "data", "")).toEqual(["gen", "help"]);
    expect(complete("moec", "data", "gen", "--rel")).toEqual(["--relatedness"]);
    expect(complete("moec", "completion", "")).toEqual(["bash", "zsh", "fish"]);
    // A value is not a command: `--dim B=2` is skipped, and `--seed`'s value completes nothing.
    expect(complete("moec", "run", "--dim", "B=2", "--st")).toEqual(["--stats"]);
    expect(complete("moec", "run", "--seed", "")).toEqual([]);
    // Arguments: .moe files for check, any file for a value that is one.
    const gpt2Files = fs
      .readdirSync(path.join(root, "examples"))
      .filter((f) => f.startsWith("gpt2") && f.endsWith(".moe"))
      .map((f) => `examples/${f}`);
    expect(gpt2Files.length).toBeGreaterThan(1);
    expect(complete("moec", "check", "examples/gpt2").sort()).toEqual(gpt2Files.sort());
    expect(complete("moec", "run", "--weights", "examples/gpt2.")).toEqual(["examples/gpt2.moe"]);
  });

  it("refuses an unknown shell (exit 2)", () => {
    const r = moec(["completion", "pwsh"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Allowed choices are bash, zsh, fish/);
  });
});
