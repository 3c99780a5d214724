import './installVscodeStub';
import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';
import { CanvasPreview } from '../../src/canvasPreview';
import { canvasPreviewText, PREVIEW_MAX_CHARACTERS } from '../../src/canvasText';
import type { CanvasParams } from '../../src/protocol';
import { Position, StubTextEditor, stubState } from './vscodeStub';

const URI = 'file:///work/app.py';

function canvas(overrides: Partial<CanvasParams> = {}): CanvasParams {
  return { uri: URI, position: { line: 3, character: 8 }, step: 2, text: 'return a +', acceptedFraction: 0.25, ...overrides };
}

beforeEach(() => stubState.reset());

test('the preview text is one line with the denoising progress', () => {
  assert.equal(canvasPreviewText(canvas({ text: 'if x:\n    y()\r\nz' })), 'if x:⏎    y()⏎z  [step 2, 25%]');
  assert.equal(canvasPreviewText(canvas({ acceptedFraction: 1.7 })), 'return a +  [step 2, 100%]');
  const long = canvasPreviewText(canvas({ text: 'x'.repeat(500) }));
  assert.equal(long, `${'x'.repeat(PREVIEW_MAX_CHARACTERS - 1)}…  [step 2, 25%]`);
});

test('draws after the request position in the editor showing the document, and clears', () => {
  const editor = new StubTextEditor(URI);
  const other = new StubTextEditor('file:///work/other.py');
  stubState.visibleTextEditors.push(other, editor);
  const preview = new CanvasPreview();
  const [decoration] = stubState.decorationTypes;

  preview.show(canvas());
  const [shown] = editor.decorations.get(decoration) ?? [];
  assert.deepEqual(shown.range.start, new Position(3, 8));
  assert.deepEqual(shown.range.end, new Position(3, 8));
  assert.equal(shown.renderOptions?.after?.contentText, 'return a +  [step 2, 25%]');
  assert.equal(other.decorations.size, 0);
  assert.equal(preview.shownUri, URI);

  preview.clear();
  assert.deepEqual(editor.decorations.get(decoration), []);
  assert.equal(preview.shownUri, undefined);
});

test('a canvas for a document in no visible editor removes the previous preview and draws nothing', () => {
  const editor = new StubTextEditor(URI);
  stubState.visibleTextEditors.push(editor);
  const preview = new CanvasPreview();
  const [decoration] = stubState.decorationTypes;
  preview.show(canvas());
  preview.show(canvas({ uri: 'file:///work/hidden.py' }));
  assert.deepEqual(editor.decorations.get(decoration), []);
  assert.equal(preview.shownUri, undefined);
  preview.dispose();
  assert.equal(decoration.disposed, true);
});
