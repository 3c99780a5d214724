import './installVscodeStub';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  completionsEnabled,
  completionsEnabledFor,
  DEFAULT_ENABLE,
  enableSetting,
  withEnableEntry,
  DEFAULT_SERVER_COMMAND,
  RESTART_SETTINGS,
  SECTION,
  SERVER_SETTINGS,
  serverCommand,
  serverSettings,
  type ConfigurationReader,
} from '../../src/settings';

const manifest = JSON.parse(readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8'));
const declared: Record<string, { default: unknown }> = manifest.contributes.configuration.properties;

function reader(values: Record<string, unknown>): ConfigurationReader {
  return { get: <T>(key: string) => values[key] as T | undefined };
}

/** What VS Code's getConfiguration('diffgemma') returns for a user who changed nothing. */
const declaredDefaults = reader(
  Object.fromEntries(Object.entries(declared).map(([key, schema]) => [key.slice(SECTION.length + 1), schema.default])),
);

test('every setting the code reads is declared in package.json, and every declared one is read', () => {
  const read = new Set<string>(['enable', ...RESTART_SETTINGS, ...SERVER_SETTINGS].map((key) => `${SECTION}.${key}`));
  assert.deepEqual([...read].sort(), Object.keys(declared).sort());
});

test('the defaults in package.json are the ones the code falls back to', () => {
  assert.deepEqual(serverSettings(declaredDefaults), serverSettings(reader({})));
  assert.deepEqual(serverCommand(declaredDefaults), serverCommand(reader({})));
  assert.equal(completionsEnabled(declaredDefaults), completionsEnabled(reader({})));
  assert.deepEqual(declared['diffgemma.enable'].default, DEFAULT_ENABLE);
  assert.deepEqual(enableSetting(declaredDefaults), enableSetting(reader({})));
});

test('diffgemma.enable defaults: on for code, off for prose and commit messages, as Copilot does', () => {
  assert.deepEqual(declared['diffgemma.enable'].default, {
    '*': true,
    plaintext: false,
    markdown: false,
    scminput: false,
    'git-commit': false,
    'git-rebase': false,
  });
  for (const config of [declaredDefaults, reader({})]) {
    for (const language of ['plaintext', 'markdown', 'scminput', 'git-commit', 'git-rebase']) {
      assert.equal(completionsEnabledFor(config, language), false, language);
    }
    for (const language of ['python', 'typescript', 'javascript', 'go', 'rust', 'c', 'java']) {
      assert.equal(completionsEnabledFor(config, language), true, language);
    }
    assert.equal(completionsEnabledFor(config, undefined), true);
  }
  const schema = (manifest.contributes.configuration.properties as Record<string, any>)['diffgemma.enable'];
  assert.equal(schema.type, 'object');
  assert.deepEqual(schema.additionalProperties, { type: 'boolean' });
});

test('users turn a default-off language on with one entry; the other defaults and "*" stay', () => {
  const config = reader({ enable: { markdown: true } });
  assert.equal(completionsEnabledFor(config, 'markdown'), true);
  assert.equal(completionsEnabledFor(config, 'plaintext'), false);
  assert.equal(completionsEnabledFor(config, 'python'), true);
  const offEverywhere = reader({ enable: { '*': false, 'git-commit': true } });
  assert.equal(completionsEnabledFor(offEverywhere, 'git-commit'), true);
  assert.equal(completionsEnabledFor(offEverywhere, 'python'), false);
  assert.equal(completionsEnabled(offEverywhere), false);
  // Entries that are not booleans are ignored; a legacy boolean switches every language.
  assert.equal(completionsEnabledFor(reader({ enable: { python: 'no' } }), 'python'), true);
  assert.equal(completionsEnabledFor(reader({ enable: false }), 'python'), false);
  assert.equal(completionsEnabledFor(reader({ enable: true }), 'markdown'), true);
});

test('withEnableEntry sets one key of the stored value and keeps the rest', () => {
  const stored = { '*': true, rust: false };
  assert.deepEqual(withEnableEntry(stored, 'python', false), { '*': true, rust: false, python: false });
  assert.deepEqual(stored, { '*': true, rust: false }, 'the stored object is not changed in place');
  assert.deepEqual(withEnableEntry(undefined, '*', false), { '*': false });
  assert.deepEqual(withEnableEntry(false, 'go', true), { '*': false, go: true });
  assert.deepEqual(withEnableEntry({ go: true }, 'go', false), { go: false });
});

test('zero configuration: diffgemma-lsp from PATH with the embedded model, the server defaults', () => {
  assert.deepEqual(serverCommand(reader({})), { command: DEFAULT_SERVER_COMMAND, args: [] });
  assert.deepEqual(serverSettings(reader({})), {
    model: 'embedded',
    device: 'auto',
    dtype: null,
    enabledLanguages: ['*'],
    candidates: 1,
    maxPromptTokens: 256,
    maxNewTokens: null,
    denoisingSteps: null,
    canvasLength: null,
    threads: null,
    canvasNotifications: false,
  });
  assert.equal(completionsEnabled(reader({})), true);
});

test('user settings become the server wire names; dtype auto is sent as null', () => {
  const settings = serverSettings(
    reader({
      model: '/models/dg',
      device: 'cuda:1',
      dtype: 'bfloat16',
      enabledLanguages: ['python', 'go'],
      candidates: 3,
      maxPromptTokens: 2048,
      maxNewTokens: 64,
      denoisingSteps: 12,
      canvasLength: 32,
      threads: 3,
      showDenoisingCanvas: true,
    }),
  );
  assert.deepEqual(settings, {
    model: '/models/dg',
    device: 'cuda:1',
    dtype: 'bfloat16',
    enabledLanguages: ['python', 'go'],
    candidates: 3,
    maxPromptTokens: 2048,
    maxNewTokens: 64,
    denoisingSteps: 12,
    canvasLength: 32,
    threads: 3,
    canvasNotifications: true,
  });
  assert.equal(serverSettings(reader({ dtype: 'auto' })).dtype, null);
});

test('a blank server command falls back to diffgemma-lsp; arguments are copied, not shared', () => {
  assert.equal(serverCommand(reader({ 'server.command': '   ' })).command, DEFAULT_SERVER_COMMAND);
  const args = ['-m', 'lsp_server'];
  const command = serverCommand(reader({ 'server.command': ' /venv/bin/python ', 'server.args': args }));
  assert.deepEqual(command, { command: '/venv/bin/python', args: ['-m', 'lsp_server'] });
  command.args.push('--stdio');
  assert.deepEqual(args, ['-m', 'lsp_server']);
});
