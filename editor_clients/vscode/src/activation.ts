import * as vscode from 'vscode';
import { CanvasPreview } from './canvasPreview';
import { COMMANDS, HIDE_INLINE_SUGGESTION_COMMAND } from './commands';
import { pickSnoozeMinutes, showMenu } from './menu';
import { DiffgemmaSession, type ClientFactory } from './session';
import { ALL_LANGUAGES, completionsEnabled, SECTION, withEnableEntry } from './settings';
import { Snooze, SYSTEM_CLOCK, type Clock } from './snooze';
import { StatusIndicator } from './statusIndicator';

export { COMMANDS } from './commands';

/**
 * Sets one entry (`*` or a language id) of `diffgemma.enable`, keeping the others, at the scope the setting is
 * in effect from: the workspace's value when it has one (it overrides the user's), else the user's.
 */
async function setEnableEntry(key: string, enabled: boolean): Promise<void> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const inspected = config.inspect<unknown>('enable');
  const inWorkspace = inspected?.workspaceValue !== undefined;
  const current = inWorkspace ? inspected?.workspaceValue : inspected?.globalValue;
  const target = inWorkspace ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
  await config.update('enable', withEnableEntry(current, key, enabled), target);
}

/** The language a per-language command applies to: its argument, else the active editor's. */
function languageArgument(argument: unknown): string | undefined {
  if (typeof argument === 'string' && argument) {
    return argument;
  }
  return vscode.window.activeTextEditor?.document.languageId;
}

async function setLanguageEnabled(argument: unknown, enabled: boolean): Promise<void> {
  const language = languageArgument(argument);
  if (language === undefined) {
    void vscode.window.showInformationMessage('DiffGemma: open a file first; this command applies to its language.');
    return;
  }
  await setEnableEntry(language, enabled);
}

/** Builds the extension's parts, registers its commands and listeners on `context`, and starts the server. */
export async function activateWith(
  context: vscode.ExtensionContext,
  createClient: ClientFactory,
  clock: Clock = SYSTEM_CLOCK,
): Promise<DiffgemmaSession> {
  const log = vscode.window.createOutputChannel('DiffGemma', { log: true });
  const status = new StatusIndicator(
    vscode.window.createStatusBarItem('diffgemma.status', vscode.StatusBarAlignment.Right, 100),
    completionsEnabled(vscode.workspace.getConfiguration(SECTION)),
  );
  const canvas = new CanvasPreview();
  const snooze = new Snooze(clock);
  const session = new DiffgemmaSession(createClient, status, canvas, log, snooze);
  context.subscriptions.push(
    log,
    status,
    canvas,
    session,
    snooze,
    vscode.commands.registerCommand(COMMANDS.showMenu, () => showMenu(session.gate())),
    vscode.commands.registerCommand(COMMANDS.enable, () => setEnableEntry(ALL_LANGUAGES, true)),
    vscode.commands.registerCommand(COMMANDS.disable, () => setEnableEntry(ALL_LANGUAGES, false)),
    vscode.commands.registerCommand(COMMANDS.toggle, () =>
      setEnableEntry(ALL_LANGUAGES, !completionsEnabled(vscode.workspace.getConfiguration(SECTION))),
    ),
    vscode.commands.registerCommand(COMMANDS.enableForLanguage, (language?: unknown) => setLanguageEnabled(language, true)),
    vscode.commands.registerCommand(COMMANDS.disableForLanguage, (language?: unknown) => setLanguageEnabled(language, false)),
    vscode.commands.registerCommand(COMMANDS.snooze, async (minutes?: unknown) => {
      const length = typeof minutes === 'number' ? minutes : await pickSnoozeMinutes();
      if (length === undefined) {
        return;
      }
      snooze.start(length);
      // Ghost text already on screen goes too, as it would after Esc.
      await vscode.commands.executeCommand(HIDE_INLINE_SUGGESTION_COMMAND);
    }),
    vscode.commands.registerCommand(COMMANDS.resume, () => snooze.resume()),
    vscode.commands.registerCommand(COMMANDS.restartServer, () => session.restart()),
    vscode.commands.registerCommand(COMMANDS.showLog, () => log.show()),
    vscode.workspace.onDidChangeConfiguration((event) => session.onConfigurationChanged(event)),
    vscode.window.onDidChangeActiveTextEditor(() => session.refreshStatus()),
    vscode.workspace.onDidChangeTextDocument((event) => {
      if (event.document.uri.toString() === canvas.shownUri) {
        canvas.clear();
      }
    }),
  );
  await session.start();
  return session;
}
