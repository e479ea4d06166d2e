//! Fuzz targets: the two parsers that take bytes from outside — the image decoder
//! ([`image`]) and the receiver's side of the transfer protocol ([`wire`]) — each a function
//! of a byte slice that must never panic, hang or allocate without bound, whatever the bytes.
//!
//! `image/tests/fuzz.rs` runs them for a bounded time with structure-aware mutations of the
//! valid inputs [`sample_image`] and [`sample_stream`] make; `image/examples/fuzz_image.rs`
//! and `fuzz_wire.rs` run one input from standard input, for an outside fuzzer (AFL++,
//! honggfuzz, cargo-fuzz) to drive.

use crate::wire::{self, Auth, FileOffer, Frame, Frames, AUTH_LEN, FLAG_LZ4};
use crate::{encode, Footer, Header, Manifest, PageRun, RegionKind, RegionState, Trailer, VerifiedImage, PAGE};

/// The image decoder: the verified image, or `None` if it is refused.
pub fn image(data: &[u8]) -> Option<VerifiedImage> {
    crate::verify_bytes(data).ok()
}

/// The token the sample stream's AUTH proves, and the challenge it answers.
pub const TOKEN: &[u8] = b"fuzz token";
pub const CHALLENGE: [u8; 32] = [0x3c; 32];

/// What a receiver takes from a stream that it would accept.
#[derive(Debug)]
pub struct Received {
    pub auth: Auth,
    pub files: Vec<FileOffer>,
    pub image: VerifiedImage,
    /// The image's bytes as the frames carried them.
    pub bytes: Vec<u8>,
}

/// The largest image the wire target assembles (a receiver takes up to 1 TiB; in memory here).
pub const MAX_FUZZ_IMAGE: u64 = 64 << 20;

/// The receiver's side of a transfer: AUTH (checked against [`TOKEN`] and [`CHALLENGE`]),
/// FILES, the frames, and the image they carry, verified; `Err` says why it is refused.
pub fn wire(data: &[u8]) -> Result<Received, String> {
    let mut at = 0usize;
    let mut read = |b: &mut [u8]| -> std::io::Result<()> {
        let end = at.checked_add(b.len()).filter(|&e| e <= data.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        b.copy_from_slice(&data[at..end]);
        at = end;
        Ok(())
    };
    let mut a = [0u8; AUTH_LEN];
    read(&mut a).map_err(|e| format!("no AUTH: {e}"))?;
    let auth = Auth::from_bytes(&a);
    if !wire::mac_ok(TOKEN, b"pmig-sender", &CHALLENGE, &auth.mac) {
        return Err("authentication failed".into());
    }
    let files = wire::read_files_message(&mut read).map_err(|e| format!("no FILES: {e}"))??;
    let mut frames = Frames::new(auth.flags, MAX_FUZZ_IMAGE);
    let mut img = Vec::new();
    let mut sums = wire::PageSums::default();
    let put = |img: &mut Vec<u8>, off: u64, b: &[u8]| {
        let end = off as usize + b.len();
        if img.len() < end {
            img.resize(end, 0);
        }
        img[off as usize..end].copy_from_slice(b);
    };
    loop {
        match frames.next(&mut read).map_err(|e| e.to_string())? {
            Frame::End => break,
            Frame::Bytes(b) => img.extend_from_slice(b),
            Frame::At { off, data } => put(&mut img, off, data),
            Frame::Pages { off, data } => {
                sums.put(off, data);
                put(&mut img, crate::FAR_PAGES_OFF + off, data);
            }
            Frame::Round { .. } => {}
        }
    }
    let image = crate::verify_bytes(&img).map_err(|e| e.to_string())?;
    if auth.flags & wire::FLAG_LIVE != 0 {
        sums.check(&image)?;
    }
    Ok(Received { auth, files, image, bytes: img })
}

/// Writes an image the way libpmig does: header, manifest, pages (aligned), trailer, footer.
/// `pages` holds the runs' bytes in order.
pub fn write_image(m: &Manifest, pages: &[u8]) -> Vec<u8> {
    let mb = encode(m).expect("a manifest encodes");
    let h = Header::layout(mb.len() as u64, crc32fast::hash(&mb), pages.len() as u64);
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(&mb);
    out.resize(h.pages_off as usize, 0);
    out.extend_from_slice(pages);
    let run_crcs = m.runs().map(|r| crc32fast::hash(&pages[r.data_off as usize..(r.data_off + r.len) as usize])).collect();
    let tb = encode(&Trailer { run_crcs }).expect("a trailer encodes");
    let f = Footer { trailer_off: out.len() as u64, trailer_len: tb.len() as u64, trailer_crc: crc32fast::hash(&tb) };
    out.extend_from_slice(&tb);
    out.extend_from_slice(&f.to_bytes());
    out
}

/// A small image with a bit of everything the decoder meets: regions of several kinds with
/// page runs, threads, files and fds, a carried file, strings.
pub fn sample_image() -> Vec<u8> {
    use crate::{FdState, FileIdent, FileKind, FileState, ThreadState};
    let mut m = Manifest::default();
    m.host.machine = "x86_64".into();
    m.host.kernel_release = "6.18.0-fuzz".into();
    m.process.exe = "/usr/bin/fuzzed".into();
    m.process.cwd = "/tmp".into();
    m.threads = vec![ThreadState::default(), ThreadState::default()];
    let mut off = 0;
    let mut run = |addr: u64, pages: u64| {
        let r = PageRun { addr, len: pages * PAGE, data_off: off };
        off += pages * PAGE;
        r
    };
    m.regions = vec![
        RegionState { start: 0x10000, end: 0x14000, prot: 3, shared: false, kind: RegionKind::Heap, runs: vec![run(0x10000, 1), run(0x12000, 2)] },
        RegionState {
            start: 0x400000,
            end: 0x402000,
            prot: 5,
            shared: false,
            kind: RegionKind::File { path: "/usr/bin/fuzzed".into(), offset: 0, ident: FileIdent::default() },
            runs: vec![run(0x401000, 1)],
        },
        RegionState { start: 0x7ff0000, end: 0x7ff2000, prot: 3, shared: false, kind: RegionKind::Stack, runs: vec![run(0x7ff1000, 1)] },
    ];
    m.files = vec![
        FileState { flags: 2, pos: 0, kind: FileKind::Tty { path: "/dev/pts/0".into() }, shared: 0, owner: (0, 0), owner_sig: 0, locks: Vec::new() },
        FileState { flags: 0, pos: 17, kind: FileKind::Regular { path: "/etc/hostname".into(), ident: FileIdent::default() }, shared: 0, owner: (0, 0), owner_sig: 0, locks: Vec::new() },
        FileState { flags: 0, pos: 0, kind: FileKind::Pipe { ino: 9, read_end: true, fifo: None, capacity: 65536, data: b"queued".to_vec() }, shared: 0, owner: (0, 0), owner_sig: 0, locks: Vec::new() },
    ];
    m.fds = vec![
        FdState { fd: 0, cloexec: false, file: 0 },
        FdState { fd: 1, cloexec: false, file: 0 },
        FdState { fd: 3, cloexec: true, file: 1 },
        FdState { fd: 4, cloexec: false, file: 2 },
    ];
    m.carried = vec![crate::CarriedFile { path: "/usr/bin/fuzzed".into(), mode: 0o755, mtime_ns: 1, content: b"#!/bin/sh\n".to_vec() }];
    let pages: Vec<u8> = (0..off).map(|i| (i * 7 % 251) as u8).collect();
    write_image(&m, &pages)
}

/// A whole sender's stream for `image`: AUTH (proving [`TOKEN`]), FILES, the image in frames
/// of `frame` bytes (LZ4 when `lz4`, with every other frame left raw), END.
pub fn sample_stream(image: &[u8], lz4: bool, frame: usize) -> Vec<u8> {
    let auth = Auth { mac: wire::mac(TOKEN, b"pmig-sender", &CHALLENGE), flags: if lz4 { FLAG_LZ4 } else { 0 }, uid: 1000, challenge: [5; 32] };
    let mut out = auth.to_bytes().to_vec();
    let files = [
        FileOffer { path: "/usr/bin/fuzzed".into(), size: 10, sha256: [1; 32], writable: false },
        FileOffer { path: "/tmp/out.log".into(), size: 0, sha256: [0; 32], writable: true },
    ];
    out.extend_from_slice(&wire::files_message(&files));
    for (i, chunk) in image.chunks(frame.max(1)).enumerate() {
        if lz4 && i % 2 == 0 {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&wire::frame_header(wire::frame::LZ4, (c.len() + 4) as u32));
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        } else {
            out.extend_from_slice(&wire::frame_header(wire::frame::RAW, chunk.len() as u32));
            out.extend_from_slice(chunk);
        }
    }
    out.extend_from_slice(&wire::frame_header(wire::frame::END, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_samples_are_accepted() {
        let img = sample_image();
        let v = image(&img).expect("the sample image verifies");
        assert_eq!(v.manifest.regions.len(), 3);
        for lz4 in [false, true] {
            let r = wire(&sample_stream(&img, lz4, 3000)).expect("the sample stream is accepted");
            assert_eq!(r.image.manifest, v.manifest);
            assert_eq!(r.files.len(), 2);
        }
    }
}
