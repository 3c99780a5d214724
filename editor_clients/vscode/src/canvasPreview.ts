import * as vscode from 'vscode';
import { canvasPreviewText } from './canvasText';
import type { CanvasParams } from './protocol';

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
