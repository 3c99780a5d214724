// diffgemma-lsp is not on PyPI: the README, the manifest and the extension's messages must send users to a
// clone of the repository (make install, or a venv with pip install -e .) and to diffgemma.server.command.
import './installVscodeStub';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { INSTALL_HINT } from '../../src/session';

const ROOT = join(__dirname, '..', '..', '..');
const PIP_BY_NAME = /pip3?\s+install\s+(-U\s+|--upgrade\s+)?["']?diffgemma[-_]lsp/i;

function read(relative: string): string {
  return readFileSync(join(ROOT, relative), 'utf8');
}

test('no file users read advises installing diffgemma-lsp from PyPI', () => {
  const files = ['README.md', 'package.json', ...readdirSync(join(ROOT, 'src')).map((name) => join('src', name))];
  for (const file of files) {
    assert.doesNotMatch(read(file), PIP_BY_NAME, file);
  }
  assert.doesNotMatch(INSTALL_HINT, PIP_BY_NAME);
});

test('the README installs from a clone and points diffgemma.server.command at its .venv/bin/diffgemma-lsp', () => {
  const readme = read('README.md');
  assert.match(readme, /not\*\* published on PyPI/);
  assert.match(readme, /git clone /);
  assert.match(readme, /^make install/m);
  assert.match(readme, /python3(\.11)? -m venv \.venv && \.venv\/bin\/pip install -e \./);
  assert.match(readme, /"diffgemma\.server\.command": "\/[^"]*\/\.venv\/bin\/diffgemma-lsp"/);
});

test('the server command setting and the start-failure hint say the same', () => {
  const manifest = JSON.parse(read('package.json'));
  const description: string = manifest.contributes.configuration.properties['diffgemma.server.command'].markdownDescription;
  for (const text of [description, INSTALL_HINT]) {
    assert.match(text, /not on PyPI/);
    assert.match(text, /clone/);
    assert.match(text, /make install/);
    assert.match(text, /\.venv\/bin\/diffgemma-lsp/);
  }
  assert.match(INSTALL_HINT, /diffgemma\.server\.command/);
});
