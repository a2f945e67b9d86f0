/**
 * The server's state: open documents (the editor's buffers, an overlay over the disk), one
 * analysis per open document, debounced re-checks, and on-demand analyses of the other
 * `.moe` files of the workspace (for references and rename across files).
 *
 * Requests do not wait for a re-check where they need not: they are answered from the last
 * analysis of a document without syntax errors, with offsets mapped through the edits made
 * since (`EditLog`). A request at a position inside text changed since (a whole-text change
 * replaces all of it) runs the pending re-check first, so it is answered from the new text.
 *
 * Documents over `MAX_ANALYSED_CHARS` are not analysed at all (the front end takes seconds on
 * megabytes, and every answer would wait on it): their requests answer nothing, and the
 * server says so once (`WorkspaceEvents.tooLarge`).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { TextDocumentContentChangeEvent } from "vscode-languageserver/node";
import { TextDocument } from "vscode-languageserver-textdocument";
import type { LineMap } from "../../compiler/diagnostics.js";
import type { FileSystemView } from "../../compiler/check/load-modules.js";
import { nodeFileSystem } from "../../compiler/pipeline.js";
import type { Span } from "../../grammar/ast.js";
import { type EditorAnalysis, analyzeDocument } from "./analysis.js";
import { CheckCache } from "./check-cache.js";
import { ParseCache } from "./parse-cache.js";
import { EditLog, lineMapFor, pathToUri, spanToRange, uriToPath } from "./positions.js";

/** One open document. */
export class OpenDocument {
  /** The most recent analysis (its diagnostics are the ones shown). */
  latest?: EditorAnalysis;
  /** The analysis requests are answered from: the latest one whose text had no syntax errors. */
  answering?: EditorAnalysis;
  /** Changes made since `answering` was analysed. */
  edits = new EditLog();
  timer?: NodeJS.Timeout;
  /** Per-body check results of this document, reused across edits. */
  readonly checkCache = new CheckCache();

  constructor(
    readonly uri: string,
    readonly path: string,
    public doc: TextDocument,
  ) {}

  get text(): string {
    return this.doc.getText();
  }

  get lineMap(): LineMap {
    return lineMapFor(this.path, this.doc.getText());
  }
}

/** What a request sees: a document, the analysis that answers it, and the offset mapping. */
export class DocumentView {
  constructor(
    readonly document: OpenDocument,
    readonly analysis: EditorAnalysis,
    readonly workspace: Workspace,
  ) {}

  get file(): string {
    return this.document.path;
  }

  /** An offset of the current text in the analysed text (undefined inside new text). */
  toAnalysis(offset: number): number | undefined {
    return this.document.edits.toOld(offset);
  }

  /** An analysed span of any file as a protocol location in the current texts. */
  location(
    file: string,
    span: Span,
  ): { uri: string; range: ReturnType<typeof spanToRange> } | undefined {
    if (file === this.document.path) {
      const s = this.document.edits.spanToNew(span);
      return s
        ? { uri: this.document.uri, range: spanToRange(this.document.lineMap, s) }
        : undefined;
    }
    return this.workspace.location(file, span, this.analysis);
  }
}

/**
 * The largest document the server analyses (characters). Hand-written models are a few
 * kilobytes and the generated 10,000-line benchmark file 250 KB; a 5 MB file takes the front end
 * tens of seconds, which every answer would wait behind.
 */
export const MAX_ANALYSED_CHARS = 1024 * 1024;

export interface WorkspaceEvents {
  /** Diagnostics to show for a URI (an open document, or a closed file its importers check). */
  publish(
    uri: string,
    version: number | undefined,
    file: string,
    analysis: EditorAnalysis | undefined,
  ): void;
  /** Clears the diagnostics of a closed file no open document imports any more. */
  clear(uri: string): void;
  /** After each analysis (the server refreshes semantic tokens, lenses, inlay hints). */
  analyzed(doc: OpenDocument, analysis: EditorAnalysis): void;
  /** A document is over `MAX_ANALYSED_CHARS`: not analysed while it stays so. */
  tooLarge(doc: OpenDocument): void;
  log(message: string): void;
}

export class Workspace {
  readonly documents = new Map<string, OpenDocument>();
  readonly overlay = new Map<string, string>();
  readonly parseCache = new ParseCache();
  readonly fsView: FileSystemView;
  readonly stdlibDir: string;
  roots: string[] = [];
  debounceMs = 150;
  private readonly closedAnalyses = new Map<string, EditorAnalysis>();
  private readonly publishedClosed = new Set<string>();
  private fileList?: string[];

  constructor(private readonly events: WorkspaceEvents) {
    this.fsView = nodeFileSystem(this.overlay);
    this.stdlibDir = path.resolve(this.fsView.stdlibDir);
  }

  isStdlib(file: string): boolean {
    return path.resolve(file).startsWith(this.stdlibDir + path.sep);
  }

  uriOf(file: string): string {
    for (const d of this.documents.values()) if (d.path === file) return d.uri;
    return pathToUri(file);
  }

  // ------------------------------------------------------------------------ documents

  open(uri: string, languageId: string, version: number, text: string): void {
    const file = uriToPath(uri);
    const doc = new OpenDocument(uri, file, TextDocument.create(uri, languageId, version, text));
    this.documents.set(uri, doc);
    this.overlay.set(file, text);
    this.invalidate();
    this.schedule(doc, 0);
  }

  change(uri: string, version: number, changes: TextDocumentContentChangeEvent[]): void {
    const doc = this.documents.get(uri);
    if (!doc) return;
    for (const c of changes) {
      const before = doc.doc;
      if ("range" in c) {
        const start = before.offsetAt(c.range.start);
        const end = before.offsetAt(c.range.end);
        doc.edits.changes.push({ start, end, length: c.text.length });
      } else {
        doc.edits.changes.push({ start: 0, end: before.getText().length, length: c.text.length });
      }
      doc.doc = TextDocument.update(before, [c], version);
    }
    this.overlay.set(doc.path, doc.text);
    this.invalidate();
    this.schedule(doc, this.debounceMs);
  }

  close(uri: string): void {
    const doc = this.documents.get(uri);
    if (!doc) return;
    if (doc.timer) clearTimeout(doc.timer);
    this.documents.delete(uri);
    this.overlay.delete(doc.path);
    this.invalidate();
    this.events.clear(uri);
    // Importers now see the file on disk; their re-check publishes its problems, if any.
    let imported = false;
    for (const other of this.documents.values()) {
      if (other.latest?.graph.modules.has(doc.path)) {
        this.schedule(other, this.debounceMs);
        imported = true;
      }
    }
    if (!imported) this.publishClosedFiles();
  }

  /** Files changed on disk: every open document is checked again. */
  filesChanged(): void {
    this.fileList = undefined;
    this.invalidate();
    for (const d of this.documents.values()) this.schedule(d, this.debounceMs);
  }

  private invalidate(): void {
    this.closedAnalyses.clear();
  }

  /** Whether a document is too large to analyse (`MAX_ANALYSED_CHARS`). */
  tooLarge(doc: OpenDocument): boolean {
    return doc.doc.getText().length > MAX_ANALYSED_CHARS;
  }

  schedule(doc: OpenDocument, delayMs: number): void {
    if (doc.timer) clearTimeout(doc.timer);
    doc.timer = undefined;
    if (this.tooLarge(doc)) {
      // Nothing stale may answer for it either.
      doc.latest = doc.answering = undefined;
      doc.edits = new EditLog();
      this.events.clear(doc.uri);
      this.events.tooLarge(doc);
      return;
    }
    doc.timer = setTimeout(() => {
      doc.timer = undefined;
      if (this.documents.get(doc.uri) !== doc) return;
      try {
        this.recheck(doc);
      } catch (err) {
        this.events.log(`moec: internal error while checking ${doc.path}: ${String(err)}`);
      }
    }, delayMs);
  }

  /** Checks a document now (its importers are scheduled after it). */
  recheck(doc: OpenDocument): EditorAnalysis {
    // The document's previous AST is read by nobody once this analysis replaces the last one,
    // so its reparse may move the unchanged items in place (other modules' parses are shared).
    const parse = this.parseCache.forEntry(doc.path);
    const analysis = analyzeDocument(doc.path, doc.doc.version, this.fsView, parse, doc.checkCache);
    doc.latest = analysis;
    if (!analysis.syntaxErrors || !doc.answering) {
      doc.answering = analysis;
      doc.edits = new EditLog();
    }
    this.events.publish(doc.uri, doc.doc.version, doc.path, analysis);
    this.publishClosedFiles();
    for (const other of this.documents.values()) {
      if (other !== doc && other.latest?.graph.modules.has(doc.path)) {
        this.schedule(other, this.debounceMs);
      }
    }
    this.events.analyzed(doc, analysis);
    if (doc.checkCache.needsWarmup) {
      // Per-body results for the next edit, computed while the user is not typing.
      setTimeout(() => {
        if (doc.latest === analysis && doc.timer === undefined) {
          doc.checkCache.warm(analysis.program, doc.path);
        }
      }, this.debounceMs);
    }
    return analysis;
  }

  /**
   * Closed files with problems, as the open documents that import them see them (the CLI
   * reports an imported file's errors too).
   */
  private publishClosedFiles(): void {
    const seen = new Map<string, EditorAnalysis>();
    const open = new Set([...this.documents.values()].map((d) => d.path));
    for (const d of this.documents.values()) {
      const a = d.latest;
      if (!a) continue;
      for (const file of a.graph.modules.keys()) {
        if (open.has(file) || this.isStdlib(file) || seen.has(file)) continue;
        seen.set(file, a);
      }
    }
    for (const [file, a] of seen) this.events.publish(this.uriOf(file), undefined, file, a);
    for (const file of this.publishedClosed) {
      if (!seen.has(file)) this.events.clear(this.uriOf(file));
    }
    this.publishedClosed.clear();
    for (const file of seen.keys()) this.publishedClosed.add(file);
  }

  // ------------------------------------------------------------------------ views

  /**
   * The view a request on `uri` (at `offset` of its current text, when it has a position) is
   * answered from; undefined for a document not open or too large to analyse.
   */
  view(uri: string, offset?: number): DocumentView | undefined {
    const doc = this.documents.get(uri);
    if (!doc || this.tooLarge(doc)) return undefined;
    if (!doc.answering) this.recheck(doc);
    else if (doc.timer && offset !== undefined && doc.edits.toOld(offset) === undefined) {
      // The position is in text the last analysis never saw: run the pending re-check now
      // (it is due within the debounce anyway) rather than answer nothing.
      clearTimeout(doc.timer);
      doc.timer = undefined;
      this.recheck(doc);
    }
    return new DocumentView(doc, doc.answering!, this);
  }

  /** An analysis with `file` as entry: the open document's, or one made on demand. */
  analysisOf(file: string): EditorAnalysis | undefined {
    for (const d of this.documents.values()) {
      if (d.path === file) return this.tooLarge(d) ? undefined : (d.answering ?? this.recheck(d));
    }
    let a = this.closedAnalyses.get(file);
    if (!a) {
      const text = this.fsView.readFile(file);
      if (text === undefined || text.length > MAX_ANALYSED_CHARS) return undefined;
      a = analyzeDocument(file, -1, this.fsView, this.parseCache.parse);
      this.closedAnalyses.set(file, a);
    }
    return a;
  }

  /** A span of a file as a location, with the text the analysis saw. */
  location(
    file: string,
    span: Span,
    analysis: EditorAnalysis,
  ): { uri: string; range: ReturnType<typeof spanToRange> } | undefined {
    for (const d of this.documents.values()) {
      if (d.path === file && d.answering === analysis) {
        const s = d.edits.spanToNew(span);
        return s ? { uri: d.uri, range: spanToRange(d.lineMap, s) } : undefined;
      }
    }
    const text = analysis.textOf(file) ?? this.fsView.readFile(file);
    if (text === undefined) return undefined;
    return { uri: this.uriOf(file), range: spanToRange(lineMapFor(file, text), span) };
  }

  /** The text an edit to `uri` applies to: the open buffer, or the file on disk. */
  textForEdit(uri: string, file: string): string | undefined {
    const doc = this.documents.get(uri);
    return doc ? doc.text : this.fsView.readFile(file);
  }

  // ------------------------------------------------------------------------ files

  /** Every `.moe` file under the workspace roots (and every open document). */
  workspaceFiles(): string[] {
    if (!this.fileList) {
      const out = new Set<string>();
      for (const root of this.roots) scan(root, out, 0);
      this.fileList = [...out].sort();
    }
    const all = new Set(this.fileList);
    for (const d of this.documents.values()) all.add(d.path);
    return [...all];
  }

  /**
   * Analyses that may mention declarations of `file`: the file's own and every workspace
   * file that imports it, directly or not.
   */
  analysesSeeing(file: string): EditorAnalysis[] {
    const out: EditorAnalysis[] = [];
    const own = this.analysisOf(file);
    if (own) out.push(own);
    for (const f of this.workspaceFiles()) {
      if (f === file) continue;
      const text = this.fsView.readFile(f);
      // Only files with an import can see another file's declarations.
      if (text === undefined || !text.includes("import")) continue;
      const a = this.analysisOf(f);
      if (a?.graph.modules.has(file)) out.push(a);
    }
    return out;
  }
}

const SKIP_DIRS = new Set(["node_modules", "dist", ".git", ".bench-build", ".moec-cache"]);

function scan(dir: string, out: Set<string>, depth: number): void {
  if (depth > 12 || out.size > 5000) return;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    if (e.name.startsWith(".") || SKIP_DIRS.has(e.name)) continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory()) scan(full, out, depth + 1);
    else if (e.isFile() && e.name.endsWith(".moe")) out.add(path.resolve(full));
  }
}
