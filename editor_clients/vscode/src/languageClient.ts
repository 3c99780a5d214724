import type * as vscode from 'vscode';
import {
  LanguageClient,
  RevealOutputChannelOn,
  State,
  TransportKind,
  type Executable,
  type LanguageClientOptions,
  type Middleware,
} from 'vscode-languageclient/node';
import type { ServerClient } from './session';
import type { ServerCommand, ServerSettings } from './settings';

/**
 * The documents the server is told about. Whether one gets inline completions is decided per language by the
 * session's middleware (diffgemma.enable, the snooze) and by the server (diffgemma.enabledLanguages).
 */
export const DOCUMENT_SELECTOR = [{ scheme: 'file' }, { scheme: 'untitled' }];

export function serverExecutable(command: ServerCommand): Executable {
  // TransportKind.stdio makes the client append `--stdio` to the arguments.
  return { command: command.command, args: command.args, transport: TransportKind.stdio };
}

export function clientOptions(
  settings: ServerSettings,
  middleware: Middleware,
  log: vscode.LogOutputChannel,
): LanguageClientOptions {
  return {
    documentSelector: DOCUMENT_SELECTOR,
    initializationOptions: settings,
    outputChannel: log,
    revealOutputChannelOn: RevealOutputChannelOn.Never,
    middleware,
  };
}

/** A vscode-languageclient LanguageClient (LSP 3.18 inline completion) for diffgemma-lsp over stdio. */
export function createLanguageClient(
  command: ServerCommand,
  settings: ServerSettings,
  middleware: Middleware,
  log: vscode.LogOutputChannel,
): ServerClient {
  const client = new LanguageClient('diffgemma', 'DiffGemma', serverExecutable(command), clientOptions(settings, middleware, log));
  return {
    start: () => client.start(),
    stop: () => client.stop(),
    onNotification: (method, handler) => client.onNotification(method, handler),
    sendNotification: (method, params) => client.sendNotification(method, params),
    onDidStop: (listener) =>
      client.onDidChangeState((event) => {
        if (event.newState === State.Stopped) {
          listener();
        }
      }),
  };
}
