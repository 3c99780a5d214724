// A fresh copy of the extension as a clone plus `npm ci` has it: every source file, no build output (out/,
// dist/), and the installed node_modules (linked, not copied). The packaging tests build in it, so they never
// touch the out/ the other tests run from.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative, sep } from 'node:path';

export const EXTENSION_ROOT = join(__dirname, '..', '..', '..');

/** Set in the environment of an `npm test` these tests start, so that the copy does not test itself again. */
export const NESTED_ENV = 'DIFFGEMMA_PACKAGING_TEST_NESTED';

const BUILD_OUTPUTS = new Set(['out', 'dist', 'node_modules']);

export function freshCopy(): { dir: string; remove(): void } {
  if (!existsSync(join(EXTENSION_ROOT, 'node_modules'))) {
    throw new Error(`run npm ci in ${EXTENSION_ROOT} first`);
  }
  const parent = mkdtempSync(join(tmpdir(), 'diffgemma-vscode-'));
  const dir = join(parent, basename(EXTENSION_ROOT));
  cpSync(EXTENSION_ROOT, dir, {
    recursive: true,
    filter: (source) => {
      const top = relative(EXTENSION_ROOT, source).split(sep)[0];
      return !BUILD_OUTPUTS.has(top);
    },
  });
  symlinkSync(join(EXTENSION_ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  return { dir, remove: () => rmSync(parent, { recursive: true, force: true }) };
}

function nestedEnvironment(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, [NESTED_ENV]: '1', npm_config_loglevel: 'error' };
  // node --test marks its child processes with NODE_TEST_CONTEXT; a `node --test` started under it skips its
  // files ("run() is being called recursively"). The nested `npm test` is a run of its own.
  delete env.NODE_TEST_CONTEXT;
  return env;
}

/** Runs an npm script in `dir` the way a user does (`npm test`, `npm run package`). */
export function npm(dir: string, args: string[], timeoutMs = 240_000): SpawnSyncReturns<string> {
  return spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', args, {
    cwd: dir,
    encoding: 'utf8',
    timeout: timeoutMs,
    env: nestedEnvironment(),
  });
}
