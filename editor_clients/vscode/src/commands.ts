// The commands contributed in package.json (no vscode import: the menu, the status bar and the tests share it).
// The server's own commands (diffgemma.acceptInlineCompletion) are registered by the language client.

export const COMMANDS = {
  /** The status bar item's click: the quick pick menu below. */
  showMenu: 'diffgemma.showMenu',
  /** `*` of diffgemma.enable on / off / flipped: every language without an entry of its own. */
  enable: 'diffgemma.enable',
  disable: 'diffgemma.disable',
  toggle: 'diffgemma.toggle',
  /** One language's entry of diffgemma.enable (argument: a language id; default: the active editor's). */
  enableForLanguage: 'diffgemma.enableForLanguage',
  disableForLanguage: 'diffgemma.disableForLanguage',
  /** Snooze for N minutes (argument: minutes; without it, a quick pick of lengths), and resume. */
  snooze: 'diffgemma.snooze',
  resume: 'diffgemma.resume',
  restartServer: 'diffgemma.restartServer',
  showLog: 'diffgemma.showLog',
  /** The remote model server's API key, kept in VS Code's SecretStorage (sent to the server as apiKey). */
  setApiKey: 'diffgemma.setApiKey',
  clearApiKey: 'diffgemma.clearApiKey',
} as const;

/** VS Code's own command that takes the ghost text being shown away. */
export const HIDE_INLINE_SUGGESTION_COMMAND = 'editor.action.inlineSuggest.hide';
