// Messages diffgemma-lsp adds to LSP (see lsp_server/server.py), shared by the extension and its tests.

/** Server → client notification: the model's state, shown in the status bar. */
export const STATUS_NOTIFICATION = 'diffgemma/status';

export type ServerState = 'loading' | 'ready' | 'busy' | 'error';

export interface StatusParams {
  state: ServerState;
  message?: string;
}

/** Server → client notification: the canvas being denoised for a pending completion. */
export const CANVAS_NOTIFICATION = 'diffgemma/canvas';

export interface CanvasParams {
  uri: string;
  position: { line: number; character: number };
  step: number;
  text: string;
  acceptedFraction: number;
}

/** The command the server attaches to every inline completion item; running it reports the acceptance. */
export const ACCEPT_COMMAND = 'diffgemma.acceptInlineCompletion';
