import './installVscodeStub';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  API_KEY_SECRET,
  completionsEnabled,
  isRemoteModel,
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
    engineMode: 'serving',
    compile: true,
    quantization: null,
    enabledLanguages: ['*'],
    candidates: 1,
    documentCandidates: 4,
    rerank: true,
    maxPromptTokens: 256,
    maxNewTokens: null,
    denoisingSteps: null,
    canvasLength: null,
    threads: null,
    canvasNotifications: false,
    apiKey: null,
    remoteModel: null,
    requestTimeout: 10,
    tlsVerify: true,
    tokenizer: null,
  });
  assert.equal(completionsEnabled(reader({})), true);
});

test('user settings become the server wire names; dtype auto is sent as null', () => {
  const settings = serverSettings(
    reader({
      model: '/models/dg',
      device: 'cuda:1',
      dtype: 'bfloat16',
      engineMode: 'exact',
      compile: false,
      quantization: 'int4-g32',
      enabledLanguages: ['python', 'go'],
      candidates: 3,
      documentCandidates: 0,
      rerank: false,
      maxPromptTokens: 2048,
      maxNewTokens: 64,
      denoisingSteps: 12,
      canvasLength: 32,
      threads: 3,
      showDenoisingCanvas: true,
      apiKey: 'sk-test',
      remoteModel: 'diffgemma-small',
      requestTimeout: 2.5,
      tlsVerify: false,
      tokenizer: '/models/dg/tokenizer.json',
    }),
  );
  assert.deepEqual(settings, {
    model: '/models/dg',
    device: 'cuda:1',
    dtype: 'bfloat16',
    engineMode: 'exact',
    compile: false,
    quantization: 'int4-g32',
    enabledLanguages: ['python', 'go'],
    candidates: 3,
    documentCandidates: 0,
    rerank: false,
    maxPromptTokens: 2048,
    maxNewTokens: 64,
    denoisingSteps: 12,
    canvasLength: 32,
    threads: 3,
    canvasNotifications: true,
    apiKey: 'sk-test',
    remoteModel: 'diffgemma-small',
    requestTimeout: 2.5,
    tlsVerify: false,
    tokenizer: '/models/dg/tokenizer.json',
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

test('remote settings: blank strings are null (the server rejects ""), the stored API key wins over the setting', () => {
  const blank = serverSettings(reader({ apiKey: '  ', remoteModel: '', tokenizer: ' ', model: 'http://gpu-box:8000/v1' }));
  assert.equal(blank.model, 'http://gpu-box:8000/v1');
  assert.deepEqual([blank.apiKey, blank.remoteModel, blank.tokenizer], [null, null, null]);
  assert.equal(serverSettings(reader({ apiKey: ' sk-1 ' })).apiKey, 'sk-1');
  assert.equal(serverSettings(reader({ apiKey: 'from-settings' }), 'from-secrets').apiKey, 'from-secrets');
  assert.equal(serverSettings(reader({ apiKey: 'from-settings' }), '').apiKey, 'from-settings', 'an empty stored key is none');
  assert.equal(serverSettings(reader({}), 'from-secrets').apiKey, 'from-secrets');
  assert.equal(serverSettings(reader({ apiKey: null })).apiKey, null);
  // A timeout the schema does not allow is still sent: the server reports it and keeps its previous value.
  assert.equal(serverSettings(reader({ requestTimeout: 0 })).requestTimeout, 0);
  assert.equal(serverSettings(reader({ requestTimeout: null })).requestTimeout, 10);
  assert.equal(API_KEY_SECRET, 'diffgemma.apiKey');
});

test('the contributed remote settings: types, defaults, limits, and the API key never synced or set by a workspace', () => {
  const schema = declared as Record<string, any>;
  assert.equal(schema['diffgemma.apiKey'].scope, 'machine', 'machine scope: Settings Sync skips it, workspaces cannot set it');
  assert.deepEqual(schema['diffgemma.apiKey'].type, ['string', 'null']);
  assert.match(schema['diffgemma.apiKey'].markdownDescription, /Set API Key/);
  assert.match(schema['diffgemma.apiKey'].markdownDescription, /DIFFGEMMA_API_KEY/);
  assert.deepEqual(
    { type: schema['diffgemma.requestTimeout'].type, exclusiveMinimum: schema['diffgemma.requestTimeout'].exclusiveMinimum,
      maximum: schema['diffgemma.requestTimeout'].maximum, default: schema['diffgemma.requestTimeout'].default },
    { type: 'number', exclusiveMinimum: 0, maximum: 3600, default: 10 },
  );
  assert.equal(schema['diffgemma.tlsVerify'].default, true);
  for (const key of ['diffgemma.remoteModel', 'diffgemma.tokenizer']) {
    assert.deepEqual(schema[key].type, ['string', 'null'], key);
    assert.equal(schema[key].default, null, key);
  }
  const model = schema['diffgemma.model'].markdownDescription as string;
  assert.match(model, /`embedded`/);
  assert.match(model, /checkpoint directory/);
  assert.match(model, /http:\/\/gpu-box:8000\/v1/);
});

test('isRemoteModel: http and https URLs are servers; "embedded" and paths are not', () => {
  for (const model of ['http://gpu-box:8000/v1', 'https://example.com/v1', ' HTTPS://host/v1']) {
    assert.equal(isRemoteModel(model), true, model);
  }
  for (const model of ['embedded', '/models/dg', 'C:\\models\\dg', './http/model', 'httpmodel']) {
    assert.equal(isRemoteModel(model), false, model);
  }
});
