//! A UDP relay on loopback between clients and quipd that misbehaves on
//! purpose: it drops, duplicates, reorders and delays datagrams at
//! configurable rates, can cut the path entirely (a tunnel, a partition),
//! and can hold back a client's packets once the server has answered (so a
//! 0-RTT flight arrives but the handshake cannot complete).
//!
//! Clients connect to `relay.addr`; each client address gets its own
//! upstream socket, so the server sees one peer per client, as through a NAT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;

/// What the relay does to datagrams in one direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is sent twice.
    pub duplicate: f64,
    /// Probability a datagram is held back and sent after the next one.
    pub reorder: f64,
    /// Added to every datagram.
    pub delay: Duration,
    /// Datagrams with more bytes than this are dropped, as on a path with a
    /// smaller MTU (0: no limit).
    pub max_datagram: usize,
}

/// Live controls of a relay.
#[derive(Debug, Default)]
pub struct Control {
    /// Drop everything in both directions while set.
    pub blackhole: AtomicBool,
    /// Client → server faults.
    pub up: Mutex<Faults>,
    /// Server → client faults.
    pub down: Mutex<Faults>,
    /// When set: once the server has sent a flow anything, that client's
    /// later datagrams are delayed by this much.
    pub hold_after_reply: Mutex<Option<Duration>>,
    /// Drop client datagrams that carry a QUIC Handshake packet (its TLS
    /// Finished): the server's handshake stays half-open.
    pub drop_client_handshakes: AtomicBool,
    /// Datagrams sent on to the server.
    pub sent_up: AtomicUsize,
    /// Server datagrams seen that carry a Handshake packet (whether or not
    /// they were passed on): the server has accepted a connection.
    pub server_handshakes: AtomicUsize,
}

/// A running relay.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Its controls.
    pub ctl: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Flow {
    upstream: Arc<UdpSocket>,
    replied: Arc<AtomicBool>,
    held: Mutex<Option<Vec<u8>>>,
}

impl Relay {
    /// Starts a relay in front of `server`.
    pub async fn start(server: SocketAddr) -> Self {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = listen.local_addr().unwrap();
        let ctl = Arc::new(Control::default());
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            let mut flows: HashMap<SocketAddr, Arc<Flow>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                    return;
                };
                let flow = match flows.get(&from) {
                    Some(f) => f.clone(),
                    None => {
                        let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        up.connect(server).await.unwrap();
                        let flow = Arc::new(Flow {
                            upstream: up.clone(),
                            replied: Arc::new(AtomicBool::new(false)),
                            held: Mutex::new(None),
                        });
                        tokio::spawn(downstream(up, listen.clone(), from, c.clone(), flow.replied.clone()));
                        flows.insert(from, flow.clone());
                        flow
                    }
                };
                let data = buf[..n].to_vec();
                if c.drop_client_handshakes.load(Ordering::SeqCst) && carries_handshake_packet(&data) {
                    continue;
                }
                let mut faults = *c.up.lock().unwrap();
                if flow.replied.load(Ordering::SeqCst)
                    && let Some(hold) = *c.hold_after_reply.lock().unwrap()
                {
                    faults.delay += hold;
                }
                let target = Target::Upstream(flow.upstream.clone());
                forward(&c, &faults, &flow.held, target, data);
            }
        });
        Self { addr, ctl, task }
    }

    /// Sets both directions' faults.
    pub fn set_faults(&self, f: Faults) {
        *self.ctl.up.lock().unwrap() = f;
        *self.ctl.down.lock().unwrap() = f;
    }

    /// Cuts (or restores) the path.
    pub fn set_blackhole(&self, on: bool) {
        self.ctl.blackhole.store(on, Ordering::SeqCst);
    }
}

#[derive(Clone)]
enum Target {
    Upstream(Arc<UdpSocket>),
    Client(Arc<UdpSocket>, SocketAddr),
}

impl Target {
    async fn send(&self, data: &[u8]) {
        let _ = match self {
            Target::Upstream(s) => s.send(data).await,
            Target::Client(s, to) => s.send_to(data, to).await,
        };
    }
}

/// Applies faults to one datagram and sends what survives.
fn forward(ctl: &Arc<Control>, f: &Faults, held: &Mutex<Option<Vec<u8>>>, target: Target, data: Vec<u8>) {
    if ctl.blackhole.load(Ordering::SeqCst) {
        return;
    }
    let mut rng = rand::rng();
    if rng.random_bool(f.loss.clamp(0.0, 1.0)) || (f.max_datagram > 0 && data.len() > f.max_datagram) {
        return;
    }
    let mut out = Vec::with_capacity(3);
    if rng.random_bool(f.reorder.clamp(0.0, 1.0)) {
        // Hold this one; it goes out after the next datagram.
        if let Some(prev) = held.lock().unwrap().replace(data) {
            out.push(prev);
        }
    } else {
        out.push(data.clone());
        if rng.random_bool(f.duplicate.clamp(0.0, 1.0)) {
            out.push(data);
        }
        if let Some(prev) = held.lock().unwrap().take() {
            out.push(prev);
        }
    }
    if out.is_empty() {
        return;
    }
    let delay = f.delay;
    let ctl = ctl.clone();
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        for d in out {
            target.send(&d).await;
            if matches!(target, Target::Upstream(_)) {
                ctl.sent_up.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
}

async fn downstream(
    up: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    ctl: Arc<Control>,
    replied: Arc<AtomicBool>,
) {
    let held = Mutex::new(None);
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = up.recv(&mut buf).await {
        replied.store(true, Ordering::SeqCst);
        if carries_handshake_packet(&buf[..n]) {
            ctl.server_handshakes.fetch_add(1, Ordering::SeqCst);
        }
        let faults = *ctl.down.lock().unwrap();
        forward(
            &ctl,
            &faults,
            &held,
            Target::Client(listen.clone(), client),
            buf[..n].to_vec(),
        );
    }
}

/// Whether a datagram carries a QUIC v1 Handshake packet (long header,
/// type 2), walking its coalesced packets (RFC 9000 §12.2, §17.2).
pub fn carries_handshake_packet(mut d: &[u8]) -> bool {
    fn varint(d: &[u8]) -> Option<(usize, usize)> {
        let first = *d.first()?;
        let len = 1usize << (first >> 6);
        let rest = d.get(1..len)?;
        let v = rest
            .iter()
            .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
        Some((usize::try_from(v).ok()?, len))
    }
    loop {
        let Some(&first) = d.first() else { return false };
        // A short header is always the last packet in a datagram.
        if first & 0x80 == 0 {
            return false;
        }
        match (first >> 4) & 0x03 {
            2 => return true,
            3 => return false, // Retry: no length, nothing after it
            _ => {}
        }
        let mut pos = 5; // first byte, version
        let Some(&dcid_len) = d.get(pos) else { return false };
        pos += 1 + usize::from(dcid_len);
        let Some(&scid_len) = d.get(pos) else { return false };
        pos += 1 + usize::from(scid_len);
        if (first >> 4) & 0x03 == 0 {
            let Some((token, n)) = d.get(pos..).and_then(varint) else {
                return false;
            };
            pos += n + token;
        }
        let Some((len, n)) = d.get(pos..).and_then(varint) else {
            return false;
        };
        pos += n + len;
        let Some(rest) = d.get(pos..) else { return false };
        d = rest;
    }
}
