import * as vscode from 'vscode';
import { CanvasPreview } from './canvasPreview';
import { DiffgemmaSession, type ClientFactory } from './session';
import { completionsEnabled, SECTION } from './settings';
import { SHOW_LOG_COMMAND, StatusIndicator } from './statusIndicator';

/** The commands contributed in package.json, besides the server's own (registered by the language client). */
export const COMMANDS = {
  enable: 'diffgemma.enable',
  disable: 'diffgemma.disable',
  toggle: 'diffgemma.toggle',
  restartServer: 'diffgemma.restartServer',
  showLog: SHOW_LOG_COMMAND,
} as const;

async function setEnabled(enabled: boolean): Promise<void> {
  await vscode.workspace.getConfiguration(SECTION).update('enable', enabled, vscode.ConfigurationTarget.Global);
}

/** Builds the extension's parts, registers its commands and listeners on `context`, and starts the server. */
export async function activateWith(context: vscode.ExtensionContext, createClient: ClientFactory): Promise<DiffgemmaSession> {
  const log = vscode.window.createOutputChannel('DiffGemma', { log: true });
  const status = new StatusIndicator(
    vscode.window.createStatusBarItem('diffgemma.status', vscode.StatusBarAlignment.Right, 100),
    completionsEnabled(vscode.workspace.getConfiguration(SECTION)),
  );
  const canvas = new CanvasPreview();
  const session = new DiffgemmaSession(createClient, status, canvas, log);
  context.subscriptions.push(
    log,
    status,
    canvas,
    session,
    vscode.commands.registerCommand(COMMANDS.enable, () => setEnabled(true)),
    vscode.commands.registerCommand(COMMANDS.disable, () => setEnabled(false)),
    vscode.commands.registerCommand(COMMANDS.toggle, () =>
      setEnabled(!completionsEnabled(vscode.workspace.getConfiguration(SECTION))),
    ),
    vscode.commands.registerCommand(COMMANDS.restartServer, () => session.restart()),
    vscode.commands.registerCommand(COMMANDS.showLog, () => log.show()),
    vscode.workspace.onDidChangeConfiguration((event) => session.onConfigurationChanged(event)),
    vscode.workspace.onDidChangeTextDocument((event) => {
      if (event.document.uri.toString() === canvas.shownUri) {
        canvas.clear();
      }
    }),
  );
  await session.start();
  return session;
}
