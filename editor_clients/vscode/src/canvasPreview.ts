import * as vscode from 'vscode';
import type { CanvasParams } from './protocol';

/** Longest preview drawn after the cursor; the canvas may hold many lines. */
export const PREVIEW_MAX_CHARACTERS = 80;

/** One line of text for an `after` decoration: line breaks shown as ⏎, cut to length, progress appended. */
export function canvasPreviewText(params: CanvasParams): string {
  let text = params.text.replace(/\r?\n/g, '⏎');
  if (text.length > PREVIEW_MAX_CHARACTERS) {
    text = `${text.slice(0, PREVIEW_MAX_CHARACTERS - 1)}…`;
  }
  const percent = Math.round(Math.max(0, Math.min(1, params.acceptedFraction)) * 100);
  return `${text}  [step ${params.step}, ${percent}%]`;
}

/**
 * Live decoration of the canvas being denoised (diffgemma/canvas), drawn after the request's position in the
 * editor showing that document, until the completion arrives or the document changes.
 */
export class CanvasPreview implements vscode.Disposable {
  private readonly decoration: vscode.TextEditorDecorationType;
  private shownIn: vscode.TextEditor | undefined;

  constructor() {
    this.decoration = vscode.window.createTextEditorDecorationType({
      after: { color: new vscode.ThemeColor('editorGhostText.foreground'), fontStyle: 'italic' },
      rangeBehavior: vscode.DecorationRangeBehavior.ClosedClosed,
    });
  }

  get shownUri(): string | undefined {
    return this.shownIn?.document.uri.toString();
  }

  show(params: CanvasParams): void {
    const editor = vscode.window.visibleTextEditors.find((e) => e.document.uri.toString() === params.uri);
    if (editor !== this.shownIn) {
      this.clear();
    }
    if (!editor) {
      return;
    }
    const position = new vscode.Position(params.position.line, params.position.character);
    editor.setDecorations(this.decoration, [
      { range: new vscode.Range(position, position), renderOptions: { after: { contentText: canvasPreviewText(params) } } },
    ]);
    this.shownIn = editor;
  }

  clear(): void {
    this.shownIn?.setDecorations(this.decoration, []);
    this.shownIn = undefined;
  }

  dispose(): void {
    this.clear();
    this.decoration.dispose();
  }
}
