// A stand-in for the `vscode` module (which only exists inside VS Code), covering the API the extension's own
// code uses. It records what the extension does (status bar text, decorations, messages, setting updates) so
// the unit tests can assert on it; `stubState.reset()` starts each test afresh.

type Listener<T> = (value: T) => unknown;

export class EventEmitter<T> {
  private listeners: Listener<T>[] = [];
  readonly event = (listener: Listener<T>): Disposable => {
    this.listeners.push(listener);
    return new Disposable(() => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    });
  };
  async fire(value: T): Promise<void> {
    for (const listener of [...this.listeners]) {
      await listener(value);
    }
  }
}

export class Disposable {
  constructor(private readonly onDispose: () => void) {}
  static from(...disposables: { dispose(): unknown }[]): Disposable {
    return new Disposable(() => disposables.forEach((d) => d.dispose()));
  }
  dispose(): void {
    this.onDispose();
  }
}

export class Position {
  constructor(
    readonly line: number,
    readonly character: number,
  ) {}
}

export class Range {
  constructor(
    readonly start: Position,
    readonly end: Position,
  ) {}
}

export class ThemeColor {
  constructor(readonly id: string) {}
}

export class Uri {
  private constructor(private readonly value: string) {}
  static parse(value: string): Uri {
    return new Uri(value);
  }
  toString(): string {
    return this.value;
  }
}

export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}

export enum ConfigurationTarget {
  Global = 1,
  Workspace = 2,
  WorkspaceFolder = 3,
}

export enum DecorationRangeBehavior {
  OpenOpen = 0,
  ClosedClosed = 1,
  OpenClosed = 2,
  ClosedOpen = 3,
}

export enum QuickPickItemKind {
  Separator = -1,
  Default = 0,
}

export interface StubQuickPickItem {
  label: string;
  kind?: QuickPickItemKind;
  description?: string;
  [key: string]: unknown;
}

export class StubStatusBarItem {
  text = '';
  tooltip: string | undefined;
  command: string | undefined;
  name: string | undefined;
  backgroundColor: ThemeColor | undefined;
  visible = false;
  disposed = false;
  constructor(
    readonly id: string,
    readonly alignment: StatusBarAlignment,
    readonly priority: number,
  ) {}
  show(): void {
    this.visible = true;
  }
  hide(): void {
    this.visible = false;
  }
  dispose(): void {
    this.disposed = true;
  }
}

export class StubLogOutputChannel {
  readonly lines: string[] = [];
  shown = 0;
  constructor(readonly name: string) {}
  info(message: string): void {
    this.lines.push(`[info] ${message}`);
  }
  warn(message: string): void {
    this.lines.push(`[warn] ${message}`);
  }
  error(message: string): void {
    this.lines.push(`[error] ${message}`);
  }
  appendLine(message: string): void {
    this.lines.push(message);
  }
  show(): void {
    this.shown += 1;
  }
  dispose(): void {}
}

export class StubDecorationType {
  disposed = false;
  constructor(readonly options: unknown) {}
  dispose(): void {
    this.disposed = true;
  }
}

export interface DecorationOptions {
  range: Range;
  renderOptions?: { after?: { contentText?: string } };
}

export class StubTextEditor {
  readonly decorations = new Map<StubDecorationType, DecorationOptions[]>();
  readonly document: { uri: Uri; languageId: string };
  constructor(uri: string, languageId = 'python') {
    this.document = { uri: Uri.parse(uri), languageId };
  }
  setDecorations(type: StubDecorationType, options: DecorationOptions[]): void {
    this.decorations.set(type, options);
  }
}

/**
 * ExtensionContext.secrets: an in-memory SecretStorage that fires onDidChange on store and delete, as VS Code
 * does (for this window's changes too). `failing` makes get() reject, as it does without an OS keyring.
 */
export class StubSecretStorage {
  readonly values = new Map<string, string>();
  failing: Error | undefined;
  private readonly changed = new EventEmitter<{ key: string }>();
  readonly onDidChange = this.changed.event;
  async get(key: string): Promise<string | undefined> {
    if (this.failing) {
      throw this.failing;
    }
    return this.values.get(key);
  }
  async store(key: string, value: string): Promise<void> {
    this.values.set(key, value);
    await this.changed.fire({ key });
  }
  async delete(key: string): Promise<void> {
    this.values.delete(key);
    await this.changed.fire({ key });
  }
}

interface ConfigurationChangeEvent {
  affectsConfiguration(section: string): boolean;
}

class StubState {
  /** User (global) setting values by full key; what get() returns unless the workspace sets the key too. */
  settings = new Map<string, unknown>();
  /** Workspace setting values by full key (they override the user's, as in VS Code). */
  workspaceSettings = new Map<string, unknown>();
  /** The editor with focus (undefined: none, e.g. only the welcome page). */
  activeTextEditor: StubTextEditor | undefined;
  statusBarItems: StubStatusBarItem[] = [];
  outputChannels: StubLogOutputChannel[] = [];
  decorationTypes: StubDecorationType[] = [];
  visibleTextEditors: StubTextEditor[] = [];
  commands = new Map<string, (...args: unknown[]) => unknown>();
  executedCommands: { command: string; args: unknown[] }[] = [];
  errorMessages: { message: string; actions: string[] }[] = [];
  /** The action the next error message "clicks" (undefined: dismissed). */
  errorMessageChoice: string | undefined;
  infoMessages: string[] = [];
  /** Every input box shown: its options. */
  inputBoxes: Record<string, unknown>[] = [];
  /** What the next input box returns (undefined: dismissed with Esc). */
  inputBoxValue: string | undefined;
  /** Every quick pick shown: its items and options. */
  quickPicks: { items: StubQuickPickItem[]; options: unknown }[] = [];
  /** Picks the item the next quick pick "selects" from the items shown (undefined: dismissed with Esc). */
  quickPickChoice: ((items: StubQuickPickItem[]) => StubQuickPickItem | undefined) | undefined;
  settingUpdates: { key: string; value: unknown; target: ConfigurationTarget }[] = [];
  readonly configurationChanged = new EventEmitter<ConfigurationChangeEvent>();
  readonly textDocumentChanged = new EventEmitter<{ document: { uri: Uri } }>();
  readonly activeTextEditorChanged = new EventEmitter<StubTextEditor | undefined>();

  reset(): void {
    this.settings = new Map();
    this.workspaceSettings = new Map();
    this.activeTextEditor = undefined;
    this.infoMessages = [];
    this.inputBoxes = [];
    this.inputBoxValue = undefined;
    this.quickPicks = [];
    this.quickPickChoice = undefined;
    this.statusBarItems = [];
    this.outputChannels = [];
    this.decorationTypes = [];
    this.visibleTextEditors = [];
    this.commands = new Map();
    this.executedCommands = [];
    this.errorMessages = [];
    this.errorMessageChoice = undefined;
    this.settingUpdates = [];
  }

  /** Changes full setting keys (e.g. "diffgemma.model") and fires onDidChangeConfiguration like VS Code. */
  async changeSettings(changes: Record<string, unknown>, target: ConfigurationTarget = ConfigurationTarget.Global): Promise<void> {
    const scope = target === ConfigurationTarget.Global ? this.settings : this.workspaceSettings;
    for (const [key, value] of Object.entries(changes)) {
      scope.set(key, value);
    }
    const keys = Object.keys(changes);
    await this.configurationChanged.fire({
      affectsConfiguration: (section) => keys.some((key) => key === section || key.startsWith(`${section}.`)),
    });
  }
}

export const stubState = new StubState();

export const window = {
  createStatusBarItem(id: string, alignment: StatusBarAlignment, priority: number): StubStatusBarItem {
    const item = new StubStatusBarItem(id, alignment, priority);
    stubState.statusBarItems.push(item);
    return item;
  },
  createOutputChannel(name: string, options: { log: true }): StubLogOutputChannel {
    if (!options?.log) {
      throw new Error('the stub only provides log output channels');
    }
    const channel = new StubLogOutputChannel(name);
    stubState.outputChannels.push(channel);
    return channel;
  },
  createTextEditorDecorationType(options: unknown): StubDecorationType {
    const type = new StubDecorationType(options);
    stubState.decorationTypes.push(type);
    return type;
  },
  async showErrorMessage(message: string, ...actions: string[]): Promise<string | undefined> {
    stubState.errorMessages.push({ message, actions });
    return stubState.errorMessageChoice;
  },
  async showInputBox(options: Record<string, unknown> = {}): Promise<string | undefined> {
    stubState.inputBoxes.push(options);
    return stubState.inputBoxValue;
  },
  async showInformationMessage(message: string): Promise<undefined> {
    stubState.infoMessages.push(message);
    return undefined;
  },
  async showQuickPick<T extends StubQuickPickItem>(items: T[] | Promise<T[]>, options?: unknown): Promise<T | undefined> {
    const shown = await items;
    stubState.quickPicks.push({ items: shown, options });
    const choice = stubState.quickPickChoice?.(shown);
    if (choice !== undefined && (!shown.includes(choice as T) || choice.kind === QuickPickItemKind.Separator)) {
      throw new Error(`the stub can only pick one of the items shown, and not a separator: ${choice.label}`);
    }
    return choice as T | undefined;
  },
  get visibleTextEditors(): StubTextEditor[] {
    return stubState.visibleTextEditors;
  },
  get activeTextEditor(): StubTextEditor | undefined {
    return stubState.activeTextEditor;
  },
  onDidChangeActiveTextEditor: stubState.activeTextEditorChanged.event,
};

export const workspace = {
  getConfiguration(section: string) {
    return {
      get<T>(key: string): T | undefined {
        const full = `${section}.${key}`;
        return (stubState.workspaceSettings.has(full) ? stubState.workspaceSettings.get(full) : stubState.settings.get(full)) as
          | T
          | undefined;
      },
      inspect<T>(key: string): { key: string; globalValue?: T; workspaceValue?: T } {
        const full = `${section}.${key}`;
        return {
          key: full,
          globalValue: stubState.settings.get(full) as T | undefined,
          workspaceValue: stubState.workspaceSettings.get(full) as T | undefined,
        };
      },
      async update(key: string, value: unknown, target: ConfigurationTarget): Promise<void> {
        if (target !== ConfigurationTarget.Global && target !== ConfigurationTarget.Workspace) {
          throw new Error(`the stub writes user and workspace settings only, not target ${target}`);
        }
        stubState.settingUpdates.push({ key: `${section}.${key}`, value, target });
        await stubState.changeSettings({ [`${section}.${key}`]: value }, target);
      },
    };
  },
  onDidChangeConfiguration: stubState.configurationChanged.event,
  onDidChangeTextDocument: stubState.textDocumentChanged.event,
};

export const commands = {
  registerCommand(command: string, callback: (...args: unknown[]) => unknown): Disposable {
    if (stubState.commands.has(command)) {
      throw new Error(`command '${command}' already exists`);
    }
    stubState.commands.set(command, callback);
    return new Disposable(() => stubState.commands.delete(command));
  },
  async executeCommand(command: string, ...args: unknown[]): Promise<unknown> {
    stubState.executedCommands.push({ command, args });
    return stubState.commands.get(command)?.(...args);
  },
};
