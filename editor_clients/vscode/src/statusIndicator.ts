import * as vscode from 'vscode';
import type { ServerState, StatusParams } from './protocol';

export const SHOW_LOG_COMMAND = 'diffgemma.showLog';

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

/** The status bar item: server state (fed by diffgemma/status), enabled/disabled; a click shows the log. */
export class StatusIndicator implements vscode.Disposable {
  private state: IndicatorState = 'starting';
  private message: string | undefined;
  private enabled: boolean;

  constructor(
    private readonly item: vscode.StatusBarItem,
    enabled: boolean,
  ) {
    this.enabled = enabled;
    item.name = 'DiffGemma';
    item.command = SHOW_LOG_COMMAND;
    this.render();
    item.show();
  }

  get current(): { state: IndicatorState; message: string | undefined; enabled: boolean } {
    return { state: this.state, message: this.message, enabled: this.enabled };
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

  dispose(): void {
    this.item.dispose();
  }

  private render(): void {
    const appearance = APPEARANCE[this.state];
    const healthy = this.state === 'ready' || this.state === 'busy';
    const icon = healthy && !this.enabled ? '$(circle-slash)' : appearance.icon;
    this.item.text = `${icon} DiffGemma`;
    const lines = [`DiffGemma: ${appearance.describe}${this.message ? ` — ${this.message}` : ''}`];
    if (!this.enabled) {
      lines.push('Inline completions are disabled (command "DiffGemma: Enable Inline Completions").');
    }
    lines.push('Click to show the server log.');
    this.item.tooltip = lines.join('\n');
    this.item.backgroundColor = appearance.background ? new vscode.ThemeColor(appearance.background) : undefined;
  }
}
