// Imported first by every unit test: makes `require('vscode')` resolve to ./vscodeStub.
import Module = require('module');

const stubPath = require.resolve('./vscodeStub');
const moduleInternals = Module as unknown as { _resolveFilename(request: string, ...rest: unknown[]): string };
const resolveFilename = moduleInternals._resolveFilename;
moduleInternals._resolveFilename = function (request: string, ...rest: unknown[]): string {
  return request === 'vscode' ? stubPath : resolveFilename.call(this, request, ...rest);
};
