// A ServerClient that records what the extension's session asks of it, standing in for vscode-languageclient's
// LanguageClient (which needs a running VS Code) in the unit tests. The real client against the real server is
// exercised by test/protocol.
import { Disposable } from './vscodeStub';
import type { ServerClient } from '../../src/session';
import type { ServerCommand, ServerSettings } from '../../src/settings';

export class RecordingClient implements ServerClient {
  started = 0;
  stopped = 0;
  startError: Error | undefined;
  readonly sentNotifications: { method: string; params: unknown }[] = [];
  private readonly handlers = new Map<string, (params: any) => void>();
  private readonly stopListeners = new Set<() => void>();

  constructor(
    readonly command: ServerCommand,
    readonly settings: ServerSettings,
    readonly middleware: any,
  ) {}

  async start(): Promise<void> {
    this.started += 1;
    if (this.startError) {
      throw this.startError;
    }
  }

  async stop(): Promise<void> {
    this.stopped += 1;
    this.stopListeners.forEach((listener) => listener());
  }

  onNotification(method: string, handler: (params: any) => void): Disposable {
    this.handlers.set(method, handler);
    return new Disposable(() => this.handlers.delete(method));
  }

  async sendNotification(method: string, params: unknown): Promise<void> {
    this.sentNotifications.push({ method, params });
  }

  onDidStop(listener: () => void): Disposable {
    this.stopListeners.add(listener);
    return new Disposable(() => this.stopListeners.delete(listener));
  }

  /** Delivers a server notification to the handler the session registered (throws if none). */
  deliver(method: string, params: unknown): void {
    const handler = this.handlers.get(method);
    if (!handler) {
      throw new Error(`no handler registered for ${method}`);
    }
    handler(params);
  }

  hasHandler(method: string): boolean {
    return this.handlers.has(method);
  }

  /** The server process going away on its own. */
  exit(): void {
    this.stopListeners.forEach((listener) => listener());
  }
}

/** A ClientFactory keeping every client it made, the newest last. */
export function recordingFactory(prepare?: (client: RecordingClient) => void) {
  const clients: RecordingClient[] = [];
  const factory = (command: ServerCommand, settings: ServerSettings, middleware: unknown) => {
    const client = new RecordingClient(command, settings, middleware);
    prepare?.(client);
    clients.push(client);
    return client;
  };
  return { clients, factory };
}
