/**
 * Crash-safe file and directory output. Everything is written under a temporary name beside
 * its destination (same directory, so the same filesystem), flushed with fsync, and only then
 * renamed into place: a reader sees the old content or the new, never half of a write, and a
 * failure at any point removes the temporary and leaves the old content untouched.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
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
  const tmp = tempSibling(file, "tmp");
  let mode = 0o666;
  try {
    mode = statSync(file).mode & 0o7777;
  } catch {
    // No existing file: the default mode (less the umask) applies.
  }
  try {
    writeAndSync(tmp, data, mode);
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
 * it as `.<name>.<id>.old`; any other failure rolls back to the previous tree.
 */
export function writeDirAtomic(
  dir: string,
  files: ReadonlyMap<string, FileData>,
  options: WriteDirOptions = {},
): void {
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  const existing = statOrUndefined(target);
  if (existing && !existing.isDirectory()) {
    throw new Error(`${dir}: exists and is not a directory; not replacing it`);
  }
  if (existing && options.mayReplace && !options.mayReplace(dir)) {
    throw new Error(`${dir}: exists and was not written by this tool; not replacing it`);
  }
  const entries = [...files].map(([rel, data]) => [checkRelPath(rel, dir), data] as const);
  const tmp = tempSibling(target, "tmp");
  try {
    mkdirSync(tmp);
    const dirs = new Set<string>([tmp]);
    for (const [rel, data] of entries) {
      const dest = path.join(tmp, rel);
      const sub = path.dirname(dest);
      if (!dirs.has(sub)) {
        mkdirSync(sub, { recursive: true });
        for (let d = sub; d !== tmp && !dirs.has(d); d = path.dirname(d)) dirs.add(d);
      }
      writeAndSync(dest, data, 0o666);
    }
    // Deepest first, so each directory's entries are durable before its parent's.
    for (const d of [...dirs].sort((a, b) => b.length - a.length)) syncDir(d);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }

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
 * What a temporary sibling's name (tempSibling) says: the name it stands in for and the pid of
 * the process that wrote it; undefined for any other name.
 */
export function parseTempSibling(name: string): { target: string; pid: number } | undefined {
  const m = /^\.(.+)\.(\d+)\.[0-9a-f]+\.(?:tmp|old)$/.exec(name);
  return m ? { target: m[1]!, pid: Number(m[2]) } : undefined;
}

/** `.<name>.<pid>.<random>.<suffix>` beside `file`: hidden, unique, on the same filesystem. */
function tempSibling(file: string, suffix: string): string {
  const id = `${process.pid}.${randomBytes(6).toString("hex")}`;
  return path.join(path.dirname(file), `.${path.basename(file)}.${id}.${suffix}`);
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
