/**
 * The moe language server (`moec lsp --stdio`): wires the protocol to the workspace and the
 * providers, one file per feature. Nothing but protocol messages goes to stdout; logs go to
 * the client's console (and stderr). The server never touches a GPU: it runs the front end
 * only (parse, resolve, check, elaborate), which is pure over the open buffers. Its stdin goes
 * through `FrameFilter`, so a malformed frame is dropped and reported, never the end of all
 * answers.
 */
import {
  CodeActionKind,
  type Connection,
  type InitializeParams,
  type InitializeResult,
  MessageType,
  ProposedFeatures,
  ResponseError,
  ShowMessageNotification,
  TextDocumentSyncKind,
  createConnection,
} from "vscode-languageserver/node";
import type { ParamReport } from "../../compiler/check/count-params.js";
import { codeActions } from "./code-action-provider.js";
import { codeLenses } from "./code-lens-provider.js";
import { completion } from "./completion-provider.js";
import { definition } from "./definition-provider.js";
import { toLspDiagnostics } from "./diagnostic-provider.js";
import { documentSymbols } from "./document-symbol-provider.js";
import { foldingRanges } from "./folding-range-provider.js";
import { formatDocument } from "./formatting-provider.js";
import { FrameFilter } from "./frame-filter.js";
import { hover } from "./hover-provider.js";
import { inlayHints } from "./inlay-hint-provider.js";
import { positionToOffset, uriToPath } from "./positions.js";
import { documentHighlights, references } from "./references-provider.js";
import { prepareRename, rename } from "./rename-provider.js";
import { semanticTokens, semanticTokensLegend } from "./semantic-tokens-provider.js";
import { signatureHelp } from "./signature-help-provider.js";
import { type DocumentView, MAX_ANALYSED_CHARS, Workspace } from "./workspace.js";
import { workspaceSymbols } from "./workspace-symbol-provider.js";

/** `initializationOptions` the server understands. */
export interface ServerOptions {
  /** Delay between the last keystroke and the re-check (default 150 ms). */
  debounceMs?: number;
}

/** What `moec/status` answers (tests and benchmarks wait on it). */
export interface DocumentStatus {
  version: number | undefined;
  analysedVersion: number | undefined;
  pending: boolean;
  elapsedMs: number | undefined;
  parses: { hits: number; incremental: number; full: number };
  checks: { full: number; incremental: number; lastChecked: number } | undefined;
}

export function startServer(given?: Connection): Connection {
  // Anything printed by accident would corrupt the protocol stream.
  console.log = (...args: unknown[]) => console.error(...args);
  console.info = console.log;
  // Bad input is reported on stderr at once (the client may never read a message about it)
  // and in the client's log.
  const filter = new FrameFilter((line) => {
    process.stderr.write(`moec lsp: ${line}\n`);
    if (listening) connection.console.warn(`moec: ${line}`);
  });
  let listening = false;
  const connection =
    given ?? createConnection(ProposedFeatures.all, process.stdin.pipe(filter), process.stdout);
  const toldTooLarge = new Set<string>();

  const lastReports = new Map<string, Map<string, ParamReport>>();
  let refresh = { semanticTokens: false, inlayHints: false, codeLens: false };

  const workspace = new Workspace({
    publish(uri, version, file, analysis) {
      const diagnostics = analysis
        ? toLspDiagnostics(
            analysis,
            file,
            (f) => workspace.uriOf(f),
            (f) => workspace.isStdlib(f),
          )
        : [];
      void connection.sendDiagnostics(
        version === undefined ? { uri, diagnostics } : { uri, version, diagnostics },
      );
    },
    clear(uri) {
      void connection.sendDiagnostics({ uri, diagnostics: [] });
    },
    analyzed(doc, analysis) {
      if (analysis.models.length > 0) {
        const reports = lastReports.get(doc.uri) ?? new Map<string, ParamReport>();
        for (const [name, r] of analysis.paramReports()) reports.set(name, r);
        lastReports.set(doc.uri, reports);
      }
      if (doc.answering !== analysis) return;
      if (refresh.semanticTokens) void connection.languages.semanticTokens.refresh();
      if (refresh.inlayHints) void connection.languages.inlayHint.refresh();
      if (refresh.codeLens) void connection.sendRequest("workspace/codeLens/refresh");
    },
    tooLarge(doc) {
      if (toldTooLarge.has(doc.uri)) return;
      toldTooLarge.add(doc.uri);
      const mb = (doc.text.length / 1e6).toFixed(1);
      // A notification: the request form's reply is not needed, and a client may not answer it.
      void connection.sendNotification(ShowMessageNotification.type, {
        type: MessageType.Warning,
        message: `moec: ${doc.uri.split("/").pop()} is ${mb} MB, over the ${MAX_ANALYSED_CHARS / (1024 * 1024)} MiB the language server analyses: no diagnostics, hover, completion or other answers for it while it stays that large (\`moec check\` checks it).`,
      });
    },
    log(message) {
      connection.console.error(message);
    },
  });

  connection.onInitialize((params: InitializeParams): InitializeResult => {
    const options = (params.initializationOptions ?? {}) as ServerOptions;
    if (typeof options.debounceMs === "number") workspace.debounceMs = options.debounceMs;
    const roots =
      params.workspaceFolders?.map((f) => f.uri) ?? (params.rootUri ? [params.rootUri] : []);
    workspace.roots = roots.filter((u) => u.startsWith("file:")).map(uriToPath);
    const ws = params.capabilities.workspace;
    refresh = {
      semanticTokens: ws?.semanticTokens?.refreshSupport === true,
      inlayHints: ws?.inlayHint?.refreshSupport === true,
      codeLens: ws?.codeLens?.refreshSupport === true,
    };
    return {
      capabilities: {
        textDocumentSync: { openClose: true, change: TextDocumentSyncKind.Incremental },
        hoverProvider: true,
        definitionProvider: true,
        referencesProvider: true,
        documentHighlightProvider: true,
        completionProvider: { triggerCharacters: [".", ":", "(", ",", "[", "{"] },
        signatureHelpProvider: { triggerCharacters: ["(", ","], retriggerCharacters: [":"] },
        documentSymbolProvider: true,
        workspaceSymbolProvider: true,
        renameProvider: { prepareProvider: true },
        semanticTokensProvider: { legend: semanticTokensLegend, full: true },
        foldingRangeProvider: true,
        codeActionProvider: { codeActionKinds: [CodeActionKind.QuickFix] },
        inlayHintProvider: true,
        codeLensProvider: { resolveProvider: false },
        documentFormattingProvider: true,
      },
      serverInfo: { name: "moec", version: "0.1.0" },
    };
  });

  connection.onDidOpenTextDocument(({ textDocument: d }) => {
    workspace.open(d.uri, d.languageId, d.version, d.text);
  });
  connection.onDidChangeTextDocument(({ textDocument, contentChanges }) => {
    workspace.change(textDocument.uri, textDocument.version, contentChanges);
  });
  connection.onDidCloseTextDocument(({ textDocument }) => {
    workspace.close(textDocument.uri);
    lastReports.delete(textDocument.uri);
  });
  connection.onDidChangeWatchedFiles(() => workspace.filesChanged());

  /** Runs a request against the document's view; errors are logged, never thrown at the client. */
  const withView = <T>(uri: string, fallback: T, f: (view: DocumentView) => T): T =>
    guarded(fallback, () => {
      const view = workspace.view(uri);
      return view ? f(view) : fallback;
    });
  /** The same for a request at a position (`f` gets its offset in the current text). */
  const withViewAt = <T>(
    uri: string,
    position: { line: number; character: number },
    fallback: T,
    f: (view: DocumentView, offset: number) => T,
  ): T =>
    guarded(fallback, () => {
      const doc = workspace.documents.get(uri);
      if (!doc || workspace.tooLarge(doc)) return fallback;
      const offset = positionToOffset(doc.lineMap, position);
      const view = workspace.view(uri, offset);
      return view ? f(view, offset) : fallback;
    });
  const guarded = <T>(fallback: T, f: () => T): T => {
    try {
      return f();
    } catch (err) {
      if (err instanceof ResponseError) throw err;
      connection.console.error(
        `moec: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`,
      );
      return fallback;
    }
  };
  connection.onHover(({ textDocument, position }) =>
    withViewAt(textDocument.uri, position, null, hover),
  );
  connection.onDefinition(({ textDocument, position }) =>
    withViewAt(textDocument.uri, position, null, definition),
  );
  connection.onReferences(({ textDocument, position, context }) =>
    withViewAt(textDocument.uri, position, [], (v, o) =>
      references(v, o, context.includeDeclaration),
    ),
  );
  connection.onDocumentHighlight(({ textDocument, position }) =>
    withViewAt(textDocument.uri, position, [], documentHighlights),
  );
  connection.onCompletion(({ textDocument, position }) =>
    withViewAt(textDocument.uri, position, { isIncomplete: false, items: [] }, completion),
  );
  connection.onSignatureHelp(({ textDocument, position }) =>
    withViewAt(textDocument.uri, position, null, signatureHelp),
  );
  connection.onDocumentSymbol(({ textDocument }) =>
    withView(textDocument.uri, [], documentSymbols),
  );
  connection.onWorkspaceSymbol(({ query }) => workspaceSymbols(workspace, query));
  connection.onPrepareRename(({ textDocument, position }) =>
    withViewAt(textDocument.uri, position, null, prepareRename),
  );
  connection.onRenameRequest(({ textDocument, position, newName }) =>
    withViewAt(textDocument.uri, position, null, (v, o) => rename(v, o, newName)),
  );
  connection.languages.semanticTokens.on(({ textDocument }) =>
    withView(textDocument.uri, { data: [] }, semanticTokens),
  );
  connection.onFoldingRanges(({ textDocument }) => withView(textDocument.uri, [], foldingRanges));
  connection.onCodeAction(({ textDocument, context }) =>
    withView(textDocument.uri, [], (v) => codeActions(v, context.diagnostics)),
  );
  connection.languages.inlayHint.on(({ textDocument, range }) =>
    withView(textDocument.uri, [], (v) => inlayHints(v, range)),
  );
  connection.onCodeLens(({ textDocument }) =>
    withView(textDocument.uri, [], (v) =>
      codeLenses(v, lastReports.get(v.document.uri) ?? new Map()),
    ),
  );
  connection.onDocumentFormatting(async ({ textDocument }) => {
    const doc = workspace.documents.get(textDocument.uri);
    try {
      return doc && !workspace.tooLarge(doc) ? await formatDocument(doc) : [];
    } catch (err) {
      connection.console.error(
        `moec: formatting failed: ${err instanceof Error ? err.message : String(err)}`,
      );
      return [];
    }
  });

  connection.onRequest("moec/status", ({ uri }: { uri: string }): DocumentStatus => {
    const doc = workspace.documents.get(uri);
    return {
      version: doc?.doc.version,
      analysedVersion: doc?.latest?.version,
      pending: doc?.timer !== undefined,
      elapsedMs: doc?.latest?.elapsedMs,
      parses: { ...workspace.parseCache.stats },
      checks: doc ? { ...doc.checkCache.stats } : undefined,
    };
  });

  connection.listen();
  listening = true;
  return connection;
}
