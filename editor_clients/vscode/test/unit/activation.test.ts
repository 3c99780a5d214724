import './installVscodeStub';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeEach, test } from 'node:test';
import { activateWith, COMMANDS } from '../../src/activation';
import { ACCEPT_COMMAND } from '../../src/protocol';
import { HIDE_INLINE_SUGGESTION_COMMAND } from '../../src/commands';
import { FakeClock } from './fakeClock';
import { recordingFactory } from './recordingClient';
import { API_KEY_SECRET } from '../../src/settings';
import { ConfigurationTarget, StubSecretStorage, StubTextEditor, stubState, type StubQuickPickItem } from './vscodeStub';

const manifest = JSON.parse(readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8'));

async function activate(clock = new FakeClock(), secrets = new StubSecretStorage()) {
  const context = { subscriptions: [] as { dispose(): unknown }[], secrets };
  const { clients, factory } = recordingFactory();
  const session = await activateWith(context as any, factory as any, clock);
  return { context, clients, session, clock, secrets };
}

/** The diffgemma settings of the newest workspace/didChangeConfiguration `client` was sent. */
function lastSentSettings(client: { sentNotifications: { method: string; params: unknown }[] }): Record<string, unknown> {
  const sent = client.sentNotifications.filter((n) => n.method === 'workspace/didChangeConfiguration');
  assert.ok(sent.length > 0, 'no workspace/didChangeConfiguration was sent');
  return (sent.at(-1)!.params as { settings: { diffgemma: Record<string, unknown> } }).settings.diffgemma;
}

/** Asks the middleware for inline completions in a document of `languageId`; true when the server was asked. */
async function serverAsked(client: { middleware: any }, languageId: string): Promise<boolean> {
  let asked = false;
  const document = { uri: { toString: () => `file:///work/x.${languageId}` }, languageId };
  const result = await client.middleware.provideInlineCompletionItems(document, { line: 0, character: 0 }, {}, { isCancellationRequested: false }, async () => {
    asked = true;
    return { items: [{ insertText: 'x' }] };
  });
  assert.equal(result === null, !asked, 'null exactly when the server is not asked');
  return asked;
}

/** Clicks the status bar item and picks the menu entry whose label is `label`. */
async function clickStatusAndPick(label: string): Promise<StubQuickPickItem[]> {
  const [item] = stubState.statusBarItems;
  let shown: StubQuickPickItem[] = [];
  stubState.quickPickChoice = (items) => {
    shown = items;
    const choice = items.find((candidate) => candidate.label === label);
    assert.ok(choice, `no menu entry "${label}" in ${items.map((i) => i.label).join(' | ')}`);
    return choice;
  };
  await stubState.commands.get(item.command!)!();
  stubState.quickPickChoice = undefined;
  return shown;
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
  assert.equal(item.command, COMMANDS.showMenu, 'a click opens the DiffGemma menu');
  assert.equal(manifest.activationEvents.includes('onStartupFinished'), true);
});

test('enable, disable and toggle write the "*" entry of the user setting, and the status bar follows', async () => {
  const { clients } = await activate();
  clients[0].deliver('diffgemma/status', { state: 'ready' });
  const [item] = stubState.statusBarItems;

  await stubState.commands.get(COMMANDS.disable)!();
  assert.deepEqual(stubState.settingUpdates.at(-1), { key: 'diffgemma.enable', value: { '*': false }, target: ConfigurationTarget.Global });
  assert.equal(item.text, '$(circle-slash) DiffGemma');
  assert.equal(await serverAsked(clients[0], 'python'), false);

  await stubState.commands.get(COMMANDS.toggle)!();
  assert.deepEqual(stubState.settingUpdates.at(-1)?.value, { '*': true });
  assert.equal(item.text, '$(sparkle) DiffGemma');
  assert.equal(await serverAsked(clients[0], 'python'), true);

  await stubState.commands.get(COMMANDS.toggle)!();
  await stubState.commands.get(COMMANDS.enable)!();
  assert.deepEqual(stubState.settingUpdates.map((u) => (u.value as Record<string, boolean>)['*']), [false, true, false, true]);
});

test('the status menu disables and re-enables the current language, persisted in diffgemma.enable', async () => {
  const { clients } = await activate();
  clients[0].deliver('diffgemma/status', { state: 'ready' });
  const [item] = stubState.statusBarItems;
  stubState.settings.set('diffgemma.enable', { '*': true, rust: false });
  stubState.activeTextEditor = new StubTextEditor('file:///work/app.py', 'python');
  await stubState.activeTextEditorChanged.fire(stubState.activeTextEditor);

  await clickStatusAndPick("$(circle-slash) Disable for 'python'");
  assert.deepEqual(stubState.settingUpdates, [
    { key: 'diffgemma.enable', value: { '*': true, rust: false, python: false }, target: ConfigurationTarget.Global },
  ]);
  assert.equal(await serverAsked(clients[0], 'python'), false, 'python is off');
  assert.equal(await serverAsked(clients[0], 'go'), true, 'other languages are not');
  assert.equal(item.text, '$(circle-slash) DiffGemma');
  assert.match(item.tooltip ?? '', /disabled for 'python'/);

  // Another editor, another language: the status bar follows the active editor.
  stubState.activeTextEditor = new StubTextEditor('file:///work/main.go', 'go');
  await stubState.activeTextEditorChanged.fire(stubState.activeTextEditor);
  assert.equal(item.text, '$(sparkle) DiffGemma');

  stubState.activeTextEditor = new StubTextEditor('file:///work/app.py', 'python');
  await stubState.activeTextEditorChanged.fire(stubState.activeTextEditor);
  await clickStatusAndPick("$(check) Enable for 'python'");
  assert.deepEqual(stubState.settingUpdates.at(-1)?.value, { '*': true, rust: false, python: true });
  assert.equal(await serverAsked(clients[0], 'python'), true);
  assert.equal(item.text, '$(sparkle) DiffGemma');
});

test('per-language commands write the workspace value when the workspace sets diffgemma.enable', async () => {
  await activate();
  stubState.settings.set('diffgemma.enable', { '*': true });
  stubState.workspaceSettings.set('diffgemma.enable', { '*': false });
  await stubState.commands.get(COMMANDS.enableForLanguage)!('typescript');
  assert.deepEqual(stubState.settingUpdates, [
    { key: 'diffgemma.enable', value: { '*': false, typescript: true }, target: ConfigurationTarget.Workspace },
  ]);
  // From the Command Palette (no argument) and no editor open: nothing to apply it to.
  await stubState.commands.get(COMMANDS.disableForLanguage)!();
  assert.equal(stubState.settingUpdates.length, 1);
  assert.match(stubState.infoMessages[0], /open a file first/);
  // A legacy boolean value becomes the "*" entry.
  stubState.workspaceSettings.clear();
  stubState.settings.set('diffgemma.enable', false);
  await stubState.commands.get(COMMANDS.enableForLanguage)!('go');
  assert.deepEqual(stubState.settingUpdates.at(-1)?.value, { '*': false, go: true });
});

test('snoozing from the status menu stops inline completions until it expires, and the status bar shows it', async () => {
  const { clients, clock } = await activate();
  clients[0].deliver('diffgemma/status', { state: 'ready' });
  const [item] = stubState.statusBarItems;
  stubState.activeTextEditor = new StubTextEditor('file:///work/app.py', 'python');
  await stubState.activeTextEditorChanged.fire(stubState.activeTextEditor);
  assert.equal(await serverAsked(clients[0], 'python'), true);

  await clickStatusAndPick('$(clock) Snooze for 5 minutes');
  assert.deepEqual(
    stubState.executedCommands.map((c) => [c.command, ...c.args]),
    [[COMMANDS.snooze, 5], [HIDE_INLINE_SUGGESTION_COMMAND]],
    'the menu runs the snooze command, which hides the ghost text on screen',
  );
  assert.equal(await serverAsked(clients[0], 'python'), false, 'no request while snoozed');
  assert.equal(item.text, '$(clock) DiffGemma');
  const until = new Date(clock.time + 5 * 60_000);
  const hhmm = `${String(until.getHours()).padStart(2, '0')}:${String(until.getMinutes()).padStart(2, '0')}`;
  assert.match(item.tooltip ?? '', new RegExp(`snoozed until ${hhmm}`));
  assert.deepEqual(stubState.settingUpdates, [], 'snoozing writes no setting');

  clock.advance(5 * 60_000 - 1000);
  assert.equal(await serverAsked(clients[0], 'python'), false, 'still snoozed just before the end');
  clock.advance(1000);
  assert.equal(await serverAsked(clients[0], 'python'), true, 'completions are back when the snooze ends');
  assert.equal(item.text, '$(sparkle) DiffGemma');
  assert.doesNotMatch(item.tooltip ?? '', /snoozed/);
});

test('a snooze can be resumed from the menu; the palette command asks for the length', async () => {
  const { clients } = await activate();
  clients[0].deliver('diffgemma/status', { state: 'ready' });
  const [item] = stubState.statusBarItems;

  stubState.quickPickChoice = (items) => items.find((i) => i.label === '15 minutes');
  await stubState.commands.get(COMMANDS.snooze)!();
  assert.equal(await serverAsked(clients[0], 'python'), false);
  assert.equal(item.text, '$(clock) DiffGemma');

  const shown = await clickStatusAndPick('$(play) Resume Inline Completions');
  assert.match(String(shown.find((i) => i.label === '$(play) Resume Inline Completions')?.description), /snoozed until \d\d:\d\d/);
  assert.equal(await serverAsked(clients[0], 'python'), true);
  assert.equal(item.text, '$(sparkle) DiffGemma');

  // Dismissing the length picker snoozes nothing.
  stubState.quickPickChoice = undefined;
  await stubState.commands.get(COMMANDS.snooze)!();
  assert.equal(await serverAsked(clients[0], 'python'), true);
});

test('the status menu restarts the server and shows the log', async () => {
  const { clients } = await activate();
  await clickStatusAndPick('$(debug-restart) Restart Server');
  assert.equal(clients.length, 2);
  assert.equal(clients[0].stopped, 1);
  assert.equal(clients[1].started, 1);
  await clickStatusAndPick('$(output) Show Server Log');
  assert.equal(stubState.outputChannels[0].shown, 1);
  await clickStatusAndPick('$(gear) Open Settings');
  assert.deepEqual(stubState.executedCommands.at(-1), { command: 'workbench.action.openSettings', args: ['diffgemma'] });
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

test('Set API Key keeps the key in SecretStorage, not in settings, and the server gets it at once and at restart', async () => {
  stubState.settings.set('diffgemma.model', 'https://gpu-box:8000/v1');
  const { clients, secrets } = await activate();
  assert.equal(clients[0].settings.apiKey, null, 'no key anywhere: null, the server reads $DIFFGEMMA_API_KEY');

  stubState.inputBoxValue = '  sk-secret-1  ';
  await stubState.commands.get(COMMANDS.setApiKey)!();
  const [box] = stubState.inputBoxes;
  assert.equal(box.password, true, 'the key is typed into a password box');
  assert.equal(box.ignoreFocusOut, true);
  assert.deepEqual([...secrets.values], [[API_KEY_SECRET, 'sk-secret-1']]);
  assert.deepEqual(stubState.settingUpdates, [], 'no setting is written: settings.json never holds the key');
  assert.equal(lastSentSettings(clients[0]).apiKey, 'sk-secret-1', 'the running server gets the key');
  assert.match(stubState.infoMessages.at(-1)!, /API key stored; it is sent to the server at https:\/\/gpu-box:8000\/v1/);
  assert.doesNotMatch(stubState.infoMessages.join('\n') + stubState.outputChannels[0].lines.join('\n'), /sk-secret/, 'never shown or logged');

  // The stored key wins over the plain setting, which is the fallback.
  await stubState.changeSettings({ 'diffgemma.apiKey': 'from-settings' });
  assert.equal(lastSentSettings(clients[0]).apiKey, 'sk-secret-1');
  await stubState.commands.get(COMMANDS.restartServer)!();
  assert.equal(clients[1].settings.apiKey, 'sk-secret-1', 'a new server starts with the stored key');

  // Dismissing the box keeps the key; an empty answer removes it, and the setting applies again.
  const sentBefore = clients[1].sentNotifications.length;
  stubState.inputBoxValue = undefined;
  await stubState.commands.get(COMMANDS.setApiKey)!();
  assert.equal(secrets.values.get(API_KEY_SECRET), 'sk-secret-1');
  assert.equal(clients[1].sentNotifications.length, sentBefore);
  stubState.inputBoxValue = '';
  await stubState.commands.get(COMMANDS.setApiKey)!();
  assert.equal(secrets.values.has(API_KEY_SECRET), false);
  assert.equal(lastSentSettings(clients[1]).apiKey, 'from-settings');
  assert.match(stubState.infoMessages.at(-1)!, /stored API key removed/);

  await secrets.store(API_KEY_SECRET, 'sk-secret-2');
  assert.equal(lastSentSettings(clients[1]).apiKey, 'sk-secret-2', 'a key stored by another window is picked up');
  await stubState.commands.get(COMMANDS.clearApiKey)!();
  assert.equal(secrets.values.has(API_KEY_SECRET), false);
  assert.equal(lastSentSettings(clients[1]).apiKey, 'from-settings');
  await secrets.store('another.extension.secret', 'x');
  assert.equal(lastSentSettings(clients[1]).apiKey, 'from-settings', 'other secrets are not the API key');
});

test('without an OS keyring the API key falls back to the setting, with a warning in the log', async () => {
  stubState.settings.set('diffgemma.apiKey', 'from-settings');
  const secrets = new StubSecretStorage();
  secrets.failing = new Error('no keyring');
  const { clients } = await activate(new FakeClock(), secrets);
  assert.equal(clients[0].started, 1);
  assert.equal(clients[0].settings.apiKey, 'from-settings');
  assert.match(stubState.outputChannels[0].lines.join('\n'), /\[warn\] reading the API key from the secret storage: no keyring/);
});
