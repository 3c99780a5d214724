import * as vscode from 'vscode';
import { COMMANDS } from './commands';
import type { CompletionGate } from './menu';
import type { ServerState, StatusParams } from './protocol';
import { formatClockTime } from './snooze';

export const SHOW_LOG_COMMAND = COMMANDS.showLog;
/** What a click on the item runs: the DiffGemma menu (snooze, enable/disable, restart, log). */
export const STATUS_MENU_COMMAND = COMMANDS.showMenu;

/** What the status bar item shows: the server's own states plus the client-side ones around them. */
export type IndicatorState = ServerState | 'starting' | 'stopped';

interface Appearance {
  icon: string;
  describe: string;
  background?: string;
}

const APPEARANCE: Record<IndicatorState, Appearance> = {
  starting: { icon: '$(loading~spin)', describe: 'starting the server' },
  loading: { icon: '$(loading~spin)', describe: 'loading the model' },
  ready: { icon: '$(sparkle)', describe: 'ready' },
  busy: { icon: '$(sync~spin)', describe: 'completing' },
  error: { icon: '$(error)', describe: 'error', background: 'statusBarItem.errorBackground' },
  stopped: { icon: '$(debug-disconnect)', describe: 'server not running', background: 'statusBarItem.warningBackground' },
};

/**
 * The status bar item: server state (fed by diffgemma/status), whether completions are on for the active
 * editor's language, and a snooze in progress; a click opens the DiffGemma menu.
 */
export class StatusIndicator implements vscode.Disposable {
  private state: IndicatorState = 'starting';
  private message: string | undefined;
  private enabled: boolean;
  private language: string | undefined;
  private snoozedUntil: number | undefined;

  constructor(
    private readonly item: vscode.StatusBarItem,
    enabled: boolean,
  ) {
    this.enabled = enabled;
    item.name = 'DiffGemma';
    item.command = STATUS_MENU_COMMAND;
    this.render();
    item.show();
  }

  get current(): {
    state: IndicatorState;
    message: string | undefined;
    enabled: boolean;
    language: string | undefined;
    snoozedUntil: number | undefined;
  } {
    return {
      state: this.state,
      message: this.message,
      enabled: this.enabled,
      language: this.language,
      snoozedUntil: this.snoozedUntil,
    };
  }

  setServerStatus(params: StatusParams): void {
    this.set(params.state, params.message);
  }

  set(state: IndicatorState, message?: string): void {
    this.state = state;
    this.message = message || undefined;
    this.render();
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.render();
  }

  /** Completions on or off for the active editor's language (or everywhere without one), and any snooze. */
  setGate(gate: CompletionGate): void {
    this.language = gate.language;
    this.enabled = gate.language === undefined ? gate.enabledEverywhere : (gate.enabledForLanguage ?? gate.enabledEverywhere);
    this.snoozedUntil = gate.snoozedUntil;
    this.render();
  }

  dispose(): void {
    this.item.dispose();
  }

  private render(): void {
    const appearance = APPEARANCE[this.state];
    const healthy = this.state === 'ready' || this.state === 'busy';
    const snoozed = this.snoozedUntil !== undefined;
    const icon = healthy && !this.enabled ? '$(circle-slash)' : healthy && snoozed ? '$(clock)' : appearance.icon;
    this.item.text = `${icon} DiffGemma`;
    const lines = [`DiffGemma: ${appearance.describe}${this.message ? ` — ${this.message}` : ''}`];
    if (!this.enabled) {
      lines.push(`Inline completions are disabled${this.language === undefined ? '' : ` for '${this.language}'`}.`);
    }
    if (snoozed) {
      lines.push(`Inline completions are snoozed until ${formatClockTime(this.snoozedUntil!)}.`);
    }
    lines.push('Click for the DiffGemma menu: snooze, enable or disable, restart the server, show the log.');
    this.item.tooltip = lines.join('\n');
    this.item.backgroundColor = appearance.background ? new vscode.ThemeColor(appearance.background) : undefined;
  }
}
