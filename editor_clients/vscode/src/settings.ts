// The extension's settings (contributes.configuration in package.json) and what they become for the server.
// Pure functions over a configuration reader, so the protocol test and the unit tests use the same code.

export const SECTION = 'diffgemma';

/** The part of vscode.WorkspaceConfiguration this module reads (a section-relative `get`). */
export interface ConfigurationReader {
  get<T>(key: string): T | undefined;
}

/** How the language server is started: an executable with arguments; the client appends `--stdio`. */
export interface ServerCommand {
  command: string;
  args: string[];
}

/**
 * Settings sent to diffgemma-lsp, in the server's camelCase wire names (lsp_server/settings.py).
 * Sent whole as initializationOptions and in every workspace/didChangeConfiguration.
 */
export interface ServerSettings {
  model: string;
  device: string;
  dtype: string | null;
  enabledLanguages: string[];
  candidates: number;
  maxPromptTokens: number;
  maxNewTokens: number | null;
  denoisingSteps: number | null;
  canvasLength: number | null;
  threads: number | null;
  canvasNotifications: boolean;
}

export const DEFAULT_SERVER_COMMAND = 'diffgemma-lsp';

/** Settings whose change needs a new server process (the others are sent to the running server). */
export const RESTART_SETTINGS = ['server.command', 'server.args'] as const;

/** Settings the server reads; a change to any of them is sent as workspace/didChangeConfiguration. */
export const SERVER_SETTINGS = [
  'model',
  'device',
  'dtype',
  'enabledLanguages',
  'candidates',
  'maxPromptTokens',
  'maxNewTokens',
  'denoisingSteps',
  'canvasLength',
  'threads',
  'showDenoisingCanvas',
] as const;

export function serverCommand(config: ConfigurationReader): ServerCommand {
  const command = (config.get<string>('server.command') ?? '').trim() || DEFAULT_SERVER_COMMAND;
  const args = config.get<string[]>('server.args') ?? [];
  return { command, args: [...args] };
}

export function serverSettings(config: ConfigurationReader): ServerSettings {
  const dtype = config.get<string>('dtype') ?? 'auto';
  return {
    model: config.get<string>('model') || 'embedded',
    device: config.get<string>('device') || 'auto',
    dtype: dtype === 'auto' ? null : dtype,
    enabledLanguages: [...(config.get<string[]>('enabledLanguages') ?? ['*'])],
    candidates: config.get<number>('candidates') ?? 1,
    maxPromptTokens: config.get<number>('maxPromptTokens') ?? 256,
    maxNewTokens: config.get<number | null>('maxNewTokens') ?? null,
    denoisingSteps: config.get<number | null>('denoisingSteps') ?? null,
    canvasLength: config.get<number | null>('canvasLength') ?? null,
    threads: config.get<number | null>('threads') ?? null,
    canvasNotifications: config.get<boolean>('showDenoisingCanvas') ?? false,
  };
}

/**
 * `diffgemma.enable`: inline completions on or off per VS Code language id, with `*` for every language not
 * listed (the shape of Copilot's `github.copilot.enable`). Prose and commit-message buffers are off by default.
 */
export type EnableSetting = Record<string, boolean>;

/** The `*` key of `diffgemma.enable`: the choice for languages without their own entry. */
export const ALL_LANGUAGES = '*';

export const DEFAULT_ENABLE: Readonly<EnableSetting> = Object.freeze({
  [ALL_LANGUAGES]: true,
  plaintext: false,
  markdown: false,
  scminput: false,
  'git-commit': false,
  'git-rebase': false,
});

/**
 * The effective `diffgemma.enable` object: the defaults overlaid with the user's entries (VS Code merges object
 * settings with their default the same way). A boolean (the setting's earlier shape) switches all languages.
 */
export function enableSetting(config: ConfigurationReader): EnableSetting {
  const value = config.get<unknown>('enable');
  if (typeof value === 'boolean') {
    return { [ALL_LANGUAGES]: value };
  }
  const merged: EnableSetting = { ...DEFAULT_ENABLE };
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [language, enabled] of Object.entries(value as Record<string, unknown>)) {
      if (typeof enabled === 'boolean') {
        merged[language] = enabled;
      }
    }
  }
  return merged;
}

/** Whether `*` is on: completions for every language without an entry of its own. */
export function completionsEnabled(config: ConfigurationReader): boolean {
  return enableSetting(config)[ALL_LANGUAGES] ?? true;
}

/** Whether documents of `languageId` get inline completions: their own entry, else `*`. */
export function completionsEnabledFor(config: ConfigurationReader, languageId: string | undefined): boolean {
  const setting = enableSetting(config);
  if (languageId !== undefined && Object.prototype.hasOwnProperty.call(setting, languageId)) {
    return setting[languageId];
  }
  return setting[ALL_LANGUAGES] ?? true;
}

/**
 * The value to write to `diffgemma.enable` (at the scope that held `current`) to set one key: `*` or a language
 * id. Other entries are kept; a legacy boolean becomes the `*` entry.
 */
export function withEnableEntry(current: unknown, key: string, enabled: boolean): EnableSetting {
  const base: EnableSetting =
    typeof current === 'boolean'
      ? { [ALL_LANGUAGES]: current }
      : current && typeof current === 'object' && !Array.isArray(current)
        ? { ...(current as EnableSetting) }
        : {};
  base[key] = enabled;
  return base;
}

export function canvasPreviewEnabled(config: ConfigurationReader): boolean {
  return config.get<boolean>('showDenoisingCanvas') ?? false;
}
