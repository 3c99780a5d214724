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
  /** "serving" (shared prompt cache, compiled static-shape step) or "exact" (the reference's bits). */
  engineMode: string;
  /** Compile the serving step in the background (eager until ready; cached on disk). */
  compile: boolean;
  /** Experts quantised while loading ("int4-g32", "int4-g64", "fp8"); null: as the checkpoint stores them. */
  quantization: string | null;
  enabledLanguages: string[];
  candidates: number;
  documentCandidates: number;
  rerank: boolean;
  maxPromptTokens: number;
  maxNewTokens: number | null;
  denoisingSteps: number | null;
  canvasLength: number | null;
  threads: number | null;
  canvasNotifications: boolean;
  /** Bearer token for a remote model server; null: the server's $DIFFGEMMA_API_KEY. Never logged. */
  apiKey: string | null;
  /** The served model's name; null: the only one the server's /v1/models lists. */
  remoteModel: string | null;
  /** Seconds a remote request may take, in (0, 3600]. */
  requestTimeout: number;
  /** Verify https certificates of a remote server. */
  tlsVerify: boolean;
  /** A local tokenizer.json (or its directory) of the remote model: prompts go as token ids; null: as text. */
  tokenizer: string | null;
}

export const DEFAULT_SERVER_COMMAND = 'diffgemma-lsp';

/** Settings whose change needs a new server process (the others are sent to the running server). */
export const RESTART_SETTINGS = ['server.command', 'server.args'] as const;

/** Settings the server reads; a change to any of them is sent as workspace/didChangeConfiguration. */
export const SERVER_SETTINGS = [
  'model',
  'device',
  'dtype',
  'engineMode',
  'compile',
  'quantization',
  'enabledLanguages',
  'candidates',
  'documentCandidates',
  'rerank',
  'maxPromptTokens',
  'maxNewTokens',
  'denoisingSteps',
  'canvasLength',
  'threads',
  'showDenoisingCanvas',
  'apiKey',
  'remoteModel',
  'requestTimeout',
  'tlsVerify',
  'tokenizer',
] as const;

/** The key under which the "DiffGemma: Set API Key" command keeps the key in VS Code's SecretStorage. */
export const API_KEY_SECRET = 'diffgemma.apiKey';

/** The server's default requestTimeout (seconds). */
export const DEFAULT_REQUEST_TIMEOUT = 10;

/**
 * Whether `model` names a remote server (an http or https URL) rather than a checkpoint directory or
 * "embedded": the test lsp_server/settings.py's is_remote_model makes.
 */
export function isRemoteModel(model: string): boolean {
  return /^https?:\/\//i.test(model.trim());
}

/** A string setting that is optional on the server: blank or missing is null (the server rejects ""). */
function optionalText(value: unknown): string | null {
  return typeof value === 'string' && value.trim() ? value.trim() : null;
}

export function serverCommand(config: ConfigurationReader): ServerCommand {
  const command = (config.get<string>('server.command') ?? '').trim() || DEFAULT_SERVER_COMMAND;
  const args = config.get<string[]>('server.args') ?? [];
  return { command, args: [...args] };
}

/**
 * The server settings for `config`. `storedApiKey` is the key the "Set API Key" command put in SecretStorage;
 * it wins over the plain `diffgemma.apiKey` setting (the fallback), and without either the server reads
 * $DIFFGEMMA_API_KEY.
 */
export function serverSettings(config: ConfigurationReader, storedApiKey?: string): ServerSettings {
  const dtype = config.get<string>('dtype') ?? 'auto';
  const timeout = config.get<number>('requestTimeout');
  return {
    model: config.get<string>('model') || 'embedded',
    device: config.get<string>('device') || 'auto',
    dtype: dtype === 'auto' ? null : dtype,
    engineMode: config.get<string>('engineMode') || 'serving',
    compile: config.get<boolean>('compile') ?? true,
    quantization: optionalText(config.get<string | null>('quantization')),
    enabledLanguages: [...(config.get<string[]>('enabledLanguages') ?? ['*'])],
    candidates: config.get<number>('candidates') ?? 1,
    documentCandidates: config.get<number>('documentCandidates') ?? 4,
    rerank: config.get<boolean>('rerank') ?? true,
    maxPromptTokens: config.get<number>('maxPromptTokens') ?? 256,
    maxNewTokens: config.get<number | null>('maxNewTokens') ?? null,
    denoisingSteps: config.get<number | null>('denoisingSteps') ?? null,
    canvasLength: config.get<number | null>('canvasLength') ?? null,
    threads: config.get<number | null>('threads') ?? null,
    canvasNotifications: config.get<boolean>('showDenoisingCanvas') ?? false,
    apiKey: optionalText(storedApiKey) ?? optionalText(config.get<string | null>('apiKey')),
    remoteModel: optionalText(config.get<string | null>('remoteModel')),
    requestTimeout: typeof timeout === 'number' ? timeout : DEFAULT_REQUEST_TIMEOUT,
    tlsVerify: config.get<boolean>('tlsVerify') ?? true,
    tokenizer: optionalText(config.get<string | null>('tokenizer')),
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
