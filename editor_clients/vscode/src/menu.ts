import * as vscode from 'vscode';
import { COMMANDS } from './commands';
import { formatClockTime, SNOOZE_MINUTES } from './snooze';

/** Whether inline completions are on, for the status bar item and its menu. */
export interface CompletionGate {
  /** The `*` entry of diffgemma.enable. */
  enabledEverywhere: boolean;
  /** The active editor's language id (undefined without an active editor). */
  language?: string;
  /** Whether that language gets completions (its own entry, else `*`); undefined without a language. */
  enabledForLanguage?: boolean;
  /** The end of a snooze in progress (epoch ms). */
  snoozedUntil?: number;
}

/** A quick pick entry that runs `command` with `args` when chosen (separators run nothing). */
export interface MenuItem extends vscode.QuickPickItem {
  command?: string;
  args?: unknown[];
}

function separator(label: string): MenuItem {
  return { label, kind: vscode.QuickPickItemKind.Separator };
}

/** The status bar menu, like Copilot's and Tabby's: on/off everywhere and for this language, snooze, server. */
export function menuItems(gate: CompletionGate): MenuItem[] {
  const items: MenuItem[] = [separator('Inline completions')];
  if (gate.snoozedUntil !== undefined) {
    items.push({
      label: '$(play) Resume Inline Completions',
      description: `snoozed until ${formatClockTime(gate.snoozedUntil)}`,
      command: COMMANDS.resume,
    });
  }
  items.push(
    gate.enabledEverywhere
      ? { label: '$(circle-slash) Disable Inline Completions', description: 'all languages', command: COMMANDS.disable }
      : { label: '$(check) Enable Inline Completions', description: 'all languages', command: COMMANDS.enable },
  );
  if (gate.language !== undefined) {
    const language = gate.language;
    items.push(
      gate.enabledForLanguage
        ? { label: `$(circle-slash) Disable for '${language}'`, command: COMMANDS.disableForLanguage, args: [language] }
        : { label: `$(check) Enable for '${language}'`, command: COMMANDS.enableForLanguage, args: [language] },
    );
  }
  for (const minutes of SNOOZE_MINUTES) {
    items.push({
      label: `$(clock) Snooze for ${minutes} minutes`,
      description: gate.snoozedUntil !== undefined ? 'from now' : undefined,
      command: COMMANDS.snooze,
      args: [minutes],
    });
  }
  items.push(
    separator('Server'),
    { label: '$(debug-restart) Restart Server', command: COMMANDS.restartServer },
    { label: '$(output) Show Server Log', command: COMMANDS.showLog },
    { label: '$(gear) Open Settings', command: 'workbench.action.openSettings', args: ['diffgemma'] },
  );
  return items;
}

/** Shows the menu and runs the chosen entry's command. */
export async function showMenu(gate: CompletionGate): Promise<void> {
  const choice = await vscode.window.showQuickPick(menuItems(gate), { title: 'DiffGemma', placeHolder: 'Choose an action' });
  if (choice?.command) {
    await vscode.commands.executeCommand(choice.command, ...(choice.args ?? []));
  }
}

/** Asks how long to snooze (the snooze command without an argument, e.g. from the Command Palette). */
export async function pickSnoozeMinutes(): Promise<number | undefined> {
  const items = SNOOZE_MINUTES.map((minutes) => ({ label: `${minutes} minutes`, minutes }));
  const choice = await vscode.window.showQuickPick(items, { title: 'DiffGemma: Snooze Inline Completions' });
  return choice?.minutes;
}
