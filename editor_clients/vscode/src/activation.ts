import * as vscode from 'vscode';
import { CanvasPreview } from './canvasPreview';
import { COMMANDS, HIDE_INLINE_SUGGESTION_COMMAND } from './commands';
import { pickSnoozeMinutes, showMenu } from './menu';
import { DiffgemmaSession, type ClientFactory } from './session';
import { ALL_LANGUAGES, API_KEY_SECRET, completionsEnabled, isRemoteModel, SECTION, withEnableEntry } from './settings';
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

/** The part of vscode.SecretStorage the API key commands use. */
type SecretStore = Pick<vscode.SecretStorage, 'store' | 'delete'>;

/** Where the stored key takes effect, for the commands' confirmations. */
function apiKeyUse(): string {
  const model = vscode.workspace.getConfiguration(SECTION).get<string>('model') ?? '';
  return isRemoteModel(model)
    ? `the server at ${model}`
    : 'a remote model server (set diffgemma.model to its URL, e.g. http://gpu-box:8000/v1)';
}

/**
 * "DiffGemma: Set API Key": asks for the remote model server's key (a password box) and keeps it in VS Code's
 * SecretStorage (the OS keyring), never in settings.json, so Settings Sync does not copy it. Empty: removes it.
 */
async function setApiKey(secrets: SecretStore): Promise<void> {
  const key = await vscode.window.showInputBox({
    title: 'DiffGemma: Set API Key',
    prompt:
      'The bearer token of the remote model server, kept in the secret storage (not in settings). ' +
      'It takes precedence over the diffgemma.apiKey setting and $DIFFGEMMA_API_KEY. Leave empty to remove it.',
    password: true,
    ignoreFocusOut: true,
  });
  if (key === undefined) {
    return; // dismissed: the stored key stays
  }
  if (key.trim()) {
    await secrets.store(API_KEY_SECRET, key.trim());
    void vscode.window.showInformationMessage(`DiffGemma: API key stored; it is sent to ${apiKeyUse()}.`);
  } else {
    await clearApiKey(secrets);
  }
}

async function clearApiKey(secrets: SecretStore): Promise<void> {
  await secrets.delete(API_KEY_SECRET);
  void vscode.window.showInformationMessage(
    'DiffGemma: stored API key removed; the diffgemma.apiKey setting or $DIFFGEMMA_API_KEY applies, if set.',
  );
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
  const session = new DiffgemmaSession(createClient, status, canvas, log, snooze, context.secrets);
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
    vscode.commands.registerCommand(COMMANDS.setApiKey, () => setApiKey(context.secrets)),
    vscode.commands.registerCommand(COMMANDS.clearApiKey, () => clearApiKey(context.secrets)),
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
