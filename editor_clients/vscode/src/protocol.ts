// Messages diffgemma-lsp adds to LSP (see lsp_server/server.py), shared by the extension and its tests.

/** Server → client notification: the model's state, shown in the status bar. */
export const STATUS_NOTIFICATION = 'diffgemma/status';

export type ServerState = 'loading' | 'ready' | 'busy' | 'error';

export interface StatusParams {
  state: ServerState;
  message?: string;
  /**
   * The model setting in effect ("embedded", a checkpoint directory or a server URL). With a server URL an
   * "error" comes and goes: "<url>: <reason>" while the server is down, slow or refuses the key, then "ready".
   */
  model?: string;
}

/** Server → client notification: the canvas being denoised for a pending completion. */
export const CANVAS_NOTIFICATION = 'diffgemma/canvas';

export interface CanvasParams {
  uri: string;
  position: { line: number; character: number };
  /** The id of the textDocument/inlineCompletion request being answered. */
  requestId?: number | string;
  /** Which canvas of the request (from 0); `step` counts from 1 across all of them. */
  block?: number;
  step: number;
  maxSteps?: number;
  text: string;
  acceptedFraction: number;
}

/** The command the server attaches to every inline completion item; running it reports the acceptance. */
export const ACCEPT_COMMAND = 'diffgemma.acceptInlineCompletion';
