// Snoozing inline completions for a while (no vscode import: plain timers, so the unit tests can drive a clock).

/** The snooze lengths the status menu offers, in minutes. */
export const SNOOZE_MINUTES = [5, 15, 60] as const;

/** Time and timers, injectable for tests; the default is the real ones. */
export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const SYSTEM_CLOCK: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => {
    const handle = setTimeout(callback, ms);
    // A pending wake-up must not keep a process alive on its own (the extension host does not care).
    (handle as { unref?: () => void }).unref?.();
    return handle;
  },
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/**
 * Whether inline completions are snoozed, and until when. Snoozing lasts for this window's session (not written
 * to the settings); it ends by itself when the time is up, or on resume(). Listeners hear every start and end.
 */
export class Snooze {
  private until: number | undefined;
  private timer: unknown;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly clock: Clock = SYSTEM_CLOCK) {}

  /** The end of the snooze in epoch milliseconds, or undefined when not snoozed (an expired one counts as over). */
  get snoozedUntil(): number | undefined {
    return this.until !== undefined && this.clock.now() < this.until ? this.until : undefined;
  }

  get active(): boolean {
    return this.snoozedUntil !== undefined;
  }

  /** Snoozes for `minutes` from now, replacing any snooze in progress. */
  start(minutes: number): void {
    if (!Number.isFinite(minutes) || minutes <= 0) {
      throw new RangeError(`a snooze lasts a positive number of minutes, not ${minutes}`);
    }
    this.cancelTimer();
    const ms = Math.round(minutes * 60_000);
    this.until = this.clock.now() + ms;
    this.timer = this.clock.setTimeout(() => this.end(), ms);
    this.notify();
  }

  /** Ends the snooze now (nothing happens when not snoozed). */
  resume(): void {
    if (this.until !== undefined) {
      this.end();
    }
  }

  onDidChange(listener: () => void): { dispose(): void } {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  }

  dispose(): void {
    this.cancelTimer();
    this.until = undefined;
    this.listeners.clear();
  }

  private end(): void {
    this.cancelTimer();
    this.until = undefined;
    this.notify();
  }

  private cancelTimer(): void {
    if (this.timer !== undefined) {
      this.clock.clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  private notify(): void {
    for (const listener of [...this.listeners]) {
      listener();
    }
  }
}

/** "14:05": the local time a snooze ends, for the status bar and the menu. */
export function formatClockTime(epochMs: number): string {
  const date = new Date(epochMs);
  return `${String(date.getHours()).padStart(2, '0')}:${String(date.getMinutes()).padStart(2, '0')}`;
}
