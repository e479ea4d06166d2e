//! The transfer protocol: how a checkpoint travels from a sender (libpmig in a program started
//! with `pmig-run --to HOST:PORT`) to a receiver (`pmig-resume --listen ADDR:PORT`).
//!
//! ```text
//! receiver -> sender  HELLO   "PMIGWIRE" | version u32 | challenge [32]
//! sender -> receiver  AUTH    HMAC-SHA256(token, "pmig-sender" | challenge) [32]
//!                             | flags u32 | uid u32 | challenge2 [32]
//! receiver -> sender  ACCEPT  status u8 (0 ok) | HMAC-SHA256(token, "pmig-receiver" | challenge2)
//!                             [32] (only when ok) | message len u16 | message
//! sender -> receiver  FILES   count u32 | (path len u16 | path | size u64 | sha256 [32]
//!                             | writable u8)*: the files the program uses (executable,
//!                             libraries, open files; writable: open for writing — the
//!                             program's output, used as the target has it, carried if missing)
//! receiver -> sender  NEEDS   status u8 (0 ok) | message len u16 | message
//!                             | (when ok) one byte per file: 1 = carry it, 0 = the target has it
//! sender -> receiver  FRAME*  kind u8 | len u32 | payload     (RAW bytes, LZ4 block, END)
//! receiver -> sender  RESULT  status u8 (0: the whole image arrived and checks out)
//!                             | message len u16 | message
//! ```
//!
//! The token (a shared secret file) is never sent: each side proves it knows it by a MAC over
//! the other's random challenge. A receiver refuses everything before reading any image byte
//! if the proof is wrong. Frames carry the image byte stream exactly as it is written to a
//! file; an LZ4 frame is `raw length u32 | compressed block`.
#![allow(clippy::len_without_is_empty)]

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// First bytes of HELLO.
pub const WIRE_MAGIC: [u8; 8] = *b"PMIGWIRE";
/// Protocol version.
pub const WIRE_VERSION: u32 = 1;
/// Length of HELLO.
pub const HELLO_LEN: usize = 8 + 4 + 32;
/// Length of AUTH.
pub const AUTH_LEN: usize = 32 + 4 + 4 + 32;
/// The largest uncompressed payload of one frame.
pub const MAX_FRAME: usize = 4 << 20;
/// AUTH flag: the sender compresses frames with LZ4.
pub const FLAG_LZ4: u32 = 1;

/// Frame kinds.
pub mod frame {
    pub const RAW: u8 = 1;
    pub const LZ4: u8 = 2;
    pub const END: u8 = 3;
}

/// MAC of `challenge` under `token`, for `role` (`b"pmig-sender"` or `b"pmig-receiver"`).
pub fn mac(token: &[u8], role: &[u8], challenge: &[u8; 32]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(token).expect("HMAC takes keys of any length");
    m.update(role);
    m.update(challenge);
    m.finalize().into_bytes().into()
}

/// Checks a MAC in constant time.
pub fn mac_ok(token: &[u8], role: &[u8], challenge: &[u8; 32], got: &[u8]) -> bool {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(token).expect("HMAC takes keys of any length");
    m.update(role);
    m.update(challenge);
    m.verify_slice(got).is_ok()
}

/// HELLO bytes.
pub fn hello(challenge: &[u8; 32]) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..8].copy_from_slice(&WIRE_MAGIC);
    b[8..12].copy_from_slice(&WIRE_VERSION.to_le_bytes());
    b[12..].copy_from_slice(challenge);
    b
}

/// Parses HELLO: the challenge, or why it is not one.
pub fn parse_hello(b: &[u8; HELLO_LEN]) -> Result<[u8; 32], &'static str> {
    if b[..8] != WIRE_MAGIC {
        return Err("the peer is not a pmig receiver");
    }
    if u32::from_le_bytes([b[8], b[9], b[10], b[11]]) != WIRE_VERSION {
        return Err("the receiver speaks another version of the pmig transfer protocol");
    }
    let mut c = [0u8; 32];
    c.copy_from_slice(&b[12..]);
    Ok(c)
}

/// AUTH as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auth {
    pub mac: [u8; 32],
    pub flags: u32,
    pub uid: u32,
    pub challenge: [u8; 32],
}

impl Auth {
    pub fn to_bytes(&self) -> [u8; AUTH_LEN] {
        let mut b = [0u8; AUTH_LEN];
        b[..32].copy_from_slice(&self.mac);
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.uid.to_le_bytes());
        b[40..].copy_from_slice(&self.challenge);
        b
    }

    pub fn from_bytes(b: &[u8; AUTH_LEN]) -> Auth {
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&b[..32]);
        let mut challenge = [0u8; 32];
        challenge.copy_from_slice(&b[40..]);
        Auth {
            mac,
            flags: u32::from_le_bytes([b[32], b[33], b[34], b[35]]),
            uid: u32::from_le_bytes([b[36], b[37], b[38], b[39]]),
            challenge,
        }
    }
}

/// A status reply (`ACCEPT` without its MAC, or `RESULT`): status byte, then the message.
pub fn status(ok: bool, msg: &str) -> Vec<u8> {
    let msg = &msg.as_bytes()[..msg.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(3 + msg.len());
    v.push(if ok { 0 } else { 1 });
    v.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    v.extend_from_slice(msg);
    v
}

/// The most files a FILES message may list.
pub const MAX_FILES: usize = 100_000;
/// The most path bytes a FILES message may hold in all (what it can make a receiver keep).
pub const MAX_FILES_BYTES: usize = 16 << 20;

/// One file the program uses, as FILES lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOffer {
    pub path: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Open for writing: the target's copy (if any) is used as it is.
    pub writable: bool,
}

/// Encodes a FILES message.
pub fn files_message(files: &[FileOffer]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for f in files {
        let p = &f.path.as_bytes()[..f.path.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(p.len() as u16).to_le_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(&f.size.to_le_bytes());
        v.extend_from_slice(&f.sha256);
        v.push(f.writable as u8);
    }
    v
}

/// Reads a FILES message from `read` (which fills a buffer exactly or fails).
pub fn read_files_message<E>(mut read: impl FnMut(&mut [u8]) -> Result<(), E>) -> Result<Result<Vec<FileOffer>, String>, E> {
    let mut n = [0u8; 4];
    read(&mut n)?;
    let n = u32::from_le_bytes(n) as usize;
    if n > MAX_FILES {
        return Ok(Err(format!("the sender lists {n} files, more than {MAX_FILES}")));
    }
    let mut out = Vec::with_capacity(n.min(1024));
    let mut held = 0usize;
    for _ in 0..n {
        let mut l = [0u8; 2];
        read(&mut l)?;
        held += u16::from_le_bytes(l) as usize;
        if held > MAX_FILES_BYTES {
            return Ok(Err(format!("the sender's file list holds more than {MAX_FILES_BYTES} bytes of paths")));
        }
        let mut p = vec![0u8; u16::from_le_bytes(l) as usize];
        read(&mut p)?;
        let mut size = [0u8; 8];
        read(&mut size)?;
        let mut sha256 = [0u8; 32];
        read(&mut sha256)?;
        let mut w = [0u8; 1];
        read(&mut w)?;
        let Ok(path) = String::from_utf8(p) else { return Ok(Err("a file name is not UTF-8".into())) };
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Ok(Err(format!("the sender offers a file with a bad path {path:?}")));
        }
        out.push(FileOffer { path, size: u64::from_le_bytes(size), sha256, writable: w[0] != 0 });
    }
    Ok(Ok(out))
}

/// SHA-256 of a byte stream.
pub fn sha256_of(mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// A frame header.
pub fn frame_header(kind: u8, len: u32) -> [u8; 5] {
    let l = len.to_le_bytes();
    [kind, l[0], l[1], l[2], l[3]]
}

/// Parses a frame header, refusing unknown kinds and oversized lengths.
pub fn parse_frame_header(b: &[u8; 5]) -> Result<(u8, u32), String> {
    let len = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    match b[0] {
        frame::RAW if len as usize <= MAX_FRAME => Ok((b[0], len)),
        frame::LZ4 if len as usize <= MAX_FRAME + MAX_FRAME / 255 + 64 => Ok((b[0], len)),
        frame::END if len == 0 => Ok((b[0], 0)),
        frame::RAW | frame::LZ4 | frame::END => Err(format!("a frame claims {len} bytes, more than allowed")),
        k => Err(format!("unknown frame kind {k}: not a pmig stream")),
    }
}

/// Why a sender's image stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the stream ended before its end mark (truncated)")]
    Truncated(#[source] std::io::Error),
    #[error("{0}")]
    BadFrame(String),
    #[error("a compressed frame the sender did not announce")]
    Unannounced,
    #[error("a compressed frame claims {0} bytes, more than a frame holds")]
    TooBig(usize),
    #[error("a compressed frame does not decompress: {0}")]
    BadLz4(String),
    #[error("the image is larger than {0} bytes")]
    TooLarge(u64),
}

/// Reads the FRAME* part of a transfer: each frame's payload (decompressed) in turn, until
/// END. Its two buffers (about 8 MiB) are the most a stream makes the reader hold at once.
pub struct Frames {
    lz4: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Payload bytes so far.
    pub total: u64,
    max_total: u64,
}

impl Frames {
    /// A reader for a stream whose sender announced (or not) `FLAG_LZ4`, refusing streams
    /// longer than `max_total` payload bytes.
    pub fn new(lz4: bool, max_total: u64) -> Frames {
        Frames { lz4, buf: vec![0u8; MAX_FRAME + MAX_FRAME / 255 + 64], out: vec![0u8; if lz4 { MAX_FRAME } else { 0 }], total: 0, max_total }
    }

    /// The next frame's payload, or `None` at the END frame. `read` fills a buffer exactly
    /// or fails.
    pub fn next(&mut self, mut read: impl FnMut(&mut [u8]) -> std::io::Result<()>) -> Result<Option<&[u8]>, StreamError> {
        let mut h = [0u8; 5];
        read(&mut h).map_err(StreamError::Truncated)?;
        let (kind, len) = parse_frame_header(&h).map_err(StreamError::BadFrame)?;
        let data = &mut self.buf[..len as usize];
        read(data).map_err(StreamError::Truncated)?;
        let bytes: &[u8] = match kind {
            frame::END => return Ok(None),
            frame::RAW => data,
            _ => {
                if !self.lz4 || len < 4 {
                    return Err(StreamError::Unannounced);
                }
                let raw = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
                if raw > MAX_FRAME {
                    return Err(StreamError::TooBig(raw));
                }
                let n = lz4_flex::block::decompress_into(&data[4..], &mut self.out[..raw]).map_err(|e| StreamError::BadLz4(e.to_string()))?;
                if n != raw {
                    return Err(StreamError::BadLz4(format!("{n} bytes, not the {raw} announced")));
                }
                &self.out[..raw]
            }
        };
        self.total += bytes.len() as u64;
        if self.total > self.max_total {
            return Err(StreamError::TooLarge(self.max_total));
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_prove_the_token_and_only_it() {
        let c = [7u8; 32];
        let m = mac(b"secret", b"pmig-sender", &c);
        assert!(mac_ok(b"secret", b"pmig-sender", &c, &m));
        assert!(!mac_ok(b"other", b"pmig-sender", &c, &m));
        assert!(!mac_ok(b"secret", b"pmig-receiver", &c, &m));
        assert!(!mac_ok(b"secret", b"pmig-sender", &[8u8; 32], &m));
    }

    #[test]
    fn hello_and_auth_round_trip() {
        let c = [3u8; 32];
        assert_eq!(parse_hello(&hello(&c)), Ok(c));
        let mut bad = hello(&c);
        bad[0] = b'X';
        assert!(parse_hello(&bad).is_err());
        let a = Auth { mac: [1; 32], flags: FLAG_LZ4, uid: 1000, challenge: [2; 32] };
        assert_eq!(Auth::from_bytes(&a.to_bytes()), a);
    }

    #[test]
    fn frame_headers_are_bounded() {
        assert_eq!(parse_frame_header(&frame_header(frame::RAW, 10)), Ok((frame::RAW, 10)));
        assert!(parse_frame_header(&frame_header(frame::RAW, MAX_FRAME as u32 + 1)).is_err());
        assert!(parse_frame_header(&frame_header(9, 1)).is_err());
        assert!(parse_frame_header(&frame_header(frame::END, 1)).is_err());
    }
}
