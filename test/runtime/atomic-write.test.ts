// Writes leave the old content or the new, never neither, and no debris: temporaries of killed
// writers are removed by the next write of the same target; a directory replaced by
// `writeDirVersioned` names a whole tree at every moment.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  resolveVersionedDir,
  writeDirAtomic,
  writeDirVersioned,
  writeFileAtomic,
} from "../../runtime/atomic-write.js";
import { writeCacheFile } from "../../runtime/autotune.js";
import { deadPid, moecKilledAt } from "../cli/kill-at.js";
import { moec } from "../cli/moec-cli.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-atomic-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const freshDir = () => {
  const d = path.join(tmp, `case-${n++}`);
  fs.mkdirSync(d);
  return d;
};
const readTree = (dir: string): Record<string, string> =>
  Object.fromEntries(
    (fs.readdirSync(dir, { recursive: true }) as string[])
      .filter((f) => fs.statSync(path.join(dir, f)).isFile())
      .map((f) => [f, fs.readFileSync(path.join(dir, f), "utf8")]),
  );

describe("stale temporaries", () => {
  it("the next write of a file removes what dead writers left for it, and only that", () => {
    const dir = freshDir();
    const file = path.join(dir, "out.safetensors");
    const dead = deadPid();
    const debris = [`.out.safetensors.${dead}.0a1b2c.tmp`, `.out.safetensors.${dead}.ffee.tmp`];
    const kept = [
      `.out.safetensors.${process.pid}.0a1b2c.tmp`, // a live writer's (this process)
      `.other.safetensors.${dead}.0a1b2c.tmp`, // another target's: its own next write
      "notes.txt",
    ];
    for (const f of [...debris, ...kept]) fs.writeFileSync(path.join(dir, f), "x");
    writeFileAtomic(file, "new");
    expect(fs.readdirSync(dir).sort()).toEqual([...kept, "out.safetensors"].sort());
    expect(fs.readFileSync(file, "utf8")).toBe("new");
  });

  it("autotune.json: temporaries of both namings are removed", () => {
    const dir = freshDir();
    const dead = deadPid();
    fs.writeFileSync(path.join(dir, `autotune.json.${dead}.k3j4h5.tmp`), "{");
    fs.writeFileSync(path.join(dir, `.autotune.json.${dead}.a1b2c3.tmp`), "{");
    writeCacheFile(path.join(dir, "autotune.json"), "{}\n");
    expect(fs.readdirSync(dir)).toEqual(["autotune.json"]);
  });

  it("`moec fmt` killed after writing its temporary: file untouched, next fmt cleans up", async () => {
    const dir = freshDir();
    const file = path.join(dir, "m.moe");
    const messy = "model M {\n    x   = 1\n}\n";
    fs.writeFileSync(file, messy);
    await moecKilledAt(["fmt", file], "after-temp-write");
    expect(fs.readFileSync(file, "utf8")).toBe(messy);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toHaveLength(1);
    const r = moec(["fmt", file]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(["m.moe"]);
    expect(fs.readFileSync(file, "utf8")).not.toBe(messy);
  });

  it("`moec run -o` killed after writing its temporary: the next run -o removes it", async () => {
    const dir = freshDir();
    const out = path.join(dir, "out.safetensors");
    const args = [
      "run",
      "examples/tiny-transformer.moe",
      "--backend",
      "reference",
      "--dim",
      "B=1",
      "--dim",
      "T=3",
      "-o",
      out,
    ];
    await moecKilledAt(args, "after-temp-write");
    expect(fs.readdirSync(dir)).toEqual([
      expect.stringMatching(/^\.out\.safetensors\.\d+\.\w+\.tmp$/),
    ]);
    const r = moec(args);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(["out.safetensors"]);
  });
});

describe("writeDirAtomic", () => {
  it("puts back a tree left aside by a write killed between its renames", () => {
    const dir = freshDir();
    const target = path.join(dir, "b");
    // What a kill between the two renames leaves: no `b`, the previous tree beside it.
    const aside = path.join(dir, `.b.${deadPid()}.00aa11.old`);
    fs.mkdirSync(aside);
    fs.writeFileSync(path.join(aside, "a.txt"), "v1");
    expect(() =>
      writeDirAtomic(target, new Map([["a.txt", "v2"]]), { mayReplace: () => false }),
    ).toThrow("not replacing it");
    expect(readTree(target)).toEqual({ "a.txt": "v1" });
    expect(fs.readdirSync(dir)).toEqual(["b"]);
  });
});

describe("writeDirVersioned", () => {
  const files = (v: string) =>
    new Map([
      ["manifest.json", `{"v":"${v}"}`],
      ["kernels/000-a.wgsl", `// ${v}`],
    ]);

  it("reads through fixed links; replacing swaps one pointer and leaves no debris", () => {
    const dir = freshDir();
    const target = path.join(dir, "m.moec");
    writeDirVersioned(target, files("1"));
    expect(fs.readFileSync(path.join(target, "manifest.json"), "utf8")).toBe('{"v":"1"}');
    writeDirVersioned(target, files("2"));
    expect(fs.readFileSync(path.join(target, "kernels/000-a.wgsl"), "utf8")).toBe("// 2");
    expect(readTree(resolveVersionedDir(target))).toEqual({
      "manifest.json": '{"v":"2"}',
      [path.join("kernels", "000-a.wgsl")]: "// 2",
    });
    const names = fs.readdirSync(target).sort();
    expect(names).toEqual([
      "current",
      "kernels",
      "manifest.json",
      expect.stringMatching(/^v\.\d+\.[0-9a-f]+$/),
    ]);
    expect(fs.readdirSync(dir)).toEqual(["m.moec"]);
  });

  it("converts a directory written whole (the old layout)", () => {
    const dir = freshDir();
    const target = path.join(dir, "m.moec");
    writeDirAtomic(target, new Map([...files("1"), ["plan.json", "{}"]]));
    expect(resolveVersionedDir(target)).toBe(target);
    writeDirVersioned(target, files("2"));
    expect(fs.lstatSync(path.join(target, "kernels")).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(path.join(target, "manifest.json"), "utf8")).toBe('{"v":"2"}');
    // The old tree's entries the new one lacks are gone with it.
    expect(fs.existsSync(path.join(target, "plan.json"))).toBe(false);
    expect(fs.readdirSync(target)).toHaveLength(4);
  });

  it("removes versions and pointers that killed writers left", () => {
    const dir = freshDir();
    const target = path.join(dir, "m.moec");
    writeDirVersioned(target, files("1"));
    const dead = deadPid();
    fs.mkdirSync(path.join(target, `v.${dead}.abcdef`));
    fs.symlinkSync(`v.${dead}.abcdef`, path.join(target, `.current.${dead}.abcdef.tmp`));
    writeDirVersioned(target, files("2"));
    expect(fs.readdirSync(target)).toHaveLength(4);
  });
});
