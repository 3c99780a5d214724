import './installVscodeStub';
import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';
import { CanvasPreview } from '../../src/canvasPreview';
import { CANVAS_NOTIFICATION, STATUS_NOTIFICATION } from '../../src/protocol';
import { DiffgemmaSession } from '../../src/session';
import { StatusIndicator } from '../../src/statusIndicator';
import { recordingFactory } from './recordingClient';
import { StatusBarAlignment, StubLogOutputChannel, StubStatusBarItem, StubTextEditor, stubState } from './vscodeStub';

const URI = 'file:///work/app.py';

function setup(prepare?: Parameters<typeof recordingFactory>[0]) {
  const item = new StubStatusBarItem('diffgemma.status', StatusBarAlignment.Right, 100);
  const status = new StatusIndicator(item as any, true);
  const canvas = new CanvasPreview();
  const log = new StubLogOutputChannel('DiffGemma');
  const { clients, factory } = recordingFactory(prepare);
  const session = new DiffgemmaSession(factory as any, status, canvas, log as any);
  return { item, status, canvas, log, clients, session };
}

const notCancelled = { isCancellationRequested: false };

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
  const result = await middleware.provideInlineCompletionItems('doc', 'pos', 'ctx', notCancelled, next);
  assert.equal(result, answer);
  assert.deepEqual(calls, [['doc', 'pos', 'ctx', notCancelled]]);
  assert.equal(canvas.shownUri, undefined, 'the preview is cleared once the completion arrives');

  stubState.settings.set('diffgemma.enable', false);
  assert.equal(await middleware.provideInlineCompletionItems('doc', 'pos', 'ctx', notCancelled, next), null);
  assert.equal(calls.length, 1, 'no request while disabled');
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
  await stubState.changeSettings({ 'diffgemma.enable': false });
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
