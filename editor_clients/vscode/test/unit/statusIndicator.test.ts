import './installVscodeStub';
import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';
import { COMMANDS } from '../../src/commands';
import { STATUS_MENU_COMMAND, StatusIndicator } from '../../src/statusIndicator';
import { StatusBarAlignment, StubStatusBarItem, ThemeColor, stubState } from './vscodeStub';

let item: StubStatusBarItem;

beforeEach(() => {
  stubState.reset();
  item = new StubStatusBarItem('diffgemma.status', StatusBarAlignment.Right, 100);
});

function indicator(enabled = true): StatusIndicator {
  return new StatusIndicator(item as any, enabled);
}

test('shows itself at once, spinning while the server starts, and a click opens the DiffGemma menu', () => {
  indicator();
  assert.equal(item.visible, true);
  assert.equal(item.text, '$(loading~spin) DiffGemma');
  assert.equal(item.command, STATUS_MENU_COMMAND);
  assert.equal(STATUS_MENU_COMMAND, COMMANDS.showMenu);
  assert.match(item.tooltip ?? '', /starting the server/);
  assert.match(item.tooltip ?? '', /Click for the DiffGemma menu: snooze, enable or disable, restart the server, show the log/);
});

test('a snooze shows a clock over a healthy server and its end in the tooltip; disabled wins over snoozed', () => {
  const status = indicator();
  status.setServerStatus({ state: 'ready' });
  const until = new Date(2026, 0, 5, 16, 45).getTime();
  status.setGate({ enabledEverywhere: true, language: 'python', enabledForLanguage: true, snoozedUntil: until });
  assert.equal(item.text, '$(clock) DiffGemma');
  assert.match(item.tooltip ?? '', /Inline completions are snoozed until 16:45\./);
  assert.equal(status.current.snoozedUntil, until);

  status.setServerStatus({ state: 'error', message: 'out of memory' });
  assert.equal(item.text, '$(error) DiffGemma', 'an error is never hidden');
  assert.match(item.tooltip ?? '', /snoozed until 16:45/);

  status.setServerStatus({ state: 'ready' });
  status.setGate({ enabledEverywhere: true, language: 'markdown', enabledForLanguage: false, snoozedUntil: until });
  assert.equal(item.text, '$(circle-slash) DiffGemma');
  assert.match(item.tooltip ?? '', /disabled for 'markdown'/);

  status.setGate({ enabledEverywhere: true, language: 'python', enabledForLanguage: true });
  assert.equal(item.text, '$(sparkle) DiffGemma');
  assert.doesNotMatch(item.tooltip ?? '', /snoozed|disabled/);
  // Without an editor the "*" entry decides.
  status.setGate({ enabledEverywhere: false });
  assert.equal(item.text, '$(circle-slash) DiffGemma');
  assert.match(item.tooltip ?? '', /Inline completions are disabled\./);
});

test('follows diffgemma/status: loading, ready, busy, error', () => {
  const status = indicator();
  status.setServerStatus({ state: 'loading', message: 'embedded model on cpu' });
  assert.equal(item.text, '$(loading~spin) DiffGemma');
  assert.match(item.tooltip ?? '', /loading the model — embedded model on cpu/);
  assert.equal(item.backgroundColor, undefined);

  status.setServerStatus({ state: 'ready' });
  assert.equal(item.text, '$(sparkle) DiffGemma');
  assert.match(item.tooltip ?? '', /DiffGemma: ready\n/);

  status.setServerStatus({ state: 'busy' });
  assert.equal(item.text, '$(sync~spin) DiffGemma');

  status.setServerStatus({ state: 'error', message: 'checkpoint not found: /nope' });
  assert.equal(item.text, '$(error) DiffGemma');
  assert.match(item.tooltip ?? '', /error — checkpoint not found: \/nope/);
  assert.deepEqual(item.backgroundColor, new ThemeColor('statusBarItem.errorBackground'));

  status.setServerStatus({ state: 'ready' });
  assert.equal(item.backgroundColor, undefined, 'recovering clears the error colour');
});

test('disabled completions show a slashed circle over a healthy server, but never hide an error', () => {
  const status = indicator(false);
  status.setServerStatus({ state: 'ready' });
  assert.equal(item.text, '$(circle-slash) DiffGemma');
  assert.match(item.tooltip ?? '', /Inline completions are disabled/);
  status.setServerStatus({ state: 'error', message: 'out of memory' });
  assert.equal(item.text, '$(error) DiffGemma');
  status.setEnabled(true);
  status.setServerStatus({ state: 'ready' });
  assert.equal(item.text, '$(sparkle) DiffGemma');
  assert.doesNotMatch(item.tooltip ?? '', /disabled/);
});

test('a stopped server is shown with a warning colour and the reason', () => {
  const status = indicator();
  status.set('stopped', 'the server exited (see the log)');
  assert.equal(item.text, '$(debug-disconnect) DiffGemma');
  assert.match(item.tooltip ?? '', /server not running — the server exited/);
  assert.deepEqual(item.backgroundColor, new ThemeColor('statusBarItem.warningBackground'));
  status.dispose();
  assert.equal(item.disposed, true);
});

test('a remote model error shows the URL and the reason, and "ready" clears it: the error state comes and goes', () => {
  const status = indicator();
  status.setServerStatus({ state: 'ready', message: 'remote https://gpu-box:8000/v1', model: 'https://gpu-box:8000/v1' });
  for (const reason of ['connection refused', 'HTTP 401 Unauthorized']) {
    status.setServerStatus({ state: 'error', message: `https://gpu-box:8000/v1: ${reason}`, model: 'https://gpu-box:8000/v1' });
    assert.equal(item.text, '$(error) DiffGemma');
    assert.match(item.tooltip ?? '', new RegExp(`^DiffGemma: error — https://gpu-box:8000/v1: ${reason}\n`));
    assert.deepEqual(item.backgroundColor, new ThemeColor('statusBarItem.errorBackground'));
    assert.equal(status.current.message, `https://gpu-box:8000/v1: ${reason}`);

    status.setServerStatus({ state: 'ready', message: 'remote https://gpu-box:8000/v1' });
    assert.equal(item.text, '$(sparkle) DiffGemma');
    assert.doesNotMatch(item.tooltip ?? '', /error|refused|401/, 'nothing of the error is left');
    assert.equal(item.backgroundColor, undefined);
    assert.equal(status.current.state, 'ready');
  }
  // Busy and idle after a recovery are plain states again.
  status.setServerStatus({ state: 'busy', message: 'generating' });
  assert.equal(item.text, '$(sync~spin) DiffGemma');
});
