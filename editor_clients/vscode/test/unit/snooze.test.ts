import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatClockTime, Snooze, SNOOZE_MINUTES } from '../../src/snooze';
import { FakeClock } from './fakeClock';

test('a snooze lasts its minutes, then ends by itself and says so', () => {
  const clock = new FakeClock();
  const snooze = new Snooze(clock);
  const changes: (number | undefined)[] = [];
  snooze.onDidChange(() => changes.push(snooze.snoozedUntil));
  assert.equal(snooze.active, false);

  snooze.start(15);
  assert.equal(snooze.active, true);
  assert.equal(snooze.snoozedUntil, clock.time + 15 * 60_000);
  clock.advance(15 * 60_000 - 1);
  assert.equal(snooze.active, true, 'still snoozed a millisecond before the end');
  clock.advance(1);
  assert.equal(snooze.active, false);
  assert.equal(clock.pending, 0);
  assert.deepEqual(changes, [Date.UTC(2026, 0, 5, 14, 15), undefined]);
});

test('snoozing again restarts the time; resume ends it at once; an expired snooze reads as over', () => {
  const clock = new FakeClock();
  const snooze = new Snooze(clock);
  snooze.start(5);
  clock.advance(4 * 60_000);
  snooze.start(60);
  assert.equal(clock.pending, 1, 'the first timer is cancelled');
  clock.advance(2 * 60_000);
  assert.equal(snooze.active, true, 'the new snooze, not the old one, decides');
  snooze.resume();
  assert.equal(snooze.active, false);
  assert.equal(clock.pending, 0);

  let notified = 0;
  snooze.onDidChange(() => (notified += 1));
  snooze.resume();
  assert.equal(notified, 0, 'resuming when not snoozed changes nothing');

  // A timer that has not fired yet (e.g. a suspended machine) does not keep an expired snooze going.
  const late = { ...clock, setTimeout: () => 0, clearTimeout: () => undefined, now: () => clock.now() };
  const lateSnooze = new Snooze(late);
  lateSnooze.start(5);
  clock.time += 5 * 60_000;
  assert.equal(lateSnooze.active, false);
  assert.throws(() => snooze.start(0), RangeError);
});

test('the menu offers 5, 15 and 60 minutes; end times are shown as local hh:mm', () => {
  assert.deepEqual([...SNOOZE_MINUTES], [5, 15, 60]);
  const end = new Date(2026, 0, 5, 9, 7).getTime();
  assert.equal(formatClockTime(end), '09:07');
});
