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
//!                             or, for a live move (AUTH flag LIVE), PAGES, PAGES_LZ4, AT,
//!                             ROUND, END (below)
//! receiver -> sender  RESULT  status u8 (0: the whole image arrived and checks out)
//!                             | message len u16 | message
//! ```
//!
//! The token (a shared secret file) is never sent: each side proves it knows it by a MAC over
//! the other's random challenge. A receiver refuses everything before reading any image byte
//! if the proof is wrong. Frames carry the image byte stream exactly as it is written to a
//! file; an LZ4 frame is `raw length u32 | compressed block`.
//!
//! A live move (`pmig-run --to … --live`) sends the program's memory while it runs, in rounds,
//! then what it wrote meanwhile, then (stopped) the rest: its frames put bytes at offsets of
//! the image the receiver assembles instead of one after another:
//!
//! ```text
//! PAGES      store offset u64 | pages (a whole number of 4096-byte pages): page data at
//!            FAR_PAGES_OFF + store offset, replacing what an earlier round put there
//! PAGES_LZ4  store offset u64 | raw length u32 | LZ4 block of the pages
//! AT         offset u64 | bytes: header, manifest, trailer and footer, where they go
//! ROUND      round u32 | bytes u64: a pre-copy round ended (for the receiver's log)
//! END        the image is complete
//! ```
//!
//! The receiver keeps the CRC-32 of every page as it arrives and checks each run's checksum
//! in the trailer against the one made from its pages' (`crate::crc`): nothing is read twice.
#![allow(clippy::len_without_is_empty)]

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// First bytes of HELLO.
pub const WIRE_MAGIC: [u8; 8] = *b"PMIGWIRE";
/// Protocol version.
pub const WIRE_VERSION: u32 = 2;
/// Length of HELLO.
pub const HELLO_LEN: usize = 8 + 4 + 32;
/// Length of AUTH.
pub const AUTH_LEN: usize = 32 + 4 + 4 + 32;
/// The largest uncompressed payload of one frame.
pub const MAX_FRAME: usize = 4 << 20;
/// AUTH flag: the sender compresses frames with LZ4.
pub const FLAG_LZ4: u32 = 1;
/// AUTH flag: a live move (frames PAGES, PAGES_LZ4, AT, ROUND).
pub const FLAG_LIVE: u32 = 2;

/// Frame kinds.
pub mod frame {
    pub const RAW: u8 = 1;
    pub const LZ4: u8 = 2;
    pub const END: u8 = 3;
    pub const PAGES: u8 = 4;
    pub const PAGES_LZ4: u8 = 5;
    pub const AT: u8 = 6;
    pub const ROUND: u8 = 7;
}

/// The largest payload of an LZ4 frame (a block of up to [`MAX_FRAME`] bytes that did not
/// shrink, with LZ4's worst case and the frame's own fields).
const MAX_LZ4: usize = MAX_FRAME + MAX_FRAME / 255 + 64;

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
    let l = len as usize;
    match b[0] {
        frame::RAW if l <= MAX_FRAME => Ok((b[0], len)),
        frame::LZ4 if l <= MAX_LZ4 => Ok((b[0], len)),
        frame::END if len == 0 => Ok((b[0], 0)),
        frame::PAGES | frame::AT if (8..=8 + MAX_FRAME).contains(&l) => Ok((b[0], len)),
        frame::PAGES_LZ4 if (12..=12 + MAX_LZ4).contains(&l) => Ok((b[0], len)),
        frame::ROUND if l == 12 => Ok((b[0], len)),
        frame::RAW | frame::LZ4 | frame::END | frame::PAGES | frame::PAGES_LZ4 | frame::AT | frame::ROUND => {
            Err(format!("a frame claims {len} bytes, which its kind does not allow"))
        }
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
    #[error("a frame of a kind this transfer does not use (kind {0})")]
    WrongKind(u8),
    #[error("page data that is not a whole number of pages at a page boundary (offset {0})")]
    Unaligned(u64),
}

/// One frame of a transfer, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The next bytes of the image (RAW, LZ4).
    Bytes(&'a [u8]),
    /// Pages at `FAR_PAGES_OFF + off` (PAGES, PAGES_LZ4).
    Pages { off: u64, data: &'a [u8] },
    /// Bytes at `off` of the image (AT).
    At { off: u64, data: &'a [u8] },
    /// A pre-copy round ended.
    Round { round: u32, bytes: u64 },
    /// The end of the image.
    End,
}

/// Reads the FRAME* part of a transfer: each frame's payload (decompressed) in turn, until
/// END. Its two buffers (about 8 MiB) are the most a stream makes the reader hold at once.
pub struct Frames {
    lz4: bool,
    live: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Payload bytes so far.
    pub total: u64,
    max_total: u64,
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl Frames {
    /// A reader for a stream whose sender announced (or not) `FLAG_LZ4` and `FLAG_LIVE`,
    /// refusing streams longer than `max_total` payload bytes (or, live, that place bytes
    /// beyond it).
    pub fn new(flags: u32, max_total: u64) -> Frames {
        let lz4 = flags & FLAG_LZ4 != 0;
        Frames {
            lz4,
            live: flags & FLAG_LIVE != 0,
            buf: vec![0u8; 12 + MAX_LZ4],
            out: vec![0u8; if lz4 { MAX_FRAME } else { 0 }],
            total: 0,
            max_total,
        }
    }

    fn lz4_block<'a>(lz4: bool, out: &'a mut [u8], raw: usize, block: &[u8]) -> Result<&'a [u8], StreamError> {
        if !lz4 {
            return Err(StreamError::Unannounced);
        }
        if raw > MAX_FRAME {
            return Err(StreamError::TooBig(raw));
        }
        let n = lz4_flex::block::decompress_into(block, &mut out[..raw]).map_err(|e| StreamError::BadLz4(e.to_string()))?;
        if n != raw {
            return Err(StreamError::BadLz4(format!("{n} bytes, not the {raw} announced")));
        }
        Ok(&out[..raw])
    }

    /// The next frame. `read` fills a buffer exactly or fails.
    pub fn next(&mut self, mut read: impl FnMut(&mut [u8]) -> std::io::Result<()>) -> Result<Frame<'_>, StreamError> {
        let mut h = [0u8; 5];
        read(&mut h).map_err(StreamError::Truncated)?;
        let (kind, len) = parse_frame_header(&h).map_err(StreamError::BadFrame)?;
        let live_kind = matches!(kind, frame::PAGES | frame::PAGES_LZ4 | frame::AT | frame::ROUND);
        if kind != frame::END && live_kind != self.live {
            return Err(StreamError::WrongKind(kind));
        }
        let data = &mut self.buf[..len as usize];
        read(data).map_err(StreamError::Truncated)?;
        let frame = match kind {
            frame::END => return Ok(Frame::End),
            frame::RAW => Frame::Bytes(data),
            frame::LZ4 => {
                if len < 4 {
                    return Err(StreamError::Unannounced);
                }
                let raw = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
                Frame::Bytes(Self::lz4_block(self.lz4, &mut self.out, raw, &data[4..])?)
            }
            frame::ROUND => return Ok(Frame::Round { round: u32::from_le_bytes([data[0], data[1], data[2], data[3]]), bytes: le64(&data[4..]) }),
            frame::AT => Frame::At { off: le64(data), data: &data[8..] },
            frame::PAGES => Frame::Pages { off: le64(data), data: &data[8..] },
            _ => {
                let raw = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
                Frame::Pages { off: le64(data), data: Self::lz4_block(self.lz4, &mut self.out, raw, &data[12..])? }
            }
        };
        let (n, end) = match &frame {
            Frame::Bytes(b) => (b.len() as u64, self.total + b.len() as u64),
            Frame::Pages { off, data } => {
                if !off.is_multiple_of(crate::PAGE) || data.is_empty() || !(data.len() as u64).is_multiple_of(crate::PAGE) {
                    return Err(StreamError::Unaligned(*off));
                }
                (data.len() as u64, off.saturating_add(crate::FAR_PAGES_OFF).saturating_add(data.len() as u64))
            }
            Frame::At { off, data } => (data.len() as u64, off.saturating_add(data.len() as u64)),
            _ => (0, 0),
        };
        self.total += n;
        if end > self.max_total || self.total > self.max_total.saturating_mul(4) {
            return Err(StreamError::TooLarge(self.max_total));
        }
        Ok(frame)
    }
}

/// The CRC-32 of every page a live move's receiver has, by its place in the page data: kept
/// as pages arrive (a page sent again replaces its checksum), then checked against the
/// image's run checksums ([`PageSums::check`]) without reading a page again.
#[derive(Default)]
pub struct PageSums {
    /// Per 512 pages (2 MiB of page data): each page's checksum and which pages are there.
    chunks: std::collections::HashMap<u64, (Box<[u32; 512]>, [u64; 8])>,
}

impl PageSums {
    /// Notes `data` (whole pages) placed at `off` of the page data.
    pub fn put(&mut self, off: u64, data: &[u8]) {
        for (i, page) in data.chunks(crate::PAGE as usize).enumerate() {
            let n = off / crate::PAGE + i as u64;
            let c = self.chunks.entry(n / 512).or_insert_with(|| (Box::new([0u32; 512]), [0u64; 8]));
            let k = (n % 512) as usize;
            c.0[k] = crc32fast::hash(page);
            c.1[k / 64] |= 1 << (k % 64);
        }
    }

    fn get(&self, n: u64) -> Option<u32> {
        let c = self.chunks.get(&(n / 512))?;
        let k = (n % 512) as usize;
        (c.1[k / 64] & (1 << (k % 64)) != 0).then_some(c.0[k])
    }

    /// Checks every page run of `img` (assembled with its page data where the sender placed
    /// it, [`crate::FAR_PAGES_OFF`]) against the checksums of the pages that arrived.
    pub fn check(&self, img: &crate::VerifiedImage) -> Result<(), String> {
        let runs = img.manifest.regions.iter().flat_map(|r| r.runs.iter());
        for (run, &want) in runs.zip(&img.trailer.run_crcs) {
            let first = run.data_off / crate::PAGE;
            let mut crc = 0u32;
            for n in first..first + run.len / crate::PAGE {
                let Some(c) = self.get(n) else {
                    return Err(format!("the sender never sent the page at {:#x}", run.addr + (n - first) * crate::PAGE));
                };
                crc = crate::crc::append_page(crc, c);
            }
            if crc != want {
                return Err(format!("the pages at {:#x} ({} bytes) arrived damaged (checksum mismatch)", run.addr, run.len));
            }
        }
        Ok(())
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

    /// A live move's image, written where the frames put it: two runs placed out of order in
    /// the page data (at 8 KiB, then at 0), header and tail by AT.
    fn live_image(path: &std::path::Path, run_pages: &[Vec<u8>; 2]) -> crate::Manifest {
        use crate::{encode, Footer, Header, Manifest, PageRun, RegionKind, RegionState, Trailer, FAR_PAGES_OFF};
        use std::os::unix::fs::FileExt;
        let mut m = Manifest::default();
        m.regions.push(RegionState {
            start: 0x10000,
            end: 0x20000,
            prot: 3,
            shared: false,
            kind: RegionKind::Anon,
            runs: vec![PageRun { addr: 0x10000, len: 4096, data_off: 8192 }, PageRun { addr: 0x14000, len: 8192, data_off: 0 }],
        });
        let mb = encode(&m).unwrap();
        let h = Header::layout_far(mb.len() as u64, crc32fast::hash(&mb), 3 * 4096);
        let tb = encode(&Trailer { run_crcs: run_pages.iter().map(|p| crc32fast::hash(p)).collect() }).unwrap();
        let f = Footer { trailer_off: h.trailer_off(), trailer_len: tb.len() as u64, trailer_crc: crc32fast::hash(&tb) };
        let file = std::fs::File::create(path).unwrap();
        file.write_all_at(&h.to_bytes(), 0).unwrap();
        file.write_all_at(&mb, 64).unwrap();
        file.write_all_at(&run_pages[0], FAR_PAGES_OFF + 8192).unwrap();
        file.write_all_at(&run_pages[1], FAR_PAGES_OFF).unwrap();
        file.write_all_at(&tb, h.trailer_off()).unwrap();
        file.write_all_at(&f.to_bytes(), h.trailer_off() + tb.len() as u64).unwrap();
        m
    }

    #[test]
    fn a_live_image_is_checked_by_the_checksums_of_its_pages_as_they_arrived() {
        let dir = std::env::temp_dir().join(format!("pmig-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let runs = [vec![1u8; 4096], (0..8192u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>()];
        live_image(&path, &runs);
        let img = crate::verify_file_pages(&path, crate::Pages::Unread).expect("a sparse image verifies");
        assert!(img.header.is_sparse());
        // Read in full too: every run's data where the manifest places it.
        crate::verify_file(&path).expect("its runs' data is where they say");
        let mut sums = PageSums::default();
        sums.put(0, &runs[1]);
        assert!(sums.check(&img).unwrap_err().contains("never sent the page at 0x10000"), "a page missing");
        sums.put(8192, &[9u8; 4096]);
        assert!(sums.check(&img).unwrap_err().contains("arrived damaged"), "a page not as the sender had it");
        // Sent again (a later round): the latest copy counts.
        sums.put(8192, &runs[0]);
        sums.check(&img).expect("every page as the sender had it");

        // Two runs sharing page data are refused.
        let m = live_image(&path, &runs);
        let mut bad = m.clone();
        bad.regions[0].runs[1].data_off = 4096;
        let mb = crate::encode(&bad).unwrap();
        let h = crate::Header::layout_far(mb.len() as u64, crc32fast::hash(&mb), 3 * 4096);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&h.to_bytes(), 0).unwrap();
            f.write_all_at(&mb, 64).unwrap();
        }
        let e = crate::verify_file_pages(&path, crate::Pages::Unread).unwrap_err().to_string();
        assert!(e.contains("share page data"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn live_and_plain_frames_do_not_mix() {
        let stream = |frames: &[(u8, Vec<u8>)]| {
            let mut v = Vec::new();
            for (k, p) in frames {
                v.extend_from_slice(&frame_header(*k, p.len() as u32));
                v.extend_from_slice(p);
            }
            v
        };
        let run = |flags: u32, bytes: Vec<u8>| -> Result<usize, String> {
            let mut f = Frames::new(flags, 1 << 40);
            let mut at = 0usize;
            let mut n = 0;
            loop {
                let fr = f
                    .next(|b| {
                        b.copy_from_slice(&bytes[at..at + b.len()]);
                        at += b.len();
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                if fr == Frame::End {
                    return Ok(n);
                }
                n += 1;
            }
        };
        let mut pages = 4096u64.to_le_bytes().to_vec();
        pages.extend_from_slice(&[0u8; 4096]);
        let end = (frame::END, Vec::new());
        assert_eq!(run(FLAG_LIVE, stream(&[(frame::PAGES, pages.clone()), end.clone()])), Ok(1));
        assert!(run(0, stream(&[(frame::PAGES, pages.clone()), end.clone()])).unwrap_err().contains("does not use"));
        assert!(run(FLAG_LIVE, stream(&[(frame::RAW, vec![1, 2, 3]), end.clone()])).unwrap_err().contains("does not use"));
        let mut odd = 100u64.to_le_bytes().to_vec();
        odd.extend_from_slice(&[0u8; 4096]);
        assert!(run(FLAG_LIVE, stream(&[(frame::PAGES, odd), end.clone()])).unwrap_err().contains("whole number of pages"));
        let mut far = (1u64 << 41).to_le_bytes().to_vec();
        far.extend_from_slice(&[0u8; 4096]);
        assert!(run(FLAG_LIVE, stream(&[(frame::PAGES, far), end])).unwrap_err().contains("larger than"));
    }
}
