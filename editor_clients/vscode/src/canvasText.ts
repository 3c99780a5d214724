// The one-line preview of a denoising canvas (no vscode import: the protocol test uses it too).
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
