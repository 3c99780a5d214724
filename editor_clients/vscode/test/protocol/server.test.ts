// Protocol-level test of the extension against the real diffgemma-lsp: the messages vscode-languageclient 11
// sends for this extension (its settings as initializationOptions, VS Code's client capabilities, full
// documents on open and incremental changes, inline completion params as its code converter writes them,
// $/cancelRequest, the server's accept command through workspace/executeCommand, the session's
// didChangeConfiguration), checked against what VS Code needs to show and accept the suggestion.
//
// Environment: DIFFGEMMA_TEST_PYTHON, the Python with diffgemma-lsp installed (default: the repository's
// .venv); DIFFGEMMA_TEST_MODEL, a checkpoint directory (default: a tiny one built with tests/checkpoints.py).
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  CancellationTokenSource,
  createProtocolConnection,
  DidChangeConfigurationNotification,
  DidChangeTextDocumentNotification,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  ExitNotification,
  InitializedNotification,
  InitializeRequest,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  LogMessageNotification,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
  TextDocumentSyncKind,
  WorkDoneProgressCreateRequest,
  type InitializeResult,
  type InlineCompletionItem,
  type InlineCompletionList,
  type InlineCompletionParams,
  type Position,
  type ProtocolConnection,
  type Range,
} from 'vscode-languageserver-protocol/node';
import { ACCEPT_COMMAND, CANVAS_NOTIFICATION, STATUS_NOTIFICATION, type CanvasParams, type StatusParams } from '../../src/protocol';
import { canvasPreviewText } from '../../src/canvasText';
import { SECTION, serverCommand, serverSettings, type ConfigurationReader } from '../../src/settings';

const REPOSITORY = join(__dirname, '..', '..', '..', '..', '..');
const PYTHON = process.env.DIFFGEMMA_TEST_PYTHON ?? join(REPOSITORY, '.venv', 'bin', 'python');
const READY_TIMEOUT_MS = 60_000;
const URI = 'file:///work/project/shapes.py';

function reader(values: Record<string, unknown>): ConfigurationReader {
  return { get: <T>(key: string) => values[key] as T | undefined };
}

/** A document as VS Code keeps it: text, version, UTF-16 positions (JavaScript strings are UTF-16). */
class Document {
  version = 1;
  constructor(public text: string) {}
  offsetAt(position: Position): number {
    const lines = this.text.split('\n');
    return lines.slice(0, position.line).reduce((sum, line) => sum + line.length + 1, 0) + position.character;
  }
  getText(range: Range): string {
    return this.text.slice(this.offsetAt(range.start), this.offsetAt(range.end));
  }
  /** Applies an edit and returns the incremental change VS Code sends for it. */
  edit(range: Range, newText: string) {
    this.text = this.text.slice(0, this.offsetAt(range.start)) + newText + this.text.slice(this.offsetAt(range.end));
    this.version += 1;
    return { range, rangeLength: 0, text: newText };
  }
  endOf(start: Position, inserted: string): Position {
    const lines = inserted.split('\n');
    const character = lines.length === 1 ? start.character + inserted.length : lines[lines.length - 1].length;
    return { line: start.line + lines.length - 1, character };
  }
}

/** The client capabilities vscode-languageclient 11 fills in that matter to this server. */
const VSCODE_CAPABILITIES = {
  general: { positionEncodings: ['utf-16'], markdown: { parser: 'marked', version: '1.1.0' } },
  window: { workDoneProgress: true, showMessage: { messageActionItem: { additionalPropertiesSupport: true } } },
  workspace: {
    applyEdit: true,
    configuration: true,
    workspaceFolders: true,
    didChangeConfiguration: { dynamicRegistration: true },
    executeCommand: { dynamicRegistration: true },
  },
  textDocument: {
    synchronization: { dynamicRegistration: true, willSave: true, willSaveWaitUntil: true, didSave: true },
    completion: {
      dynamicRegistration: true,
      contextSupport: true,
      completionItem: { snippetSupport: true, insertReplaceSupport: true },
    },
    inlineCompletion: { dynamicRegistration: true },
  },
};

let server: ChildProcess;
let connection: ProtocolConnection;
let checkpointDir: string | undefined;
let initializeResult: InitializeResult;
const statuses: StatusParams[] = [];
const canvases: CanvasParams[] = [];
const logMessages: string[] = [];
let stderr = '';
let ready: Promise<void>;

function modelDirectory(): string {
  if (process.env.DIFFGEMMA_TEST_MODEL) {
    return process.env.DIFFGEMMA_TEST_MODEL;
  }
  checkpointDir = mkdtempSync(join(tmpdir(), 'diffgemma-protocol-'));
  const built = spawnSync(PYTHON, [join(REPOSITORY, 'tests', 'checkpoints.py'), checkpointDir, '--kind', 'constant'], {
    encoding: 'utf8',
  });
  assert.equal(built.status, 0, `building a test checkpoint failed:\n${built.stderr}`);
  return checkpointDir;
}

function inlineCompletionParams(position: Position): InlineCompletionParams {
  // vscode-languageclient's code2ProtocolConverter.asInlineCompletionParams; an undefined
  // selectedCompletionInfo disappears from the JSON.
  return {
    textDocument: { uri: URI },
    position,
    context: { triggerKind: InlineCompletionTriggerKind.Automatic, selectedCompletionInfo: undefined },
  };
}

function itemsOf(result: InlineCompletionList | InlineCompletionItem[] | null): InlineCompletionItem[] {
  if (!result) {
    return [];
  }
  return Array.isArray(result) ? result : result.items;
}

before(async () => {
  assert.ok(existsSync(PYTHON), `no Python at ${PYTHON}; set DIFFGEMMA_TEST_PYTHON`);
  const config = reader({
    'server.command': PYTHON,
    'server.args': ['-m', 'lsp_server', '--no-compile'],
    model: modelDirectory(),
    device: 'cpu',
    showDenoisingCanvas: true,
  });
  const command = serverCommand(config);
  // TransportKind.stdio: vscode-languageclient appends --stdio to the executable's arguments.
  server = spawn(command.command, [...command.args, '--stdio'], { cwd: REPOSITORY, stdio: 'pipe' });
  server.stderr!.on('data', (chunk) => (stderr += chunk));
  connection = createProtocolConnection(new StreamMessageReader(server.stdout!), new StreamMessageWriter(server.stdin!));
  connection.onRequest(WorkDoneProgressCreateRequest.type, () => {});
  connection.onNotification(LogMessageNotification.type, (params) => {
    logMessages.push(params.message);
  });
  connection.onNotification(CANVAS_NOTIFICATION, (params: CanvasParams) => {
    canvases.push(params);
  });
  ready = new Promise((resolve, reject) => {
    connection.onNotification(STATUS_NOTIFICATION, (params: StatusParams) => {
      statuses.push(params);
      if (params.state === 'ready') {
        resolve();
      } else if (params.state === 'error') {
        reject(new Error(`the server could not load the model: ${params.message}`));
      }
    });
  });
  connection.listen();

  initializeResult = await connection.sendRequest(InitializeRequest.type, {
    processId: process.pid,
    clientInfo: { name: 'Visual Studio Code', version: '1.91.0' },
    locale: 'en',
    rootUri: null,
    workspaceFolders: null,
    capabilities: VSCODE_CAPABILITIES,
    initializationOptions: serverSettings(config),
  });
  await connection.sendNotification(InitializedNotification.type, {});
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ready status in ${READY_TIMEOUT_MS} ms:\n${stderr}`)), READY_TIMEOUT_MS);
  });
  await Promise.race([ready, timeout]).finally(() => clearTimeout(timer));
});

after(async () => {
  if (checkpointDir) {
    rmSync(checkpointDir, { recursive: true, force: true });
  }
  if (server && server.exitCode === null) {
    server.kill();
  }
});

test('initialize: inline completion, incremental sync and the accept command; no completion fallback for VS Code', () => {
  const capabilities = initializeResult.capabilities;
  assert.ok(capabilities.inlineCompletionProvider, 'inlineCompletionProvider must be advertised');
  assert.equal(capabilities.completionProvider, undefined, 'VS Code has inline completion: no duplicate in the suggest widget');
  const sync = capabilities.textDocumentSync;
  assert.equal(typeof sync === 'object' ? sync.change : sync, TextDocumentSyncKind.Incremental);
  assert.deepEqual(capabilities.executeCommandProvider?.commands, [ACCEPT_COMMAND]);
  assert.equal(initializeResult.serverInfo?.name, 'diffgemma-lsp');
});

test('status: loading, then ready, each naming the model', () => {
  assert.equal(statuses[0].state, 'loading');
  assert.equal(statuses.at(-1)?.state, 'ready');
  assert.ok(statuses.every((status) => typeof status.message === 'string'));
});

test('didOpen, typing, inlineCompletion, accept: the item is one VS Code shows, and accepting it is reported', async () => {
  const document = new Document('class Shape:\n    label = "shape"\n\n    def area(self):\n        \n');
  await connection.sendNotification(DidOpenTextDocumentNotification.type, {
    textDocument: { uri: URI, languageId: 'python', version: document.version, text: document.text },
  });
  const typedAt = { line: 4, character: 8 };
  // Typed text with a character outside the BMP before the cursor: positions are UTF-16 code units.
  const typed = 'return "🔷" + ';
  const change = document.edit({ start: typedAt, end: typedAt }, typed);
  await connection.sendNotification(DidChangeTextDocumentNotification.type, {
    textDocument: { uri: URI, version: document.version },
    contentChanges: [change],
  });
  const cursor = document.endOf(typedAt, typed);

  canvases.length = 0;
  const items = itemsOf(await connection.sendRequest(InlineCompletionRequest.type, inlineCompletionParams(cursor)));
  assert.ok(items.length >= 1, `no inline completion item; server log:\n${logMessages.join('\n')}`);
  const [item] = items;
  assert.equal(typeof item.insertText, 'string');
  const insertText = item.insertText as string;
  assert.ok(item.range, 'items carry a replace range');
  const range = item.range!;
  // VS Code's rules for showing an item: the range lies on one line, ends at the cursor here, and the text it
  // replaces is a prefix of insertText.
  assert.equal(range.start.line, cursor.line);
  assert.equal(range.end.line, cursor.line);
  assert.deepEqual(range.end, cursor);
  const replaced = document.getText(range);
  assert.ok(insertText.startsWith(replaced), `insertText ${JSON.stringify(insertText)} must start with ${JSON.stringify(replaced)}`);
  assert.ok(insertText.length > replaced.length, 'the suggestion adds text');
  assert.equal(item.command?.command, ACCEPT_COMMAND);
  assert.equal(item.command?.arguments?.length, 1);

  // The denoising preview followed the request; the extension draws each of these.
  assert.ok(canvases.length >= 1, 'canvas notifications while denoising (showDenoisingCanvas is on)');
  for (const canvas of canvases) {
    assert.equal(canvas.uri, URI);
    assert.deepEqual(canvas.position, cursor);
    assert.equal(typeof canvasPreviewText(canvas), 'string');
  }
  assert.deepEqual(canvases.map((c) => c.step), canvases.map((_, i) => i + 1));

  // Accepting: VS Code replaces the range with insertText (an incremental change), then runs the item's
  // command, which vscode-languageclient forwards as workspace/executeCommand.
  const expected = document.text.slice(0, document.offsetAt(range.start)) + insertText + document.text.slice(document.offsetAt(range.end));
  const accepted = document.edit(range, insertText);
  assert.equal(document.text, expected);
  await connection.sendNotification(DidChangeTextDocumentNotification.type, {
    textDocument: { uri: URI, version: document.version },
    contentChanges: [accepted],
  });
  const commandResult = await connection.sendRequest(ExecuteCommandRequest.type, {
    command: item.command!.command,
    arguments: item.command!.arguments,
  });
  assert.equal(commandResult, null);
  const stats = (await connection.sendRequest('diffgemma/stats', {})) as { acceptances: number };
  assert.equal(stats.acceptances, 1);

  // An id is accepted once: a second run is an error the client logs.
  await assert.rejects(
    connection.sendRequest(ExecuteCommandRequest.type, { command: ACCEPT_COMMAND, arguments: item.command!.arguments }),
    /unknown completion id/,
  );
});

test('typing on cancels the pending request ($/cancelRequest) and the next request is answered', async () => {
  const position = { line: 4, character: 8 };
  const source = new CancellationTokenSource();
  const pending = connection.sendRequest(InlineCompletionRequest.type, inlineCompletionParams(position), source.token);
  source.cancel();
  // Answered either way: cancelled (RequestCancelled) or, if it finished first, a list.
  await pending.then(
    (result) => assert.ok(result === null || Array.isArray(result) || Array.isArray(result.items)),
    (error) => assert.equal(error.code, -32800),
  );
  const items = itemsOf(await connection.sendRequest(InlineCompletionRequest.type, inlineCompletionParams(position)));
  assert.ok(items.length >= 1);
});

test('the settings the extension sends are all known to the server', async () => {
  const config = reader({ model: process.env.DIFFGEMMA_TEST_MODEL ?? checkpointDir, device: 'cpu', candidates: 2, maxPromptTokens: 512 });
  logMessages.length = 0;
  // DiffgemmaSession.onConfigurationChanged sends the whole section under its name.
  await connection.sendNotification(DidChangeConfigurationNotification.type, { settings: { [SECTION]: serverSettings(config) } });
  const stats = await connection.sendRequest('diffgemma/stats', {});
  assert.ok(stats);
  const changed = logMessages.find((message) => message.startsWith('settings changed'));
  assert.ok(changed, `no "settings changed" log; got:\n${logMessages.join('\n')}`);
  assert.match(changed!, /candidates/);
  assert.match(changed!, /max_prompt_tokens/);
  assert.deepEqual(logMessages.filter((message) => /ignored|unknown setting/.test(message)), []);
});

test('shutdown and exit end the server with status 0', async () => {
  await connection.sendRequest(ShutdownRequest.type);
  const exited = new Promise<number | null>((resolve) => server.on('exit', (code) => resolve(code)));
  await connection.sendNotification(ExitNotification.type);
  assert.equal(await exited, 0);
  connection.dispose();
});
