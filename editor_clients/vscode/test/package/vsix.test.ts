// The .vsix as `npm run package` writes it (vscode:prepublish builds the production bundle): a minified
// out/extension.js, and no sourceMappingURL naming a file the package does not contain.
import '../unit/installVscodeStub';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { test } from 'node:test';
import { externalModules, loadBundle } from '../unit/loadBundle';
import { freshCopy, NESTED_ENV, npm } from './freshCopy';
import { readZip } from './zip';

/** out/extension.js as 0.1.0 packaged it: esbuild's unminified bundle (972,998 bytes). */
const UNMINIFIED_BUNDLE_BYTES = 972_998;

/** The targets of `//# sourceMappingURL=` comments (at a line start, where runtimes read them) in `code`. */
function sourceMapReferences(code: string): string[] {
  return [...code.matchAll(/^\/\/[#@]\s*sourceMappingURL=(\S+)\s*$/gm)].map((match) => match[1]);
}

test(
  'npm run package: a minified bundle, and any source map it names is in the package',
  { skip: process.env[NESTED_ENV] ? 'inside a copy made by the clean-checkout test' : false, timeout: 300_000 },
  () => {
    const copy = freshCopy();
    try {
      const run = npm(copy.dir, ['run', 'package']);
      assert.equal(run.error, undefined, String(run.error));
      assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
      const archive = readFileSync(join(copy.dir, 'dist', 'diffgemma.vsix'));
      const entries = readZip(archive);
      const names = [...entries.keys()];

      // The manifest's entry point is the bundle, and it is in the package.
      const manifest = JSON.parse(entries.get('extension/package.json')!.toString('utf8'));
      const main = posix.join('extension', manifest.main);
      assert.equal(main, 'extension/out/extension.js');
      const bundle = entries.get(main);
      assert.ok(bundle, `no ${main} in ${names.join(', ')}`);

      // Minified: well below the unminified size, and few, long lines.
      assert.ok(
        bundle.length < UNMINIFIED_BUNDLE_BYTES * 0.6,
        `the packaged bundle is ${bundle.length} bytes; unminified it was ${UNMINIFIED_BUNDLE_BYTES}`,
      );
      const code = bundle.toString('utf8');
      const lines = code.split('\n');
      assert.ok(lines.length < 100, `${lines.length} lines: not minified`);
      assert.doesNotMatch(code, /^\/\/ (src|node_modules)\//m, "esbuild's per-file comments are gone");

      // No dangling source map reference, in the bundle or any other script shipped.
      for (const [name, data] of entries) {
        if (!/\.[cm]?js$/.test(name)) {
          continue;
        }
        for (const reference of sourceMapReferences(data.toString('utf8'))) {
          if (reference.startsWith('data:')) {
            continue; // inline: nothing to ship
          }
          const target = posix.normalize(posix.join(posix.dirname(name), decodeURIComponent(reference)));
          assert.ok(entries.has(target), `${name} names ${reference}, but ${target} is not in the package`);
        }
      }
      for (const name of names.filter((n) => n.endsWith('.map'))) {
        const script = name.slice(0, -'.map'.length);
        assert.ok(entries.has(script), `${name} ships without its script`);
      }

      // The minified bundle still loads, with only vscode external.
      const extracted = join(copy.dir, 'packaged-extension.js');
      writeFileSync(extracted, bundle);
      const { exports, required } = loadBundle(extracted);
      assert.equal(typeof exports.activate, 'function');
      assert.equal(typeof exports.deactivate, 'function');
      assert.deepEqual(externalModules(required, 'packaged-extension.js'), ['vscode']);

      // The packaged README carries the real install instructions (the package is not on PyPI).
      const readme = entries.get('extension/readme.md')!.toString('utf8');
      assert.doesNotMatch(readme, /pip3?\s+install\s+diffgemma[-_]lsp/i);
      assert.match(readme, /git clone /);
      assert.match(readme, /make install/);
    } finally {
      copy.remove();
    }
  },
);
