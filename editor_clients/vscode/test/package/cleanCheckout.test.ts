// `npm test` right after `npm ci` in a fresh checkout: the pretest script must build what the tests load
// (out/test/unit, out/extension.js) instead of expecting an earlier `npm run build`.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { freshCopy, NESTED_ENV, npm } from './freshCopy';

test(
  'npm test passes in a fresh checkout with only npm ci done (no out/ yet)',
  { skip: process.env[NESTED_ENV] ? 'inside the copy this test made' : false, timeout: 300_000 },
  () => {
    const copy = freshCopy();
    try {
      assert.equal(existsSync(join(copy.dir, 'out')), false, 'the copy starts without build output');
      const run = npm(copy.dir, ['test']);
      const output = `${run.stdout}\n${run.stderr}`;
      assert.equal(run.error, undefined, String(run.error));
      assert.equal(run.status, 0, output);
      const passed = /^# pass (\d+)$/m.exec(run.stdout);
      const failed = /^# fail (\d+)$/m.exec(run.stdout);
      assert.ok(passed && failed, `no node:test summary in:\n${output}`);
      assert.equal(Number(failed[1]), 0, output);
      assert.ok(Number(passed[1]) >= 25, `only ${passed[1]} tests passed:\n${output}`);
      assert.ok(existsSync(join(copy.dir, 'out', 'test', 'unit', 'session.test.js')), 'pretest compiled the tests');
      assert.ok(existsSync(join(copy.dir, 'out', 'extension.js')), 'pretest bundled the extension');
    } finally {
      copy.remove();
    }
  },
);
