/**
 * A protocol-level test client: starts the real server process (`moec lsp --stdio`) and talks
 * to it over its stdio with vscode-jsonrpc, as an editor would. Sources use cursor markers:
 * `<|>` marks a position, stripped from the text (`withCursors`).
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import {
  type MessageConnection,
  StreamMessageReader,
  StreamMessageWriter,
  createMessageConnection,
} from "vscode-jsonrpc/node";
import type {
  InitializeResult,
  Position,
  PublishDiagnosticsParams,
  TextDocumentContentChangeEvent,
} from "vscode-languageserver";

export const repoRoot = path.resolve(import.meta.dirname, "../..");

export function fileUri(file: string): string {
  return pathToFileURL(path.resolve(file)).href;
}

/** Text with every `<|>` removed, and the positions they marked. */
export function withCursors(source: string): {
  text: string;
  cursors: Position[];
  offsets: number[];
} {
  const parts = source.split("<|>");
  let text = "";
  const offsets: number[] = [];
  parts.forEach((p, i) => {
    if (i > 0) offsets.push(text.length);
    text += p;
  });
  const cursors = offsets.map((o) => positionAt(text, o));
  return { text, cursors, offsets };
}

export function positionAt(text: string, offset: number): Position {
  const before = text.slice(0, offset);
  const line = before.split("\n").length - 1;
  return { line, character: offset - (before.lastIndexOf("\n") + 1) };
}

/** The position of the `n`th occurrence of `needle` in `text` (plus `delta` characters). */
export function positionOf(text: string, needle: string, delta = 0, n = 0): Position {
  let at = -1;
  for (let i = 0; i <= n; i++) {
    at = text.indexOf(needle, at + 1);
    if (at < 0) throw new Error(`\`${needle}\` not found`);
  }
  return positionAt(text, at + delta);
}

export class LspClient {
  readonly diagnostics = new Map<string, PublishDiagnosticsParams>();
  private readonly waiters: (() => void)[] = [];
  private versions = new Map<string, number>();
  stderr = "";
  /** `window/logMessage` notifications (the server logs internal errors there). */
  logs: { type: number; message: string }[] = [];
  /** `window/showMessage` notifications. */
  messages: { type: number; message: string }[] = [];

  private constructor(
    readonly child: ChildProcess,
    readonly connection: MessageConnection,
    readonly initializeResult: InitializeResult,
  ) {}

  static async start(
    options: { rootDir?: string; debounceMs?: number; capabilities?: object } = {},
  ): Promise<LspClient> {
    // MOEC_LSP_BUILT=1 runs the compiled server (`npm run build` first), as `npx moec` does.
    const cli =
      process.env["MOEC_LSP_BUILT"] === "1"
        ? [path.join(repoRoot, "bin/moec.js")]
        : ["--import", "tsx", path.join(repoRoot, "cli/main.ts")];
    const child = spawn(process.execPath, [...cli, "lsp", "--stdio"], {
      cwd: repoRoot,
      stdio: ["pipe", "pipe", "pipe"],
    });
    const connection = createMessageConnection(
      new StreamMessageReader(child.stdout!),
      new StreamMessageWriter(child.stdin!),
    );
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const pending: PublishDiagnosticsParams[] = [];
    let client: LspClient | undefined;
    connection.onNotification("textDocument/publishDiagnostics", (p: PublishDiagnosticsParams) => {
      if (client) client.received(p);
      else pending.push(p);
    });
    const logs: { type: number; message: string }[] = [];
    connection.onNotification("window/logMessage", (m: { type: number; message: string }) => {
      logs.push(m);
    });
    const messages: { type: number; message: string }[] = [];
    connection.onNotification("window/showMessage", (m: { type: number; message: string }) => {
      messages.push(m);
    });
    connection.onRequest("workspace/codeLens/refresh", () => null);
    connection.onRequest("workspace/semanticTokens/refresh", () => null);
    connection.onRequest("workspace/inlayHint/refresh", () => null);
    connection.listen();
    const root = options.rootDir ?? path.join(repoRoot, "examples");
    const result = (await connection.sendRequest("initialize", {
      processId: process.pid,
      rootUri: fileUri(root),
      workspaceFolders: [{ uri: fileUri(root), name: path.basename(root) }],
      capabilities: options.capabilities ?? {},
      initializationOptions: { debounceMs: options.debounceMs ?? 10 },
    })) as InitializeResult;
    await connection.sendNotification("initialized", {});
    client = new LspClient(child, connection, result);
    client.logs = logs;
    client.messages = messages;
    client.stderr = stderr;
    child.stderr!.on("data", (d: Buffer) => (client!.stderr += d.toString()));
    for (const p of pending) client.received(p);
    return client;
  }

  private received(p: PublishDiagnosticsParams): void {
    this.diagnostics.set(p.uri, p);
    for (const w of this.waiters.splice(0)) w();
  }

  request<T>(method: string, params: unknown): Promise<T> {
    return this.connection.sendRequest(method, params) as Promise<T>;
  }

  async open(uri: string, text: string): Promise<void> {
    this.versions.set(uri, 1);
    this.diagnostics.delete(uri);
    await this.connection.sendNotification("textDocument/didOpen", {
      textDocument: { uri, languageId: "moe", version: 1, text },
    });
  }

  async change(uri: string, changes: TextDocumentContentChangeEvent[]): Promise<number> {
    const version = (this.versions.get(uri) ?? 1) + 1;
    this.versions.set(uri, version);
    await this.connection.sendNotification("textDocument/didChange", {
      textDocument: { uri, version },
      contentChanges: changes,
    });
    return version;
  }

  async close(uri: string): Promise<void> {
    await this.connection.sendNotification("textDocument/didClose", { textDocument: { uri } });
  }

  /** Waits until diagnostics for `uri` arrive (for `version` or later, when given). */
  async waitForDiagnostics(
    uri: string,
    predicate: (p: PublishDiagnosticsParams) => boolean = () => true,
    timeoutMs = 20_000,
  ): Promise<PublishDiagnosticsParams> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const p = this.diagnostics.get(uri);
      if (p && predicate(p)) return p;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no diagnostics for ${uri}; server stderr:\n${this.stderr}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits until the server has analysed the current version of `uri`. */
  async settled(uri: string): Promise<void> {
    const version = this.versions.get(uri) ?? 1;
    await this.waitForDiagnostics(uri, (p) => (p.version ?? 0) >= version);
  }

  async stop(): Promise<void> {
    try {
      await this.request("shutdown", null);
      await this.connection.sendNotification("exit");
    } catch {
      // the process may already be gone
    }
    const exited = new Promise<void>((resolve) => {
      if (this.child.exitCode !== null) resolve();
      else this.child.once("exit", () => resolve());
    });
    const timer = setTimeout(() => this.child.kill(), 3000);
    await exited;
    clearTimeout(timer);
    this.connection.dispose();
  }
}
