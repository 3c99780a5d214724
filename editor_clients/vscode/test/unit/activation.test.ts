import './installVscodeStub';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeEach, test } from 'node:test';
import { activateWith, COMMANDS } from '../../src/activation';
import { ACCEPT_COMMAND } from '../../src/protocol';
import { recordingFactory } from './recordingClient';
import { ConfigurationTarget, StubTextEditor, stubState } from './vscodeStub';

const manifest = JSON.parse(readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8'));

async function activate() {
  const context = { subscriptions: [] as { dispose(): unknown }[] };
  const { clients, factory } = recordingFactory();
  const session = await activateWith(context as any, factory as any);
  return { context, clients, session };
}

beforeEach(() => stubState.reset());

test('registers exactly the commands package.json contributes, leaving the accept command to the server', async () => {
  await activate();
  const contributed = manifest.contributes.commands.map((c: { command: string }) => c.command).sort();
  assert.deepEqual([...stubState.commands.keys()].sort(), contributed);
  assert.deepEqual(Object.values(COMMANDS).sort(), contributed);
  // vscode-languageclient registers the server's executeCommandProvider commands itself; a second registration
  // of the same id would make it fail.
  assert.equal(contributed.includes(ACCEPT_COMMAND), false);
});

test('activation starts the server and shows the status bar item', async () => {
  const { clients } = await activate();
  assert.equal(clients.length, 1);
  assert.equal(clients[0].started, 1);
  const [item] = stubState.statusBarItems;
  assert.equal(item.visible, true);
  assert.equal(item.command, COMMANDS.showLog);
  assert.equal(manifest.activationEvents.includes('onStartupFinished'), true);
});

test('enable, disable and toggle write the user setting, and the status bar follows', async () => {
  const { clients } = await activate();
  clients[0].deliver('diffgemma/status', { state: 'ready' });
  const [item] = stubState.statusBarItems;

  await stubState.commands.get(COMMANDS.disable)!();
  assert.deepEqual(stubState.settingUpdates.at(-1), { key: 'diffgemma.enable', value: false, target: ConfigurationTarget.Global });
  assert.equal(item.text, '$(circle-slash) DiffGemma');

  await stubState.commands.get(COMMANDS.toggle)!();
  assert.equal(stubState.settingUpdates.at(-1)?.value, true);
  assert.equal(item.text, '$(sparkle) DiffGemma');

  await stubState.commands.get(COMMANDS.toggle)!();
  await stubState.commands.get(COMMANDS.enable)!();
  assert.deepEqual(stubState.settingUpdates.map((u) => u.value), [false, true, false, true]);
});

test('restart starts a new server; show log reveals the output channel; disposal stops the server', async () => {
  const { context, clients } = await activate();
  await stubState.commands.get(COMMANDS.restartServer)!();
  assert.equal(clients.length, 2);
  assert.equal(clients[0].stopped, 1);

  await stubState.commands.get(COMMANDS.showLog)!();
  assert.equal(stubState.outputChannels[0].shown, 1);

  context.subscriptions.forEach((subscription) => subscription.dispose());
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(clients[1].stopped, 1);
  assert.equal(stubState.commands.size, 0);
});

test('editing the previewed document clears the canvas preview', async () => {
  const editor = new StubTextEditor('file:///work/app.py');
  stubState.visibleTextEditors.push(editor);
  stubState.settings.set('diffgemma.showDenoisingCanvas', true);
  const { clients } = await activate();
  const [decoration] = stubState.decorationTypes;
  clients[0].deliver('diffgemma/canvas', { uri: 'file:///work/app.py', position: { line: 0, character: 0 }, step: 1, text: 'x', acceptedFraction: 0 });
  assert.equal(editor.decorations.get(decoration)?.length, 1);
  await stubState.textDocumentChanged.fire({ document: editor.document });
  assert.deepEqual(editor.decorations.get(decoration), []);
});
