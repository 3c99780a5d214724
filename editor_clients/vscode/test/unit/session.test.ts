import './installVscodeStub';
import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';
import { CanvasPreview } from '../../src/canvasPreview';
import { CANVAS_NOTIFICATION, STATUS_NOTIFICATION } from '../../src/protocol';
import { DiffgemmaSession } from '../../src/session';
import { Snooze } from '../../src/snooze';
import { StatusIndicator } from '../../src/statusIndicator';
import { FakeClock } from './fakeClock';
import { recordingFactory } from './recordingClient';
import { StatusBarAlignment, StubLogOutputChannel, StubStatusBarItem, StubTextEditor, stubState } from './vscodeStub';

const URI = 'file:///work/app.py';

function setup(prepare?: Parameters<typeof recordingFactory>[0]) {
  const item = new StubStatusBarItem('diffgemma.status', StatusBarAlignment.Right, 100);
  const status = new StatusIndicator(item as any, true);
  const canvas = new CanvasPreview();
  const log = new StubLogOutputChannel('DiffGemma');
  const { clients, factory } = recordingFactory(prepare);
  const clock = new FakeClock();
  const snooze = new Snooze(clock);
  const session = new DiffgemmaSession(factory as any, status, canvas, log as any, snooze);
  return { item, status, canvas, log, clients, session, clock, snooze };
}

const notCancelled = { isCancellationRequested: false };

/** A document as the middleware sees it (vscode.TextDocument): what the gate reads is the language id. */
function doc(languageId: string, uri = `file:///work/file.${languageId}`) {
  return { uri: { toString: () => uri }, languageId };
}

/** The middleware's answer for a document of `languageId`, and whether the server was asked. */
async function ask(middleware: any, languageId: string): Promise<{ result: unknown; asked: boolean }> {
  let asked = false;
  const result = await middleware.provideInlineCompletionItems(doc(languageId), 'pos', 'ctx', notCancelled, async () => {
    asked = true;
    return { items: [{ insertText: 'x' }] };
  });
  return { result, asked };
}

beforeEach(() => stubState.reset());

test('starts the configured server with the settings as initializationOptions and follows its status', async () => {
  stubState.settings.set('diffgemma.server.command', '/venv/bin/python');
  stubState.settings.set('diffgemma.server.args', ['-m', 'lsp_server']);
  stubState.settings.set('diffgemma.model', '/models/tiny');
  const { item, clients, session } = setup();
  await session.start();

  assert.equal(clients.length, 1);
  const [client] = clients;
  assert.equal(client.started, 1);
  assert.deepEqual(client.command, { command: '/venv/bin/python', args: ['-m', 'lsp_server'] });
  assert.equal(client.settings.model, '/models/tiny');
  assert.equal(item.text, '$(loading~spin) DiffGemma', 'starting until the server reports');

  client.deliver(STATUS_NOTIFICATION, { state: 'loading' });
  assert.match(item.tooltip ?? '', /loading the model/);
  client.deliver(STATUS_NOTIFICATION, { state: 'ready' });
  assert.equal(item.text, '$(sparkle) DiffGemma');
});

test('a server that cannot start is reported with the command line, the log and a way to the settings', async () => {
  stubState.errorMessageChoice = 'Open Settings';
  const { item, log, clients, session } = setup((client) => {
    client.startError = new Error('spawn diffgemma-lsp ENOENT');
  });
  await session.start();
  await new Promise((resolve) => setImmediate(resolve));

  assert.equal(clients[0].hasHandler(STATUS_NOTIFICATION), false, 'handlers of the failed client are dropped');
  await session.stop();
  assert.equal(clients[0].stopped, 0, 'a client that never started is not stopped');
  assert.equal(item.text, '$(debug-disconnect) DiffGemma');
  assert.match(item.tooltip ?? '', /could not start "diffgemma-lsp --stdio": spawn diffgemma-lsp ENOENT/);
  // The way to get the server: it is not on PyPI, it is installed from a clone of the repository.
  const [{ message }] = stubState.errorMessages;
  assert.doesNotMatch(message, /pip install diffgemma-lsp/);
  assert.match(message, /not on PyPI/);
  assert.match(message, /clone/);
  assert.match(message, /make install/);
  assert.match(message, /\.venv\/bin\/diffgemma-lsp/);
  assert.match(message, /diffgemma\.server\.command/);
  assert.match(log.lines.join('\n'), /\[error\] could not start/);
  assert.equal(stubState.errorMessages.length, 1);
  assert.deepEqual(stubState.errorMessages[0].actions, ['Show Log', 'Open Settings']);
  assert.deepEqual(stubState.executedCommands, [
    { command: 'workbench.action.openSettings', args: ['diffgemma.server'] },
  ]);
});

test('a server error pops up once with the log on offer; repeated errors only update the status', async () => {
  stubState.errorMessageChoice = 'Show Log';
  const { item, log, clients, session } = setup();
  await session.start();
  clients[0].deliver(STATUS_NOTIFICATION, { state: 'error', message: 'checkpoint not found: /nope' });
  clients[0].deliver(STATUS_NOTIFICATION, { state: 'error', message: 'still broken' });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(
    stubState.errorMessages.map((m) => m.message),
    ['DiffGemma: checkpoint not found: /nope'],
  );
  assert.equal(log.shown, 1);
  assert.match(item.tooltip ?? '', /error — still broken/);
});

test('a remote server that goes down and comes back: the status follows, one pop-up per new reason, no log flood', async () => {
  const url = 'http://gpu-box:8000/v1';
  stubState.settings.set('diffgemma.model', url);
  const { item, log, clients, session } = setup();
  await session.start();
  const [client] = clients;
  const down = { state: 'error', message: `${url}: connection refused`, model: url };
  client.deliver(STATUS_NOTIFICATION, { state: 'ready', message: `remote ${url}`, model: url });
  // The server reports the error again at every request while the server is down.
  for (let request = 0; request < 5; request += 1) {
    client.deliver(STATUS_NOTIFICATION, down);
  }
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(item.text, '$(error) DiffGemma');
  assert.match(item.tooltip ?? '', /error — http:\/\/gpu-box:8000\/v1: connection refused/);
  assert.deepEqual(stubState.errorMessages.map((m) => m.message), [`DiffGemma: ${url}: connection refused`]);
  assert.equal(log.lines.filter((line) => line.includes('connection refused')).length, 1, 'logged once, not per request');

  client.deliver(STATUS_NOTIFICATION, { state: 'ready', message: `remote ${url}`, model: url });
  assert.equal(item.text, '$(sparkle) DiffGemma', 'back to normal by itself');
  assert.doesNotMatch(item.tooltip ?? '', /refused/);

  // Down again for the same reason: the status bar says so, without another pop-up.
  client.deliver(STATUS_NOTIFICATION, down);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(item.text, '$(error) DiffGemma');
  assert.equal(stubState.errorMessages.length, 1);
  assert.equal(log.lines.filter((line) => line.includes('connection refused')).length, 2, 'each outage is logged');

  // A new reason is news, even while in error.
  client.deliver(STATUS_NOTIFICATION, { state: 'error', message: `${url}: HTTP 401 Unauthorized`, model: url });
  client.deliver(STATUS_NOTIFICATION, { state: 'ready', message: `remote ${url}`, model: url });
  client.deliver(STATUS_NOTIFICATION, { state: 'error', message: `${url}: HTTP 401 Unauthorized`, model: url });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(stubState.errorMessages.length, 2);
  assert.equal(stubState.errorMessages[1].message, `DiffGemma: ${url}: HTTP 401 Unauthorized`);
  assert.match(log.lines.join('\n'), /\[error\] server: http:\/\/gpu-box:8000\/v1: HTTP 401 Unauthorized/);

  // After a restart (or a settings change) the same reason pops up again.
  await session.restart();
  clients[1].deliver(STATUS_NOTIFICATION, { state: 'error', message: `${url}: HTTP 401 Unauthorized`, model: url });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(stubState.errorMessages.length, 3);
});

test('remote settings changes are sent to the running server', async () => {
  const { clients, session } = setup();
  await session.start();
  stubState.configurationChanged.event((event) => session.onConfigurationChanged(event));
  const changes: Record<string, unknown> = {
    'diffgemma.model': 'https://gpu-box:8000/v1',
    'diffgemma.apiKey': 'sk-from-settings',
    'diffgemma.remoteModel': 'dg',
    'diffgemma.requestTimeout': 30,
    'diffgemma.tlsVerify': false,
    'diffgemma.tokenizer': '/models/dg',
  };
  for (const [key, value] of Object.entries(changes)) {
    const sent = clients[0].sentNotifications.length;
    await stubState.changeSettings({ [key]: value });
    assert.equal(clients[0].sentNotifications.length, sent + 1, `${key} is sent`);
  }
  const params = clients[0].sentNotifications.at(-1)!.params as { settings: { diffgemma: Record<string, unknown> } };
  assert.deepEqual(
    Object.fromEntries(['model', 'apiKey', 'remoteModel', 'requestTimeout', 'tlsVerify', 'tokenizer'].map((k) => [k, params.settings.diffgemma[k]])),
    { model: 'https://gpu-box:8000/v1', apiKey: 'sk-from-settings', remoteModel: 'dg', requestTimeout: 30, tlsVerify: false, tokenizer: '/models/dg' },
  );
  assert.equal(clients.length, 1, 'no restart: the server reloads the model itself');
});

test('inline completions are asked for only while enabled, and the canvas preview ends with the answer', async () => {
  const editor = new StubTextEditor(URI);
  stubState.visibleTextEditors.push(editor);
  stubState.settings.set('diffgemma.showDenoisingCanvas', true);
  const { canvas, clients, session } = setup();
  await session.start();
  const middleware = clients[0].middleware;
  const answer = { items: [{ insertText: 'return a + b' }] };
  const calls: unknown[][] = [];
  const next = async (...args: unknown[]) => {
    calls.push(args);
    return answer;
  };

  clients[0].deliver(CANVAS_NOTIFICATION, { uri: URI, position: { line: 0, character: 4 }, step: 1, text: 'ret', acceptedFraction: 0.2 });
  assert.equal(canvas.shownUri, URI);
  const python = doc('python', URI);
  const result = await middleware.provideInlineCompletionItems(python, 'pos', 'ctx', notCancelled, next);
  assert.equal(result, answer);
  assert.deepEqual(calls, [[python, 'pos', 'ctx', notCancelled]]);
  assert.equal(canvas.shownUri, undefined, 'the preview is cleared once the completion arrives');

  stubState.settings.set('diffgemma.enable', { '*': false });
  assert.equal(await middleware.provideInlineCompletionItems(python, 'pos', 'ctx', notCancelled, next), null);
  stubState.settings.set('diffgemma.enable', false);
  assert.equal(await middleware.provideInlineCompletionItems(python, 'pos', 'ctx', notCancelled, next), null, 'legacy boolean');
  assert.equal(calls.length, 1, 'no request while disabled');
});

test('per language: an entry of its own decides, else "*"', async () => {
  const { clients, session } = setup();
  await session.start();
  const { middleware } = clients[0];
  stubState.settings.set('diffgemma.enable', { '*': true, go: false });
  assert.deepEqual(await ask(middleware, 'go'), { result: null, asked: false });
  assert.equal((await ask(middleware, 'python')).asked, true);

  stubState.settings.set('diffgemma.enable', { '*': false, go: true });
  assert.equal((await ask(middleware, 'go')).asked, true);
  assert.deepEqual(await ask(middleware, 'python'), { result: null, asked: false });
});

test('prose and commit-message buffers get no suggestions by default, code does; users can turn them on', async () => {
  const { clients, session } = setup();
  await session.start();
  const { middleware } = clients[0];
  for (const language of ['plaintext', 'markdown', 'scminput', 'git-commit', 'git-rebase']) {
    assert.deepEqual(await ask(middleware, language), { result: null, asked: false }, `${language} is off by default`);
  }
  for (const language of ['python', 'typescript', 'go', 'rust']) {
    assert.equal((await ask(middleware, language)).asked, true, `${language} is on by default`);
  }

  // The user's object is overlaid on the defaults (as VS Code merges object settings): one entry turns one on.
  stubState.settings.set('diffgemma.enable', { markdown: true });
  assert.equal((await ask(middleware, 'markdown')).asked, true);
  assert.equal((await ask(middleware, 'git-commit')).asked, false, 'the other defaults stay');
  stubState.settings.set('diffgemma.enable', { '*': true, plaintext: true, 'git-commit': true });
  assert.equal((await ask(middleware, 'plaintext')).asked, true);
  assert.equal((await ask(middleware, 'git-commit')).asked, true);
});

test('while snoozed the provider returns nothing without asking the server, until the snooze ends', async () => {
  const editor = new StubTextEditor(URI);
  stubState.visibleTextEditors.push(editor);
  stubState.activeTextEditor = editor;
  stubState.settings.set('diffgemma.showDenoisingCanvas', true);
  const { item, canvas, clients, session, snooze, clock } = setup();
  await session.start();
  clients[0].deliver(STATUS_NOTIFICATION, { state: 'ready' });
  const { middleware } = clients[0];
  clients[0].deliver(CANVAS_NOTIFICATION, { uri: URI, position: { line: 0, character: 4 }, step: 1, text: 'ret', acceptedFraction: 0.2 });
  assert.equal(canvas.shownUri, URI);

  snooze.start(60);
  assert.equal(canvas.shownUri, undefined, 'snoozing takes the canvas preview away');
  assert.equal(item.text, '$(clock) DiffGemma');
  assert.match(item.tooltip ?? '', /snoozed until \d\d:\d\d/);
  assert.deepEqual(await ask(middleware, 'python'), { result: null, asked: false });
  clients[0].deliver(CANVAS_NOTIFICATION, { uri: URI, position: { line: 0, character: 4 }, step: 2, text: 'retu', acceptedFraction: 0.4 });
  assert.equal(canvas.shownUri, undefined, 'no canvas preview while snoozed');
  assert.equal(session.gate().snoozedUntil, clock.time + 60 * 60_000);

  clock.advance(60 * 60_000);
  assert.equal((await ask(middleware, 'python')).asked, true);
  assert.equal(item.text, '$(sparkle) DiffGemma');
  assert.equal(session.gate().snoozedUntil, undefined);
});

test('canvas notifications are drawn only when the preview setting is on', async () => {
  const editor = new StubTextEditor(URI);
  stubState.visibleTextEditors.push(editor);
  const { canvas, clients, session } = setup();
  await session.start();
  clients[0].deliver(CANVAS_NOTIFICATION, { uri: URI, position: { line: 0, character: 0 }, step: 1, text: 'x', acceptedFraction: 0 });
  assert.equal(canvas.shownUri, undefined);
});

test('server settings changes are sent under the diffgemma section; command changes restart the server', async () => {
  const { clients, session } = setup();
  await session.start();
  stubState.configurationChanged.event((event) => session.onConfigurationChanged(event));

  await stubState.changeSettings({ 'diffgemma.model': '/models/other', 'diffgemma.candidates': 4 });
  assert.equal(clients.length, 1);
  assert.deepEqual(clients[0].sentNotifications.map((n) => n.method), ['workspace/didChangeConfiguration']);
  const params = clients[0].sentNotifications[0].params as { settings: { diffgemma: Record<string, unknown> } };
  assert.equal(params.settings.diffgemma.model, '/models/other');
  assert.equal(params.settings.diffgemma.candidates, 4);

  await stubState.changeSettings({ 'editor.fontSize': 14 });
  assert.equal(clients[0].sentNotifications.length, 1, 'other sections are ignored');

  await stubState.changeSettings({ 'diffgemma.server.command': '/opt/diffgemma-lsp' });
  assert.equal(clients[0].stopped, 1);
  assert.equal(clients.length, 2);
  assert.equal(clients[1].command.command, '/opt/diffgemma-lsp');
  assert.equal(clients[1].settings.model, '/models/other');
  assert.equal(clients[1].started, 1);
});

test('turning completions off updates the status bar without touching the server', async () => {
  const { item, clients, session } = setup();
  await session.start();
  clients[0].deliver(STATUS_NOTIFICATION, { state: 'ready' });
  stubState.configurationChanged.event((event) => session.onConfigurationChanged(event));
  await stubState.changeSettings({ 'diffgemma.enable': { '*': false } });
  assert.equal(item.text, '$(circle-slash) DiffGemma');
  assert.deepEqual(clients[0].sentNotifications, []);
  assert.equal(clients[0].stopped, 0);
});

test('a server that exits on its own is shown as stopped; stopping on purpose says so', async () => {
  const { item, clients, session } = setup();
  await session.start();
  clients[0].exit();
  assert.match(item.tooltip ?? '', /the server exited/);

  await session.restart();
  assert.equal(clients.length, 2);
  await session.stop();
  await session.stop();
  assert.equal(clients[1].stopped, 1, 'stopping twice stops the server once');
  assert.match(item.tooltip ?? '', /server not running — stopped/);
});
