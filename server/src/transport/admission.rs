//! Admission: whether a new connection is taken, refused, or (QUIC) first
//! asked to prove its address with a Retry.
//!
//! Connections are limited per client address, so one host cannot use up
//! the server. A QUIC Initial's source address can be forged, though: before
//! Retry, a flood of Initials spoofed from a victim's address filled the
//! victim's slots with handshakes that could never finish. So handshakes
//! from an address not yet validated (RFC 9000 §8.1) may hold only a
//! quarter of its slots, [`Admission::unvalidated_per_ip`]; beyond those (or
//! beyond [`UNVALIDATED_TOTAL`] across all addresses) the server answers
//! with a Retry, which costs it no state. Only a peer that receives at the
//! address can return the Retry's token, and a handshake carrying one is
//! validated, so a spoofer can hold at most that quarter, each slot for at
//! most the handshake timeout; the address keeps three quarters.
//!
//! Retry only when handshakes pile up, not always: besides the round trip
//! it costs, with quinn 0.11 handshakes behind a Retry ran far slower under
//! concurrency (`quip-bench connections`, 3,000 connections on 2 cores: 50
//! handshakes/s with a Retry for every one, at 16 or 256 in flight, against
//! ~1,300/s without; one at a time it cost nothing measurable). A burst
//! from one address behind a NAT (the benchmark's 256 at once from one
//! host) stays below a quarter of the limit and never sees one.
//!
//! The per-address count stays strict (a validated handshake's slot is
//! counted from its Initial, an unvalidated one's too): no connection is
//! refused after its handshake, and an address never exceeds the limit.
//! TCP (HTTPS) connections are validated by TCP's own handshake.
//!
//! The state here is counters only; `server.rs` drives it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Most unvalidated handshakes in progress from all addresses together
/// before every unvalidated Initial is answered with a Retry: bounds the
/// handshake state (~40 KiB each) and TLS work spoofed sources can cause.
pub const UNVALIDATED_TOTAL: usize = 1024;

/// What to do with a new QUIC connection attempt.
#[derive(Debug)]
#[must_use]
pub enum Decision {
    /// Serve it; the slot is held until dropped.
    Accept(Slot),
    /// Answer with a Retry: the client proves its address first.
    Retry,
    /// Refuse it (QUIC `CONNECTION_REFUSED`): its address is at its limit.
    Refuse,
}

/// Connections held per client address, against a limit.
#[derive(Debug)]
pub struct Admission {
    max_per_ip: usize,
    unvalidated_per_ip: usize,
    unvalidated_total: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    per_ip: HashMap<IpAddr, Held>,
    unvalidated: usize,
}

/// One address's slots in use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Held {
    validated: usize,
    unvalidated: usize,
}

impl Admission {
    /// At most `max_per_ip` connections per address (at least 1).
    pub fn new(max_per_ip: usize) -> Arc<Self> {
        Self::with_total(max_per_ip, UNVALIDATED_TOTAL)
    }

    /// With another bound than [`UNVALIDATED_TOTAL`] (tests).
    pub fn with_total(max_per_ip: usize, total: usize) -> Arc<Self> {
        let max_per_ip = max_per_ip.max(1);
        Arc::new(Self {
            max_per_ip,
            unvalidated_per_ip: max_per_ip / 4,
            unvalidated_total: total,
            state: Mutex::default(),
        })
    }

    /// How many of an address's slots unvalidated handshakes may hold: a
    /// quarter (none when the limit is under 4: every such Initial gets a
    /// Retry).
    pub fn unvalidated_per_ip(&self) -> usize {
        self.unvalidated_per_ip
    }

    /// A QUIC Initial from `ip`; `validated`: it carried a valid Retry
    /// token, so the address is proven.
    pub fn quic(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Decision {
        let mut state = self.state.lock().expect("admission lock");
        let total_unvalidated = state.unvalidated;
        let held = state.per_ip.entry(ip).or_default();
        if held.validated + held.unvalidated >= self.max_per_ip {
            if *held == Held::default() {
                state.per_ip.remove(&ip);
            }
            return Decision::Refuse;
        }
        if validated {
            held.validated += 1;
        } else if held.unvalidated < self.unvalidated_per_ip && total_unvalidated < self.unvalidated_total {
            held.unvalidated += 1;
            state.unvalidated += 1;
        } else {
            if *held == Held::default() {
                state.per_ip.remove(&ip);
            }
            return Decision::Retry;
        }
        Decision::Accept(Slot {
            admission: self.clone(),
            ip,
            validated: AtomicBool::new(validated),
        })
    }

    /// A TCP connection from `ip` (validated by TCP's handshake); `None`
    /// when the address is at its limit.
    pub fn tcp(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        match self.quic(ip, true) {
            Decision::Accept(slot) => Some(slot),
            _ => None,
        }
    }

    /// Slots in use by `ip`: (validated, unvalidated).
    pub fn held(&self, ip: IpAddr) -> (usize, usize) {
        let state = self.state.lock().expect("admission lock");
        state.per_ip.get(&ip).map_or((0, 0), |h| (h.validated, h.unvalidated))
    }

    fn release(&self, ip: IpAddr, validated: bool) {
        let mut state = self.state.lock().expect("admission lock");
        if !validated {
            state.unvalidated -= 1;
        }
        if let Some(held) = state.per_ip.get_mut(&ip) {
            if validated {
                held.validated -= 1;
            } else {
                held.unvalidated -= 1;
            }
            if *held == Held::default() {
                state.per_ip.remove(&ip);
            }
        }
    }

    fn validate(&self, ip: IpAddr) {
        let mut state = self.state.lock().expect("admission lock");
        state.unvalidated -= 1;
        if let Some(held) = state.per_ip.get_mut(&ip) {
            held.unvalidated -= 1;
            held.validated += 1;
        }
    }
}

/// One connection's slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    validated: AtomicBool,
}

impl Slot {
    /// The handshake completed, which validates the address (RFC 9000
    /// §8.1): the slot no longer counts against the unvalidated allowance.
    pub fn validated(&self) {
        if !self.validated.swap(true, Ordering::SeqCst) {
            self.admission.validate(self.ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.ip, *self.validated.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn accept(d: Decision) -> Slot {
        match d {
            Decision::Accept(s) => s,
            other => panic!("expected Accept, got {other:?}"),
        }
    }

    #[test]
    fn spoofed_initials_hold_a_few_slots_and_the_rest_are_retried() {
        let adm = Admission::new(1000);
        let allowed = adm.unvalidated_per_ip();
        assert_eq!(allowed, 250);
        let spoofed: Vec<Slot> = (0..allowed).map(|_| accept(adm.quic(A, false))).collect();
        for _ in 0..10_000 {
            assert!(matches!(adm.quic(A, false), Decision::Retry));
        }
        assert_eq!(adm.held(A), (0, allowed));
        // The real client returns the Retry token and gets in.
        let real = accept(adm.quic(A, true));
        assert_eq!(adm.held(A), (1, allowed));
        // Another address is unaffected.
        let _b = accept(adm.quic(B, false));
        drop((spoofed, real));
        assert_eq!(adm.held(A), (0, 0));
        assert!(!adm.state.lock().unwrap().per_ip.contains_key(&A), "no entry left");
    }

    #[test]
    fn the_limit_counts_every_slot_and_is_never_exceeded() {
        let adm = Admission::new(8);
        assert_eq!(adm.unvalidated_per_ip(), 2, "a quarter of a small limit");
        let mut held = vec![accept(adm.quic(A, false)), accept(adm.quic(A, false))];
        assert!(matches!(adm.quic(A, false), Decision::Retry));
        held.extend((0..6).map(|_| accept(adm.quic(A, true))));
        assert!(matches!(adm.quic(A, true), Decision::Refuse));
        assert!(matches!(adm.quic(A, false), Decision::Refuse));
        assert!(adm.tcp(A).is_none());
        // Completing handshakes frees the unvalidated allowance, not slots.
        held[0].validated();
        held[0].validated();
        assert_eq!(adm.held(A), (7, 1));
        assert!(matches!(adm.quic(A, false), Decision::Refuse));
        held.pop();
        let again = accept(adm.quic(A, false));
        assert_eq!(adm.held(A), (6, 2));
        drop((held, again));
        assert_eq!(adm.held(A), (0, 0));
    }

    #[test]
    fn a_limit_of_one_always_asks_for_a_retry() {
        let adm = Admission::new(1);
        assert!(matches!(adm.quic(A, false), Decision::Retry));
        let s = accept(adm.quic(A, true));
        assert!(matches!(adm.quic(A, true), Decision::Refuse));
        drop(s);
        assert!(adm.tcp(A).is_some());
    }

    #[test]
    fn many_unvalidated_sources_together_get_retries() {
        let adm = Admission::with_total(1000, 3);
        let _held: Vec<Slot> = (1..=3u8)
            .map(|i| accept(adm.quic(IpAddr::from([10, 0, 0, i]), false)))
            .collect();
        assert!(matches!(adm.quic(IpAddr::from([10, 0, 0, 9]), false), Decision::Retry));
        let _validated = accept(adm.quic(IpAddr::from([10, 0, 0, 9]), true));
    }
}
