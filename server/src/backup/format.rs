//! The dump format (`store.qbk`), sans-IO: records in, bytes out, and
//! bytes in (in any pieces), records out.
//!
//! `QUIPBAK1`, then per key `u32 BE key length, key, u32 BE value length,
//! value` in key order, then `u32 BE 0xFFFF_FFFF, u64 BE key count, SHA-256
//! of every byte after the magic and before this trailer`. The trailer is
//! what tells a complete dump from one cut short; the checksum, one that
//! was damaged since.

use anyhow::bail;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"QUIPBAK1";
/// Bounds on what a dump may hold, far above what the store does (keys of
/// a few hundred bytes, values up to ~300 kB), so a damaged length is an
/// error instead of an allocation of gigabytes.
const MAX_KEY: usize = 64 << 10;
const MAX_VALUE: usize = 16 << 20;
const END: u32 = u32::MAX;
/// Bytes buffered before a chunk of the dump is handed on.
pub(super) const CHUNK: usize = 1 << 20;

/// Builds the dump: records in, bytes out.
pub(super) struct Encoder {
    buf: BytesMut,
    hash: Sha256,
    count: u64,
}

impl Encoder {
    pub(super) fn new() -> Self {
        let mut buf = BytesMut::with_capacity(CHUNK + 64 * 1024);
        buf.put_slice(MAGIC);
        Self {
            buf,
            hash: Sha256::new(),
            count: 0,
        }
    }

    pub(super) fn record(&mut self, key: &[u8], value: &[u8]) {
        let start = self.buf.len();
        self.buf.put_u32(u32::try_from(key.len()).expect("keys are small"));
        self.buf.put_slice(key);
        self.buf
            .put_u32(u32::try_from(value.len()).expect("values are below 4 GiB"));
        self.buf.put_slice(value);
        self.hash.update(&self.buf[start..]);
        self.count += 1;
    }

    /// Records so far.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// The bytes so far, once there are enough to hand on.
    pub(super) fn take_full(&mut self) -> Option<Bytes> {
        (self.buf.len() >= CHUNK).then(|| self.buf.split().freeze())
    }

    /// The rest, with the trailer.
    pub(super) fn finish(mut self) -> Bytes {
        self.buf.put_u32(END);
        self.buf.put_u64(self.count);
        self.buf.put_slice(&self.hash.finalize());
        self.buf.freeze()
    }
}

/// What the decoder found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Item {
    /// A key and its value.
    Record(Vec<u8>, Vec<u8>),
    /// The trailer, verified: the dump is complete and intact.
    End { count: u64, sha256: [u8; 32] },
}

/// Reads a dump: bytes in (in any pieces), records out. `next` answers
/// `Ok(None)` when it needs more bytes, and an error for a damaged dump.
pub(super) struct Decoder {
    buf: BytesMut,
    hash: Sha256,
    count: u64,
    started: bool,
    ended: bool,
}

impl Decoder {
    pub(super) fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            hash: Sha256::new(),
            count: 0,
            started: false,
            ended: false,
        }
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub(super) fn next(&mut self) -> anyhow::Result<Option<Item>> {
        if self.ended {
            if !self.buf.is_empty() {
                bail!("bytes after the end of the dump");
            }
            return Ok(None);
        }
        if !self.started {
            if self.buf.len() < MAGIC.len() {
                return Ok(None);
            }
            if &self.buf[..MAGIC.len()] != MAGIC {
                bail!("not a quipd backup (bad magic)");
            }
            self.buf.advance(MAGIC.len());
            self.started = true;
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let key_len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes"));
        if key_len == END {
            if self.buf.len() < 4 + 8 + 32 {
                return Ok(None);
            }
            let count = u64::from_be_bytes(self.buf[4..12].try_into().expect("8 bytes"));
            let sha256: [u8; 32] = self.buf[12..44].try_into().expect("32 bytes");
            let actual: [u8; 32] = std::mem::take(&mut self.hash).finalize().into();
            if count != self.count || sha256 != actual {
                bail!(
                    "the dump is damaged: its trailer says {count} keys, {} were read, or the checksum differs",
                    self.count
                );
            }
            self.buf.advance(44);
            self.ended = true;
            return Ok(Some(Item::End { count, sha256 }));
        }
        let key_len = key_len as usize;
        if key_len > MAX_KEY {
            bail!("the dump is damaged: a key of {key_len} bytes");
        }
        if self.buf.len() < 4 + key_len + 4 {
            return Ok(None);
        }
        let value_len = u32::from_be_bytes(self.buf[4 + key_len..8 + key_len].try_into().expect("4 bytes")) as usize;
        if value_len > MAX_VALUE {
            bail!("the dump is damaged: a value of {value_len} bytes");
        }
        let total = 8 + key_len + value_len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let record = self.buf.split_to(total);
        self.hash.update(&record);
        self.count += 1;
        Ok(Some(Item::Record(
            record[4..4 + key_len].to_vec(),
            record[8 + key_len..].to_vec(),
        )))
    }

    /// Whether the trailer was read.
    pub(super) fn complete(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn records() -> Records {
        (0..500u32)
            .map(|i| {
                (
                    format!("k/{i:05}").into_bytes(),
                    vec![i as u8; (i as usize * 37) % 3000],
                )
            })
            .collect()
    }

    fn encode(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        for (k, v) in records {
            enc.record(k, v);
            if let Some(c) = enc.take_full() {
                out.extend_from_slice(&c);
            }
        }
        out.extend_from_slice(&enc.finish());
        out
    }

    type Records = Vec<(Vec<u8>, Vec<u8>)>;

    /// Decodes `bytes` fed in pieces of `step`: the records, and the count
    /// in the trailer once it was read.
    pub(in crate::backup) fn decode(bytes: &[u8], step: usize) -> anyhow::Result<(Records, Option<u64>)> {
        let mut dec = Decoder::new();
        let (mut got, mut end) = (Vec::new(), None);
        for piece in bytes.chunks(step) {
            dec.feed(piece);
            while let Some(item) = dec.next()? {
                match item {
                    Item::Record(k, v) => got.push((k, v)),
                    Item::End { count, .. } => end = Some(count),
                }
            }
        }
        Ok((got, end.filter(|_| dec.complete())))
    }

    #[test]
    fn the_format_round_trips_in_any_pieces() {
        let recs = records();
        let bytes = encode(&recs);
        for step in [1, 7, 4096, bytes.len()] {
            let (got, end) = decode(&bytes, step).unwrap();
            assert_eq!(got, recs, "pieces of {step}");
            assert_eq!(end, Some(500));
        }
    }

    #[test]
    fn a_damaged_or_truncated_dump_is_refused() {
        let bytes = encode(&records());
        let mut flipped = bytes.clone();
        flipped[5000] ^= 1;
        // A flipped byte inside a value fails the checksum; one in a length
        // may fail the framing instead: an error either way.
        assert!(decode(&flipped, 4096).is_err());
        let (_, end) = decode(&bytes[..bytes.len() - 1], 4096).unwrap();
        assert_eq!(end, None, "no trailer: incomplete");
        assert!(decode(b"NOTABACKUP", 4096).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra, 4096).is_err(), "bytes after the end");
    }
}
