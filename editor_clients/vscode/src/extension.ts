import type * as vscode from 'vscode';
import { activateWith } from './activation';
import { createLanguageClient } from './languageClient';
import type { DiffgemmaSession } from './session';

let session: DiffgemmaSession | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  session = await activateWith(context, createLanguageClient);
}

export async function deactivate(): Promise<void> {
  await session?.stop();
  session = undefined;
}
