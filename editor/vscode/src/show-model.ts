/**
 * `moec: Show model`: runs `moec view` on the active `.moe` file (the same moec the language
 * server runs: `moe.server.path`, or `npx --no moec` in the workspace folder) and shows the
 * page in a webview beside the editor. Source links in the page open the file at the line.
 * Saving the file redraws an open panel.
 */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as vscode from "vscode";

let panel: vscode.WebviewPanel | undefined;
let shown: string | undefined;

function moecCommand(): { command: string; args: string[]; shell: boolean } {
  const config = vscode.workspace.getConfiguration("moe");
  const configured = config.get<string>("server.path", "").trim();
  return {
    command: configured || "npx",
    args: configured ? [] : ["--no", "moec"],
    // npx is npx.cmd on Windows, which needs a shell.
    shell: process.platform === "win32" && !configured,
  };
}

/** Runs `moec view FILE -o TMP` and returns the page, or throws with moec's message. */
function runView(file: string): Promise<string> {
  const { command, args, shell } = moecCommand();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-view-"));
  const out = path.join(dir, "view.html");
  const folder =
    vscode.workspace.getWorkspaceFolder(vscode.Uri.file(file))?.uri.fsPath ?? path.dirname(file);
  return new Promise((resolve, reject) => {
    execFile(
      command,
      [...args, "view", file, "-o", out],
      { cwd: folder, shell, timeout: 120_000, maxBuffer: 4 << 20 },
      (err, _stdout, stderr) => {
        try {
          if (err) {
            const line = stderr
              .split("\n")
              .filter((l) => l.startsWith("moec:"))
              .pop();
            reject(new Error(line ?? err.message));
            return;
          }
          resolve(fs.readFileSync(out, "utf8"));
        } catch (e) {
          reject(e instanceof Error ? e : new Error(String(e)));
        } finally {
          fs.rmSync(dir, { recursive: true, force: true });
        }
      },
    );
  });
}

async function show(file: string): Promise<void> {
  let html: string;
  try {
    html = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: "moec view" },
      () => runView(file),
    );
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    void vscode.window.showErrorMessage(`moec: Show model: ${message}`);
    return;
  }
  if (!panel) {
    panel = vscode.window.createWebviewPanel(
      "moecView",
      `Model: ${path.basename(file)}`,
      { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true },
      // The page is self-contained: its inline script only opens and closes boxes and
      // forwards source-link clicks; it loads nothing.
      { enableScripts: true, localResourceRoots: [] },
    );
    panel.onDidDispose(() => {
      panel = undefined;
      shown = undefined;
    });
    panel.webview.onDidReceiveMessage(
      async (msg: { command?: string; file?: string; line?: number; column?: number }) => {
        if (msg.command !== "open" || typeof msg.file !== "string") return;
        const doc = await vscode.workspace.openTextDocument(vscode.Uri.file(msg.file));
        const pos = new vscode.Position(
          Math.max(0, (msg.line ?? 1) - 1),
          Math.max(0, (msg.column ?? 1) - 1),
        );
        await vscode.window.showTextDocument(doc, {
          viewColumn: vscode.ViewColumn.One,
          selection: new vscode.Range(pos, pos),
        });
      },
    );
  }
  panel.title = `Model: ${path.basename(file)}`;
  panel.webview.html = html;
  shown = file;
  panel.reveal(vscode.ViewColumn.Beside, true);
}

export function registerShowModel(context: vscode.ExtensionContext): void {
  context.subscriptions.push(
    vscode.commands.registerCommand("moe.showModel", async (uri?: vscode.Uri) => {
      const file = uri?.fsPath ?? vscode.window.activeTextEditor?.document.uri.fsPath;
      if (!file || !file.endsWith(".moe")) {
        void vscode.window.showErrorMessage("moec: Show model: open a .moe file first");
        return;
      }
      const doc = vscode.workspace.textDocuments.find((d) => d.uri.fsPath === file);
      if (doc?.isDirty) await doc.save();
      await show(file);
    }),
    vscode.workspace.onDidSaveTextDocument((doc) => {
      if (panel && shown === doc.uri.fsPath) void show(doc.uri.fsPath);
    }),
  );
}
