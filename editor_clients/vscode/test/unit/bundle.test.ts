// The packaged entry point (out/extension.js, built by esbuild with vscode-languageclient inside) loads and
// exports activate/deactivate. vscode-languageclient touches many vscode classes when it loads, so `vscode`
// is the stub with a placeholder class for every name the stub does not define.
import Module = require('module');
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import * as stub from './vscodeStub';

test('the bundled extension loads with only vscode external and exports activate and deactivate', () => {
  const permissiveStub = new Proxy(stub as Record<string, unknown>, {
    get: (target, name: string) => (name in target ? target[name] : class Placeholder {}),
  });
  const moduleInternals = Module as unknown as { _load(request: string, ...rest: unknown[]): unknown };
  const load = moduleInternals._load;
  const requested: string[] = [];
  moduleInternals._load = function (request: string, ...rest: unknown[]) {
    requested.push(request);
    return request === 'vscode' ? permissiveStub : load.call(this, request, ...rest);
  };
  try {
    const extension = require(join(__dirname, '..', '..', 'extension.js'));
    assert.equal(typeof extension.activate, 'function');
    assert.equal(typeof extension.deactivate, 'function');
  } finally {
    moduleInternals._load = load;
  }
  // Everything but vscode and Node's own modules is inside the bundle.
  const external = requested.filter((name) => !name.startsWith('node:') && !(Module as any).builtinModules.includes(name));
  assert.deepEqual([...new Set(external)].filter((name) => !name.includes('extension.js')), ['vscode']);
});
