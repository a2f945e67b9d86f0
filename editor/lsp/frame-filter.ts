/**
 * A guard in front of the server's stdin: passes on only well-formed LSP frames
 * (`Content-Length: N` header block, blank line, N bytes of JSON) and drops anything else up to
 * the next `Content-Length:` header, reporting each drop in one line.
 *
 * vscode-jsonrpc's reader cannot resynchronise: one stray CRLF or a run of spaces between
 * frames makes it fail on a header without Content-Length and ignore everything after, and a
 * Content-Length larger than the body makes it wait for bytes that never come. Either way the
 * server stays alive but answers nothing, so the editor never restarts it.
 */
import { Transform, type TransformCallback } from "node:stream";

/** Longer than this, a header block is garbage (real ones are under 100 bytes). */
const MAX_HEADER_BYTES = 8192;
/** A frame may not declare more than this (a whole-text change of a huge file is far less). */
export const MAX_FRAME_BYTES = 256 * 1024 * 1024;
const HEADER_LINE = /^[A-Za-z][A-Za-z0-9-]*:[^\r\n]*$/;
const CONTENT_LENGTH = /content-length:/i;
const PARTIAL_HEADER_LINE = /^(?:[A-Za-z][A-Za-z0-9-]*(?::[^\r\n]*)?\r?)?$/;

export class FrameFilter extends Transform {
  /** Bytes not yet passed on or dropped (the parts of a long body are joined only when whole). */
  private buf = Buffer.alloc(0);
  private parts: Buffer[] = [];
  private partBytes = 0;
  /** While a body is awaited: where it starts in the input, its declared length, the header. */
  private body?: { start: number; length: number; header: string; tail: string };

  constructor(private readonly report: (line: string) => void) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    try {
      const b = this.body;
      if (b && this.buf.length + this.partBytes + chunk.length < b.start + b.length) {
        // Mid-body: only look for the next frame's header (an overlong Content-Length).
        this.parts.push(chunk);
        this.partBytes += chunk.length;
        const text = b.tail + chunk.toString("latin1");
        b.tail = text.slice(-("content-length:".length - 1));
        if (!CONTENT_LENGTH.test(text)) return done();
      } else {
        this.parts.push(chunk);
        this.partBytes += chunk.length;
      }
      this.buf = Buffer.concat([this.buf, ...this.parts]);
      this.parts = [];
      this.partBytes = 0;
      this.drain();
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    this.buf = Buffer.concat([this.buf, ...this.parts]);
    if (this.buf.length > 0) this.discard(this.buf.length, "at the end of the input");
    done();
  }

  private drain(): void {
    for (;;) {
      if (this.body) {
        if (!this.takeBody(this.body)) return;
      } else if (!this.takeHeader()) return;
    }
  }

  /** Reads one header block; false when more bytes are needed. */
  private takeHeader(): boolean {
    const text = this.buf.toString("latin1", 0, Math.min(this.buf.length, 2 * MAX_HEADER_BYTES));
    const at = text.search(CONTENT_LENGTH);
    if (at < 0) {
      // Keep what may be the start of a header block split across chunks: header lines and a
      // partial one at the end.
      let keep = text.lastIndexOf("\n") + 1;
      if (!PARTIAL_HEADER_LINE.test(text.slice(keep))) {
        keep = Math.max(keep, text.length - ("content-length:".length - 1));
      } else {
        while (keep >= 2 && text.slice(keep - 2, keep) === "\r\n") {
          const lineStart = text.lastIndexOf("\n", keep - 3) + 1;
          if (keep - 3 < 0 || !HEADER_LINE.test(text.slice(lineStart, keep - 2))) break;
          keep = lineStart;
        }
      }
      if (text.length - keep > MAX_HEADER_BYTES) keep = text.length;
      if (keep > 0) this.discard(keep, "between frames");
      return false;
    }
    // Other header lines (Content-Type) may come before Content-Length in the same block.
    let start = at;
    while (start >= 2 && text.slice(start - 2, start) === "\r\n") {
      const lineStart = text.lastIndexOf("\n", start - 3) + 1;
      if (start - 3 < 0 || !HEADER_LINE.test(text.slice(lineStart, start - 2))) break;
      start = lineStart;
    }
    if (start > 0) {
      this.discard(start, "before a header");
      return true;
    }
    const end = text.indexOf("\r\n\r\n", at);
    if (end < 0) {
      if (text.length > MAX_HEADER_BYTES) this.discard(at + 1, "(a header block without its end)");
      return false;
    }
    const header = text.slice(0, end);
    const lines = header.split("\r\n");
    const lengthLine = lines.find((l) => CONTENT_LENGTH.test(l))!;
    const value = lengthLine.slice(lengthLine.indexOf(":") + 1).trim();
    const length = /^\d+$/.test(value) ? Number(value) : NaN;
    if (!lines.every((l) => HEADER_LINE.test(l)) || !(length <= MAX_FRAME_BYTES)) {
      this.discard(
        at + 1,
        Number.isNaN(length)
          ? "(a malformed header block)"
          : `(a Content-Length of ${length} bytes, over the ${MAX_FRAME_BYTES}-byte limit)`,
      );
      return true;
    }
    if (this.garbage.bytes > 0) this.discard(0, "before a header");
    this.body = { start: end + 4, length, header, tail: "" };
    return true;
  }

  /** Passes on or drops the awaited body; false when more bytes are needed. */
  private takeBody(b: NonNullable<FrameFilter["body"]>): boolean {
    const bodyEnd = b.start + b.length;
    if (this.buf.length >= bodyEnd) {
      const body = this.buf.subarray(b.start, bodyEnd);
      this.body = undefined;
      if (isJsonObject(body)) {
        this.push(Buffer.from(`${b.header}\r\n\r\n`, "latin1"));
        this.push(Buffer.from(body));
        this.buf = this.buf.subarray(bodyEnd);
      } else {
        // Resynchronise inside the bad body: the next frame may start there.
        this.discard(b.start, `(a frame whose ${b.length}-byte body is not JSON)`);
      }
      return true;
    }
    // Not all there yet. A declared length longer than the body shows as the next frame's
    // header arriving where the body should go on, right after a complete JSON value.
    const received = this.buf.toString("latin1", b.start);
    const pattern = new RegExp(CONTENT_LENGTH.source, "gi");
    for (let m = pattern.exec(received); m; m = pattern.exec(received)) {
      if (isJsonObject(this.buf.subarray(b.start, b.start + m.index))) {
        this.body = undefined;
        this.discard(
          b.start + m.index,
          `(a frame whose Content-Length ${b.length} runs past its ${m.index}-byte body)`,
        );
        return true;
      }
    }
    b.tail = received.slice(-("content-length:".length - 1));
    return false;
  }

  /** Dropped between frames and not yet reported: reported with what ends the run. */
  private garbage = { bytes: 0, preview: "" };

  /** Drops the first `n` bytes of the buffer, reporting what they were. */
  private discard(n: number, where: string): void {
    const bytes = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    const g = this.garbage;
    g.bytes += n;
    if (g.preview.length < 40) g.preview += bytes.toString("latin1", 0, 40 - g.preview.length);
    // A run of garbage arrives in pieces: one line for the run, once its end is known.
    if (where === "between frames") return;
    const preview = JSON.stringify(g.preview) + (g.bytes > g.preview.length ? "…" : "");
    this.report(`dropped ${g.bytes} byte${g.bytes === 1 ? "" : "s"} of input ${where}: ${preview}`);
    this.garbage = { bytes: 0, preview: "" };
  }
}

function isJsonObject(bytes: Uint8Array): boolean {
  try {
    const v: unknown = JSON.parse(Buffer.from(bytes).toString("utf8"));
    return typeof v === "object" && v !== null;
  } catch {
    return false;
  }
}
