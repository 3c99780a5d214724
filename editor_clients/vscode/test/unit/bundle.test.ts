// The entry point `npm run build` writes (out/extension.js, built by esbuild with vscode-languageclient inside)
// loads and exports activate/deactivate. The packaged (minified) bundle is checked the same way in
// test/package/vsix.test.ts.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { externalModules, loadBundle } from './loadBundle';

test('the bundled extension loads with only vscode external and exports activate and deactivate', () => {
  const { exports, required } = loadBundle(join(__dirname, '..', '..', 'extension.js'));
  assert.equal(typeof exports.activate, 'function');
  assert.equal(typeof exports.deactivate, 'function');
  // Everything but vscode and Node's own modules is inside the bundle.
  assert.deepEqual(externalModules(required, 'extension.js'), ['vscode']);
});
