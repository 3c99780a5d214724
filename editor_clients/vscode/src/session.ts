import * as vscode from 'vscode';
import type { Middleware } from 'vscode-languageclient';
import { CanvasPreview } from './canvasPreview';
import type { CompletionGate } from './menu';
import { CANVAS_NOTIFICATION, STATUS_NOTIFICATION, type CanvasParams, type StatusParams } from './protocol';
import {
  API_KEY_SECRET,
  canvasPreviewEnabled,
  completionsEnabled,
  completionsEnabledFor,
  RESTART_SETTINGS,
  SECTION,
  SERVER_SETTINGS,
  serverCommand,
  serverSettings,
  type ServerCommand,
  type ServerSettings,
} from './settings';
import { Snooze } from './snooze';
import { StatusIndicator } from './statusIndicator';

/** The parts of vscode-languageclient's LanguageClient the extension drives (see languageClient.ts). */
export interface ServerClient {
  start(): Promise<void>;
  stop(): Promise<void>;
  onNotification(method: string, handler: (params: any) => void): vscode.Disposable;
  sendNotification(method: string, params: unknown): Promise<void>;
  /** Called when the client reaches the stopped state (server exit, start failure or stop()). */
  onDidStop(listener: () => void): vscode.Disposable;
}

export type ClientFactory = (
  command: ServerCommand,
  settings: ServerSettings,
  middleware: Middleware,
  log: vscode.LogOutputChannel,
) => ServerClient;

/** The part of vscode.SecretStorage (ExtensionContext.secrets) the session reads: the stored API key. */
export interface SecretReader {
  get(key: string): Thenable<string | undefined>;
  onDidChange: vscode.Event<{ key: string }>;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function configuration(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

/**
 * How to get the server: diffgemma-lsp is not published on PyPI, it is installed from a clone of its repository.
 * Shown when the server cannot be started.
 */
export const INSTALL_HINT =
  'diffgemma-lsp is not on PyPI: clone its repository, run "make install" in the clone ' +
  '(or "python3 -m venv .venv && .venv/bin/pip install -e ."), then set "diffgemma.server.command" to the ' +
  "clone's .venv/bin/diffgemma-lsp.";

/**
 * One running diffgemma-lsp at a time: starts it, restarts it when its command changes, forwards setting
 * changes, feeds the status bar and the canvas preview, and gates inline completions on `diffgemma.enable`
 * (per language) and on the snooze.
 */
export class DiffgemmaSession implements vscode.Disposable {
  private client: ServerClient | undefined;
  private clientSubscriptions: vscode.Disposable[] = [];
  private readonly snoozeSubscription: { dispose(): void };
  private readonly secretSubscription: { dispose(): void } | undefined;
  /**
   * The last error message popped up. A remote model's error comes and goes with the remote server; the same
   * reason again (after a "ready" in between) only updates the status bar. Forgotten on a (re)start and on a
   * settings change.
   */
  private announcedError: string | undefined;

  constructor(
    private readonly createClient: ClientFactory,
    private readonly status: StatusIndicator,
    private readonly canvas: CanvasPreview,
    private readonly log: vscode.LogOutputChannel,
    readonly snooze: Snooze = new Snooze(),
    private readonly secrets?: SecretReader,
  ) {
    this.snoozeSubscription = snooze.onDidChange(() => {
      this.canvas.clear();
      this.refreshStatus();
    });
    // "Set API Key" / "Clear API Key" (in this window or another): the running server gets the new key.
    this.secretSubscription = secrets?.onDidChange((event) =>
      event.key === API_KEY_SECRET
        ? this.sendSettings().catch((error) => this.log.warn(`sending the new API key: ${describe(error)}`))
        : undefined,
    );
    this.refreshStatus();
  }

  readonly middleware: Middleware = {
    provideInlineCompletionItems: async (document, position, context, token, next) => {
      if (!this.completionsAllowed(document.languageId)) {
        return null;
      }
      try {
        return await next(document, position, context, token);
      } finally {
        this.canvas.clear();
      }
    },
  };

  /** Whether a document of `languageId` gets inline completions now: enabled for it and not snoozed. */
  completionsAllowed(languageId: string | undefined): boolean {
    return !this.snooze.active && completionsEnabledFor(configuration(), languageId);
  }

  /** The state the status bar item and its menu show, for the active editor's language. */
  gate(): CompletionGate {
    const config = configuration();
    const language = vscode.window.activeTextEditor?.document.languageId;
    return {
      enabledEverywhere: completionsEnabled(config),
      language,
      enabledForLanguage: language === undefined ? undefined : completionsEnabledFor(config, language),
      snoozedUntil: this.snooze.snoozedUntil,
    };
  }

  /** Re-renders the enabled / snoozed part of the status bar item (after a setting, editor or snooze change). */
  refreshStatus(): void {
    this.status.setGate(this.gate());
  }

  /** The settings sent to the server: the configuration, with the API key from SecretStorage when one is stored. */
  async serverSettings(): Promise<ServerSettings> {
    return serverSettings(configuration(), await this.storedApiKey());
  }

  async start(): Promise<void> {
    const config = configuration();
    const command = serverCommand(config);
    this.status.set('starting');
    this.announcedError = undefined;
    const settings = await this.serverSettings();
    const client = this.createClient(command, settings, this.middleware, this.log);
    this.client = client;
    this.clientSubscriptions = [
      client.onNotification(STATUS_NOTIFICATION, (params: StatusParams) => this.onStatus(params)),
      client.onNotification(CANVAS_NOTIFICATION, (params: CanvasParams) => this.onCanvas(params)),
      client.onDidStop(() => {
        if (this.client === client) {
          this.status.set('stopped', 'the server exited (see the log)');
        }
      }),
    ];
    try {
      await client.start();
    } catch (error) {
      this.forget(client);
      const reason = error instanceof Error ? error.message : String(error);
      const message = `could not start "${[command.command, ...command.args, '--stdio'].join(' ')}": ${reason}`;
      this.log.error(message);
      this.status.set('stopped', message);
      void this.offerHelp(`DiffGemma ${message}. ${INSTALL_HINT}`, true);
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    if (!client) {
      return;
    }
    this.forget(client);
    this.canvas.clear();
    try {
      await client.stop();
    } catch (error) {
      this.log.warn(`stopping the server: ${error instanceof Error ? error.message : String(error)}`);
    }
    this.status.set('stopped', 'stopped');
  }

  async restart(): Promise<void> {
    this.log.info('restarting the server');
    await this.stop();
    await this.start();
  }

  async onConfigurationChanged(event: vscode.ConfigurationChangeEvent): Promise<void> {
    if (!event.affectsConfiguration(SECTION)) {
      return;
    }
    const config = configuration();
    const affects = (key: string) => event.affectsConfiguration(`${SECTION}.${key}`);
    if (affects('enable')) {
      this.refreshStatus();
      this.canvas.clear();
    }
    if (RESTART_SETTINGS.some(affects)) {
      await this.restart();
      return;
    }
    if (SERVER_SETTINGS.some(affects)) {
      if (!canvasPreviewEnabled(config)) {
        this.canvas.clear();
      }
      await this.sendSettings();
    }
  }

  /** Sends the whole settings object to the running server (a changed field reloads the model if it must). */
  async sendSettings(): Promise<void> {
    if (!this.client) {
      return;
    }
    const settings = await this.serverSettings();
    const client = this.client; // the one running now (a restart during the await starts with these settings)
    if (!client) {
      return;
    }
    this.announcedError = undefined;
    // The same shape VS Code's own configuration synchronisation uses: settings under the section name.
    await client.sendNotification('workspace/didChangeConfiguration', { settings: { [SECTION]: settings } });
  }

  dispose(): void {
    this.snoozeSubscription.dispose();
    this.secretSubscription?.dispose();
    void this.stop();
  }

  /** The key "Set API Key" stored; undefined without one, or when SecretStorage fails (no OS keyring). */
  private async storedApiKey(): Promise<string | undefined> {
    if (!this.secrets) {
      return undefined;
    }
    try {
      return await this.secrets.get(API_KEY_SECRET);
    } catch (error) {
      this.log.warn(`reading the API key from the secret storage: ${describe(error)}`);
      return undefined;
    }
  }

  private forget(client: ServerClient): void {
    if (this.client === client) {
      this.client = undefined;
    }
    for (const subscription of this.clientSubscriptions) {
      subscription.dispose();
    }
    this.clientSubscriptions = [];
  }

  private onStatus(params: StatusParams): void {
    const { state: previous, message: previousMessage } = this.status.current;
    this.status.setServerStatus(params);
    if (params.state === 'error') {
      const message = params.message ?? 'the server reported an error';
      // A remote server that is down is reported again at every request: log each new reason once.
      if (previous !== 'error' || previousMessage !== params.message) {
        this.log.error(`server: ${message}`);
      }
      if (previous !== 'error' && message !== this.announcedError) {
        this.announcedError = message;
        void this.offerHelp(`DiffGemma: ${message}`, false);
      }
    } else if (params.state !== 'busy') {
      this.log.info(`server: ${params.state}${params.message ? ` (${params.message})` : ''}`);
    }
  }

  private onCanvas(params: CanvasParams): void {
    const editor = vscode.window.visibleTextEditors.find((e) => e.document.uri.toString() === params.uri);
    if (canvasPreviewEnabled(configuration()) && editor && this.completionsAllowed(editor.document.languageId)) {
      this.canvas.show(params);
    }
  }

  private async offerHelp(message: string, offerSettings: boolean): Promise<void> {
    const actions = offerSettings ? ['Show Log', 'Open Settings'] : ['Show Log'];
    const choice = await vscode.window.showErrorMessage(message, ...actions);
    if (choice === 'Show Log') {
      this.log.show();
    } else if (choice === 'Open Settings') {
      await vscode.commands.executeCommand('workbench.action.openSettings', `${SECTION}.server`);
    }
  }
}
