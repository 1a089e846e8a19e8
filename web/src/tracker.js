// Which log positions this device has, and what it may acknowledge: only
// the contiguous prefix. Events arrive on several push lanes, in sync pages
// and in send and receipt replies, so positions come out of order;
// acknowledging past a gap would tell the server the missing event is here,
// and it would never be sent again (spec/protocol.md §9). The same rules as
// the Rust client's AckTracker (client-cli/src/tracker.rs). No I/O: the
// node unit test (tracker.test.mjs) drives it directly.

export class AckTracker {
  constructor() {
    this.contiguous = 0n; // every position up to this one is here
    this.ahead = new Set(); // positions above a gap, as decimal strings
    this.acked = 0n; // the last position handed out by take()
  }

  /** The server's position for this device (a sync page's `acked`). */
  server(acked) {
    const a = BigInt(acked || 0);
    if (a <= this.contiguous) return;
    this.contiguous = a;
    if (a > this.acked) this.acked = a;
    for (const p of this.ahead) if (BigInt(p) <= a) this.ahead.delete(p);
    this.advance();
  }

  /**
   * Positions below `retainedFrom` (a sync page's `retained_from_pos`; 0:
   * none) were deleted by the server's retention policy and never arrive:
   * settled as received, but still to be acknowledged, so a device that was
   * away longer than the retention period does not wait on them forever.
   */
  retained(retainedFrom) {
    const below = BigInt(retainedFrom || 0) - 1n;
    if (below <= this.contiguous) return;
    this.contiguous = below;
    for (const p of this.ahead) if (BigInt(p) <= below) this.ahead.delete(p);
    this.advance();
  }

  /** Records a received position (0: transient, never acknowledged). */
  observe(pos) {
    const p = BigInt(pos || 0);
    if (p === 0n || p <= this.contiguous || this.ahead.has(p.toString())) return false;
    this.ahead.add(p.toString());
    this.advance();
    return true;
  }

  advance() {
    while (this.ahead.delete((this.contiguous + 1n).toString())) this.contiguous += 1n;
  }

  /** Whether a position above a gap is waiting for the gap to fill. */
  gap() {
    return this.ahead.size > 0;
  }

  /** The position to acknowledge now, if it moved; else null. */
  take() {
    if (this.contiguous <= this.acked) return null;
    this.acked = this.contiguous;
    return this.acked;
  }
}
