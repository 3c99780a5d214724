import './installVscodeStub';
import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';
import { COMMANDS } from '../../src/commands';
import { menuItems, showMenu, type MenuItem } from '../../src/menu';
import { QuickPickItemKind, stubState } from './vscodeStub';

beforeEach(() => stubState.reset());

const actions = (items: MenuItem[]) =>
  items.filter((item) => item.kind !== QuickPickItemKind.Separator).map((item) => [item.command, ...(item.args ?? [])]);

test('enabled, in a python editor: disable everywhere or for python, snooze 5/15/60, restart, log, settings', () => {
  const items = menuItems({ enabledEverywhere: true, language: 'python', enabledForLanguage: true });
  assert.deepEqual(actions(items), [
    [COMMANDS.disable],
    [COMMANDS.disableForLanguage, 'python'],
    [COMMANDS.snooze, 5],
    [COMMANDS.snooze, 15],
    [COMMANDS.snooze, 60],
    [COMMANDS.restartServer],
    [COMMANDS.showLog],
    ['workbench.action.openSettings', 'diffgemma'],
  ]);
  const labels = items.map((item) => item.label);
  assert.ok(labels.includes("$(circle-slash) Disable for 'python'"));
  assert.ok(labels.includes('$(clock) Snooze for 15 minutes'));
  assert.ok(labels.includes('$(debug-restart) Restart Server'));
});

test('disabled everywhere, a language switched on, snoozed: enable, disable for it, resume first', () => {
  const until = new Date(2026, 0, 5, 14, 15).getTime();
  const items = menuItems({ enabledEverywhere: false, language: 'go', enabledForLanguage: true, snoozedUntil: until });
  assert.deepEqual(actions(items).slice(0, 3), [[COMMANDS.resume], [COMMANDS.enable], [COMMANDS.disableForLanguage, 'go']]);
  assert.equal(items[1].label, '$(play) Resume Inline Completions');
  assert.equal(items[1].description, 'snoozed until 14:15');

  const markdown = menuItems({ enabledEverywhere: true, language: 'markdown', enabledForLanguage: false });
  assert.deepEqual(actions(markdown).slice(0, 2), [[COMMANDS.disable], [COMMANDS.enableForLanguage, 'markdown']]);
  assert.equal(markdown.find((item) => item.command === COMMANDS.resume), undefined, 'no resume when not snoozed');
});

test('without an active editor there is no per-language entry', () => {
  const items = menuItems({ enabledEverywhere: true });
  assert.equal(items.some((item) => item.command === COMMANDS.enableForLanguage || item.command === COMMANDS.disableForLanguage), false);
});

test('showMenu runs the chosen entry with its arguments; dismissing runs nothing', async () => {
  const ran: unknown[][] = [];
  stubState.commands.set(COMMANDS.snooze, (...args) => ran.push(args));
  stubState.quickPickChoice = (items) => items.find((item) => item.label === '$(clock) Snooze for 60 minutes');
  await showMenu({ enabledEverywhere: true, language: 'python', enabledForLanguage: true });
  assert.equal(stubState.quickPicks.length, 1);
  assert.deepEqual(stubState.executedCommands, [{ command: COMMANDS.snooze, args: [60] }]);
  assert.deepEqual(ran, [[60]]);

  stubState.quickPickChoice = undefined;
  await showMenu({ enabledEverywhere: true });
  assert.equal(stubState.quickPicks.length, 2);
  assert.equal(stubState.executedCommands.length, 1);
});
