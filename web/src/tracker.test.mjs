// node --test web/src/tracker.test.mjs (scripts/test.sh runs it).
import test from 'node:test';
import assert from 'node:assert/strict';
import { AckTracker } from './tracker.js';

test('acknowledges only the contiguous prefix', () => {
  const t = new AckTracker();
  assert.equal(t.observe('2'), true);
  assert.equal(t.observe('3'), true);
  assert.equal(t.take(), null, '1 is missing');
  assert.equal(t.gap(), true);
  assert.equal(t.observe('1'), true);
  assert.equal(t.take(), 3n);
  assert.equal(t.gap(), false);
  assert.equal(t.take(), null, 'nothing new');
});

test('duplicates and transient events are ignored', () => {
  const t = new AckTracker();
  assert.equal(t.observe('0'), false, 'transient: pos 0');
  assert.equal(t.observe('1'), true);
  assert.equal(t.observe('1'), false);
  assert.equal(t.observe('3'), true);
  assert.equal(t.observe('3'), false);
  assert.equal(t.take(), 1n);
});

test("the server's position settles everything below it", () => {
  const t = new AckTracker();
  t.observe('7');
  t.server('5'); // a sync page after reconnecting: 1..5 are acknowledged
  assert.equal(t.take(), null, 'already acknowledged by the server');
  assert.equal(t.observe('6'), true);
  assert.equal(t.take(), 7n);
  t.server('2'); // older news changes nothing
  assert.equal(t.contiguous, 7n);
});

test('positions retention deleted are jumped over and acknowledged', () => {
  const t = new AckTracker();
  t.server('3');
  t.retained('0');
  t.retained('1');
  assert.equal(t.take(), null, 'nothing was deleted');
  t.retained('20'); // 4..19 expired while the device was away
  assert.equal(t.take(), 19n);
  assert.equal(t.observe('20'), true);
  assert.equal(t.take(), 20n);
  t.retained('5');
  assert.equal(t.contiguous, 20n, 'an older floor never moves it back');
});

test('positions past 2^53 stay exact', () => {
  const t = new AckTracker();
  t.server('9007199254740993');
  assert.equal(t.observe('9007199254740994'), true);
  assert.equal(t.take(), 9007199254740994n);
});
