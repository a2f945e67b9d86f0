/**
 * The VS Code client of the moe language server: starts `moec lsp --stdio` (`npx moec` in the
 * workspace folder by default, or the configured `moe.server.path`) and connects it to every
 * `.moe` document. `moe: Restart Language Server` restarts it, as does changing the settings.
 * `moec: Show model` shows `moec view`'s page of the active file (show-model.ts).
 */
import * as vscode from "vscode";
import {
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
} from "vscode-languageclient/node";
import { registerShowModel } from "./show-model";

let client: LanguageClient | undefined;

function serverOptions(): ServerOptions {
  const config = vscode.workspace.getConfiguration("moe");
  const configured = config.get<string>("server.path", "").trim();
  const extra = config.get<string[]>("server.args", []);
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  const command = configured || "npx";
  const args = [...(configured ? [] : ["--no", "moec"]), "lsp", "--stdio", ...extra];
  return {
    command,
    args,
    options: {
      cwd: folder,
      // npx is npx.cmd on Windows, which needs a shell.
      shell: process.platform === "win32" && !configured,
    },
  };
}

function clientOptions(): LanguageClientOptions {
  const config = vscode.workspace.getConfiguration("moe");
  return {
    documentSelector: [
      { scheme: "file", language: "moe" },
      { scheme: "untitled", language: "moe" },
    ],
    synchronize: {
      fileEvents: vscode.workspace.createFileSystemWatcher("**/*.moe"),
    },
    initializationOptions: { debounceMs: config.get<number>("check.debounceMs", 150) },
    outputChannelName: "moe language server",
  };
}

async function start(): Promise<void> {
  client = new LanguageClient("moe", "moe language server", serverOptions(), clientOptions());
  try {
    await client.start();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    void vscode.window.showErrorMessage(
      `moe: the language server did not start (${message}). Install moec in the workspace (npm install moec) or set "moe.server.path".`,
    );
  }
}

async function restart(): Promise<void> {
  if (client) {
    const old = client;
    client = undefined;
    await old.stop().catch(() => undefined);
  }
  await start();
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  context.subscriptions.push(
    vscode.commands.registerCommand("moe.restartServer", restart),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("moe.server") || e.affectsConfiguration("moe.check")) {
        void restart();
      }
    }),
  );
  registerShowModel(context);
  await start();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}
