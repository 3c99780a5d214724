import * as vscode from 'vscode';
import type { Middleware } from 'vscode-languageclient';
import { CanvasPreview } from './canvasPreview';
import type { CompletionGate } from './menu';
import { CANVAS_NOTIFICATION, STATUS_NOTIFICATION, type CanvasParams, type StatusParams } from './protocol';
import {
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

  constructor(
    private readonly createClient: ClientFactory,
    private readonly status: StatusIndicator,
    private readonly canvas: CanvasPreview,
    private readonly log: vscode.LogOutputChannel,
    readonly snooze: Snooze = new Snooze(),
  ) {
    this.snoozeSubscription = snooze.onDidChange(() => {
      this.canvas.clear();
      this.refreshStatus();
    });
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

  async start(): Promise<void> {
    const config = configuration();
    const command = serverCommand(config);
    this.status.set('starting');
    const client = this.createClient(command, serverSettings(config), this.middleware, this.log);
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
      // The same shape VS Code's own configuration synchronisation uses: settings under the section name.
      await this.client?.sendNotification('workspace/didChangeConfiguration', {
        settings: { [SECTION]: serverSettings(config) },
      });
    }
  }

  dispose(): void {
    this.snoozeSubscription.dispose();
    void this.stop();
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
    const previous = this.status.current.state;
    this.status.setServerStatus(params);
    if (params.state === 'error') {
      this.log.error(`server: ${params.message ?? 'error'}`);
      if (previous !== 'error') {
        void this.offerHelp(`DiffGemma: ${params.message ?? 'the server reported an error'}`, false);
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
