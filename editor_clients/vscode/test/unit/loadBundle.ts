// Loads a bundled extension entry point (esbuild output, vscode-languageclient inside) with `vscode` resolved to
// the stub, and reports every module it required. vscode-languageclient touches many vscode classes when it
// loads, so the stub is extended with a placeholder class for every name it does not define.
import Module = require('module');
import * as stub from './vscodeStub';

export function loadBundle(file: string): { exports: Record<string, unknown>; required: string[] } {
  const permissiveStub = new Proxy(stub as Record<string, unknown>, {
    get: (target, name: string) => (name in target ? target[name] : class Placeholder {}),
  });
  const moduleInternals = Module as unknown as { _load(request: string, ...rest: unknown[]): unknown };
  const load = moduleInternals._load;
  const required: string[] = [];
  moduleInternals._load = function (request: string, ...rest: unknown[]) {
    required.push(request);
    return request === 'vscode' ? permissiveStub : load.call(this, request, ...rest);
  };
  try {
    return { exports: require(file), required };
  } finally {
    moduleInternals._load = load;
  }
}

/** The modules a bundle required besides Node's own and the bundle file itself: only `vscode` is expected. */
export function externalModules(required: string[], bundleName: string): string[] {
  const builtin = (Module as unknown as { builtinModules: string[] }).builtinModules;
  const external = required.filter((name) => !name.startsWith('node:') && !builtin.includes(name) && !name.includes(bundleName));
  return [...new Set(external)];
}
