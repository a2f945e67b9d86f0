/**
 * Crash-safe file and directory output. Everything is written under a temporary name beside
 * its destination (same directory, so the same filesystem), flushed with fsync, and only then
 * renamed into place: a reader sees the old content or the new, never half of a write, and a
 * failure at any point removes the temporary and leaves the old content untouched. A process
 * killed midway cannot clean up, so each write first removes the temporaries that dead
 * processes left for the same destination (the writer's pid is in every temporary's name).
 *
 * Tests stop a write at its critical moments with `MOEC_TEST_PAUSE_AT=<point>` (`pauseAt`).
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import path from "node:path";

/**
 * What a file receives: text (UTF-8), bytes, or chunks produced one at a time (a callback is
 * called once the temporary file is open, so a large output never has to exist in memory
 * whole; if it throws, the write is abandoned).
 */
export type FileData = string | Uint8Array | Iterable<Uint8Array> | (() => Iterable<Uint8Array>);

/** Options of `writeDirAtomic`. */
export interface WriteDirOptions {
  /**
   * Asked before an existing directory at the destination is replaced; returning false aborts
   * with an error and leaves it alone (a caller's guard against, say, `-o ~`). Default: replace.
   */
  mayReplace?: (existingDir: string) => boolean;
}

/** Writes `data` to `file` atomically; keeps the mode of a file it replaces. */
export function writeFileAtomic(file: string, data: FileData): void {
  const dir = path.dirname(file);
  removeStaleTemps(file);
  const tmp = tempSibling(file, "tmp");
  let mode = 0o666;
  try {
    mode = statSync(file).mode & 0o7777;
  } catch {
    // No existing file: the default mode (less the umask) applies.
  }
  try {
    writeAndSync(tmp, data, mode);
    pauseAt("after-temp-write");
    renameSync(tmp, file);
  } catch (e) {
    removeQuietly(tmp);
    throw e;
  }
  // The rename is durable only once the directory entry is flushed too.
  syncDir(dir);
}

/**
 * Writes a directory of files (`relative path → data`) so that `dir` is replaced as a whole:
 * the new tree is built and flushed in a temporary sibling, then renamed into place. Replacing
 * an existing directory takes two renames (old aside, new in; there is no portable atomic
 * exchange), so a crash between them leaves `dir` absent and the previous tree intact beside
 * it as `.<name>.<pid>.<id>.old`, which the next write of `dir` puts back first; any other
 * failure rolls back to the previous tree. Where `dir` must name a whole tree at every
 * moment, use `writeDirVersioned`.
 */
export function writeDirAtomic(
  dir: string,
  files: ReadonlyMap<string, FileData>,
  options: WriteDirOptions = {},
): void {
  const { target, parent, existing, entries } = startDirWrite(dir, files, options);
  const tmp = tempSibling(target, "tmp");
  writeTree(tmp, entries);
  pauseAt("after-temp-write");

  if (!existing) {
    try {
      renameSync(tmp, target);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    syncDir(parent);
    return;
  }

  const old = tempSibling(target, "old");
  try {
    renameSync(target, old);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  pauseAt("between-renames");
  try {
    renameSync(tmp, target);
  } catch (e) {
    // Put the previous tree back before reporting.
    renameSync(old, target);
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  syncDir(parent);
  // The new tree is in place; failing to delete the old one is not the write failing.
  try {
    rmSync(old, { recursive: true, force: true });
  } catch {
    // Left behind as `.<name>.<id>.old`.
  }
}

/**
 * What both directory writers check first: a leftover of an interrupted write is put back,
 * `dir` is a directory that may be replaced (when it exists), and every path is relative.
 */
function startDirWrite(
  dir: string,
  files: ReadonlyMap<string, FileData>,
  options: WriteDirOptions,
) {
  const target = path.resolve(dir);
  recoverLeftovers(target);
  const existing = statOrUndefined(target);
  if (existing && !existing.isDirectory()) {
    throw new Error(`${dir}: exists and is not a directory; not replacing it`);
  }
  if (existing && options.mayReplace && !options.mayReplace(dir)) {
    throw new Error(`${dir}: exists and was not written by this tool; not replacing it`);
  }
  const entries = [...files].map(([rel, data]) => [checkRelPath(rel, dir), data] as const);
  return { target, parent: path.dirname(target), existing, entries };
}

/** The name of the pointer in a versioned directory (`writeDirVersioned`). */
export const CURRENT_LINK = "current";

/**
 * Writes a directory of files so that `dir` names a complete tree at every moment, also over
 * an existing one: `dir` is a real directory holding versions (`v.<pid>.<id>/`), a symlink
 * `current` to the live one, and, for each top-level entry, a fixed symlink through it
 * (`manifest.json -> current/manifest.json`), so `dir/manifest.json` reads as before. A new
 * version is written and flushed beside the old, then `current` is swapped with one rename;
 * only then are the previous version and everything else in `dir` removed. A directory
 * written by `writeDirAtomic` (no `current`) is converted the same way: until its top-level
 * entries are relinked they are the old tree, and readers follow `current`
 * (`resolveVersionedDir`). Needs symlinks (not Windows without developer mode).
 */
export function writeDirVersioned(
  dir: string,
  files: ReadonlyMap<string, FileData>,
  options: WriteDirOptions = {},
): void {
  const { target, parent, existing, entries } = startDirWrite(dir, files, options);
  const tops = [...new Set(entries.map(([rel]) => rel.split(path.sep)[0]!))];
  const version = `v.${uniqueId()}`;

  if (!existing) {
    // A fresh directory: built whole under a temporary name, then renamed into place.
    const tmp = tempSibling(target, "tmp");
    try {
      writeTree(path.join(tmp, version), entries);
      symlinkSync(version, path.join(tmp, CURRENT_LINK));
      for (const top of tops) symlinkSync(path.join(CURRENT_LINK, top), path.join(tmp, top));
      syncDir(tmp);
      pauseAt("after-temp-write");
      renameSync(tmp, target);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    syncDir(parent);
    return;
  }

  removeStaleVersions(target);
  const versionDir = path.join(target, version);
  const link = path.join(target, `.${CURRENT_LINK}.${uniqueId()}.tmp`);
  try {
    writeTree(versionDir, entries);
    syncDir(target);
    pauseAt("after-temp-write");
    symlinkSync(version, link);
    pauseAt("before-swap");
    // The one step that changes what `dir` is: a rename over the pointer is atomic.
    renameSync(link, path.join(target, CURRENT_LINK));
  } catch (e) {
    removeQuietly(link);
    rmSync(versionDir, { recursive: true, force: true });
    throw e;
  }
  syncDir(target);
  pauseAt("after-swap");
  // The new tree is live; what follows is tidying, which the next write finishes if cut short.
  for (const top of tops) relinkTop(target, top);
  const keep = new Set([CURRENT_LINK, version, ...tops]);
  for (const name of readdirSync(target)) {
    if (keep.has(name)) continue;
    const temp = parseTempSibling(name) ?? parseVersion(name);
    // Another live writer's temporaries and versions are its own to finish or remove.
    if (temp && temp.pid !== process.pid && processAlive(temp.pid)) continue;
    try {
      rmSync(path.join(target, name), { recursive: true, force: true });
    } catch {
      // Removed by the next write.
    }
  }
  syncDir(target);
}

/**
 * Where a directory written by `writeDirVersioned` keeps its live tree (`dir/current`,
 * resolved once so a reader sees one version throughout), or `dir` itself for a directory
 * written whole (`writeDirAtomic`).
 */
export function resolveVersionedDir(dir: string): string {
  const current = path.join(dir, CURRENT_LINK);
  const link = statOrUndefined(current);
  if (!link?.isSymbolicLink()) return dir;
  return path.join(dir, readlinkSync(current));
}

/**
 * The tree an interrupted `writeDirAtomic` left aside when it was killed between its two
 * renames (`.<name>.<pid>.<id>.old`, its writer gone), or undefined; `dir` itself is absent
 * then.
 */
export function findLeftover(dir: string): string | undefined {
  const target = path.resolve(dir);
  if (statOrUndefined(target)) return undefined;
  return deadTemps(target).find((n) => n.endsWith(".old"));
}

/**
 * Before a write of `target`: puts back a tree that an interrupted replacement left aside
 * (when `target` is missing), and removes what dead writers left for it.
 */
function recoverLeftovers(target: string): void {
  const leftover = findLeftover(target);
  if (leftover) renameSync(path.join(path.dirname(target), leftover), target);
  removeStaleTemps(target);
}

/**
 * Removes the temporaries (`.<name>.<pid>.<id>.tmp|old`) that processes no longer running
 * left beside `target`: each was a write that was killed, which will never finish.
 */
export function removeStaleTemps(target: string): void {
  const dir = path.dirname(target);
  for (const name of deadTemps(target)) {
    try {
      rmSync(path.join(dir, name), { recursive: true, force: true });
    } catch {
      // Not ours to remove (permissions): left for its owner.
    }
  }
}

function deadTemps(target: string): string[] {
  const base = path.basename(target);
  let names: string[];
  try {
    names = readdirSync(path.dirname(target));
  } catch {
    return [];
  }
  return names.filter((name) => {
    const temp = parseTempSibling(name);
    return temp !== undefined && temp.target === base && !processAlive(temp.pid);
  });
}

/** Versions in `dir` that no `current` names, written by processes no longer running. */
function removeStaleVersions(dir: string): void {
  const live = statOrUndefined(path.join(dir, CURRENT_LINK))?.isSymbolicLink()
    ? readlinkSync(path.join(dir, CURRENT_LINK))
    : undefined;
  for (const name of readdirSync(dir)) {
    const temp = parseVersion(name) ?? parseTempSibling(name);
    if (!temp || name === live || processAlive(temp.pid)) continue;
    rmSync(path.join(dir, name), { recursive: true, force: true });
  }
}

/** Makes `dir/top` the fixed symlink `current/top`, replacing a real entry of the old layout. */
function relinkTop(dir: string, top: string): void {
  const at = path.join(dir, top);
  const want = path.join(CURRENT_LINK, top);
  const st = statOrUndefined(at);
  if (st?.isSymbolicLink() && readlinkSync(at) === want) return;
  const link = path.join(dir, `.${top}.${uniqueId()}.tmp`);
  symlinkSync(want, link);
  if (st?.isDirectory()) {
    // A rename cannot replace a non-empty directory: set it aside first (readers use `current`).
    const aside = path.join(dir, `.${top}.${uniqueId()}.old`);
    renameSync(at, aside);
    renameSync(link, at);
    rmSync(aside, { recursive: true, force: true });
  } else {
    renameSync(link, at);
  }
}

function parseVersion(name: string): { pid: number } | undefined {
  const m = /^v\.(\d+)\.[0-9a-f]+$/.exec(name);
  return m ? { pid: Number(m[1]) } : undefined;
}

/**
 * Whether process `pid` is running (so its temporaries may still be in use). A reused pid
 * reads as alive: its debris then waits for a later write, which is safe.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Test hook: when `MOEC_TEST_PAUSE_AT` names `point`, says so on stderr
 * (`moec: paused at <point>`) and blocks (up to a minute), so a test can kill the process at
 * exactly this moment of a write. Points: `after-temp-write` (the new content is complete
 * under its temporary name), `between-renames` (`writeDirAtomic` only: the old tree is aside),
 * `before-swap` and `after-swap` (`writeDirVersioned`: around the pointer's rename).
 */
export function pauseAt(point: string): void {
  if (process.env["MOEC_TEST_PAUSE_AT"] !== point) return;
  writeSync(2, `moec: paused at ${point}\n`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
}

/**
 * What a temporary sibling's name (tempSibling) says: the name it stands in for and the pid of
 * the process that wrote it; undefined for any other name.
 */
export function parseTempSibling(name: string): { target: string; pid: number } | undefined {
  const m = /^\.(.+)\.(\d+)\.[0-9a-f]+\.(?:tmp|old)$/.exec(name);
  return m ? { target: m[1]!, pid: Number(m[2]) } : undefined;
}

/** `.<name>.<pid>.<random>.<suffix>` beside `file`: hidden, unique, on the same filesystem. */
function tempSibling(file: string, suffix: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${uniqueId()}.${suffix}`);
}

/** `<pid>.<random>`: unique, and names the writer so its debris can be told from live work. */
function uniqueId(): string {
  return `${process.pid}.${randomBytes(6).toString("hex")}`;
}

/** Writes `entries` under a new directory `root`, flushed; removes it again on failure. */
function writeTree(root: string, entries: readonly (readonly [string, FileData])[]): void {
  try {
    mkdirSync(root, { recursive: true });
    const dirs = new Set<string>([root]);
    for (const [rel, data] of entries) {
      const dest = path.join(root, rel);
      const sub = path.dirname(dest);
      if (!dirs.has(sub)) {
        mkdirSync(sub, { recursive: true });
        for (let d = sub; d !== root && !dirs.has(d); d = path.dirname(d)) dirs.add(d);
      }
      writeAndSync(dest, data, 0o666);
    }
    // Deepest first, so each directory's entries are durable before its parent's.
    for (const d of [...dirs].sort((a, b) => b.length - a.length)) syncDir(d);
  } catch (e) {
    rmSync(root, { recursive: true, force: true });
    throw e;
  }
}

function writeAndSync(file: string, data: FileData, mode: number): void {
  // "wx": never follow or clobber something already at the temporary name.
  const fd = openSync(file, "wx", mode);
  try {
    if (typeof data === "string") writeAll(fd, Buffer.from(data, "utf8"));
    else if (data instanceof Uint8Array) writeAll(fd, data);
    else for (const chunk of typeof data === "function" ? data() : data) writeAll(fd, chunk);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done);
}

function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, "r");
    fsyncSync(fd);
  } catch {
    // Some platforms (Windows) cannot open or fsync a directory; the rename still happened.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function removeQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Never created, or already gone.
  }
}

function statOrUndefined(p: string): ReturnType<typeof lstatSync> | undefined {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
}

/** A bundle entry must stay inside the bundle: relative, normalised, no `..`. */
function checkRelPath(rel: string, dir: string): string {
  const norm = path.normalize(rel);
  if (
    rel === "" ||
    path.isAbsolute(rel) ||
    norm !== rel.replace(/\//g, path.sep) ||
    norm.split(path.sep).some((s) => s === ".." || s === "." || s === "")
  ) {
    throw new Error(
      `${dir}: invalid file name ${JSON.stringify(rel)} (must be a plain relative path)`,
    );
  }
  return norm;
}
