//! The pmig image: what a checkpoint writes and a restore reads.
//!
//! ```text
//! offset 0        Header (64 bytes): magic "PMIGIMG\0" | version | manifest offset, length, crc
//!                 | page data offset, length | header crc
//! 64              manifest: bincode (serde) of `Manifest`
//! pages_off       page data, page aligned: one run after another, each run a whole number of
//!                 pages, at the file offset its `PageRun` names (an image a live move's
//!                 receiver assembles has them at `FAR_PAGES_OFF`, where the sender put
//!                 each, in any order, with holes between)
//! trailer_off     trailer: bincode of `Trailer` (a crc32 per page run)
//! end - 32        Footer: trailer offset, length, crc | total length | magic "PMIGEND\0"
//! ```
//!
//! The stream can be written front to back (the checksums of the pages go in the trailer, after
//! the pages) and read front to back; a reader refuses a file whose footer is missing (truncated),
//! whose checksums do not match (corrupted), whose magic is wrong (foreign) or whose version is
//! newer than it knows, before anything acts on the content.
#![forbid(unsafe_code)]

pub mod crc;
pub mod fuzz;
mod inspect;
mod manifest;
pub mod packed;
mod read;
pub mod wire;

pub use inspect::describe;
pub use manifest::*;
pub use read::{verify, verify_bytes, verify_file, verify_file_pages, verify_with, Pages, ReadSeek, VerifiedImage, VerifiedMember};

/// First 8 bytes of every image.
pub const MAGIC: [u8; 8] = *b"PMIGIMG\0";
/// Last 8 bytes of every complete image.
pub const END_MAGIC: [u8; 8] = *b"PMIGEND\0";
/// The format version this code writes and the newest it reads.
pub const VERSION: u32 = 6;
/// The oldest format version this code reads.
pub const MIN_VERSION: u32 = 6;
/// Size of [`Header`] on disk.
pub const HEADER_LEN: u64 = 64;
/// Size of [`Footer`] on disk.
pub const FOOTER_LEN: u64 = 32;
/// Alignment of page data in the file.
pub const PAGE: u64 = 4096;
/// The largest manifest a reader accepts (a bound against hostile length fields).
pub const MAX_MANIFEST: u64 = 1 << 30;
/// Where the page data of an image assembled by a live move's receiver starts: beyond any
/// manifest, so that pages sent while the program still ran can be put in place before the
/// manifest exists (the gap is a hole in the receiver's memfd). Its runs lie where the
/// sender placed them, in any order, not one after another ("sparse"); see `wire`.
pub const FAR_PAGES_OFF: u64 = (HEADER_LEN + MAX_MANIFEST).div_ceil(PAGE) * PAGE;

/// Errors reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a pmig image (bad magic)")]
    Foreign,
    #[error("image format version {0} is newer than this pmig understands (version {VERSION}); use a newer pmig-resume")]
    TooNew(u32),
    #[error("image format version {0} is older than this pmig reads (versions {MIN_VERSION} to {VERSION}); resume it with the pmig that wrote it")]
    TooOld(u32),
    #[error("image is truncated: {0}")]
    Truncated(String),
    #[error("image is corrupted: {0}")]
    Corrupted(String),
    #[error("could not encode the manifest: {0}")]
    Encode(String),
    #[error("cannot read the image")]
    Io(#[from] std::io::Error),
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed header at offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub manifest_off: u64,
    pub manifest_len: u64,
    pub manifest_crc: u32,
    pub pages_off: u64,
    pub pages_len: u64,
}

impl Header {
    /// Lays out an image whose manifest is `manifest_len` bytes and whose page data is
    /// `pages_len` bytes.
    pub fn layout(manifest_len: u64, manifest_crc: u32, pages_len: u64) -> Header {
        let manifest_off = HEADER_LEN;
        let pages_off = (manifest_off + manifest_len).div_ceil(PAGE) * PAGE;
        Header { version: VERSION, manifest_off, manifest_len, manifest_crc, pages_off, pages_len }
    }

    /// The layout of a live move's assembled image: page data at [`FAR_PAGES_OFF`].
    pub fn layout_far(manifest_len: u64, manifest_crc: u32, pages_len: u64) -> Header {
        Header { pages_off: FAR_PAGES_OFF, ..Header::layout(manifest_len, manifest_crc, pages_len) }
    }

    /// Whether the page data lies at [`FAR_PAGES_OFF`], its runs placed by the sender.
    pub fn is_sparse(&self) -> bool {
        self.pages_off == FAR_PAGES_OFF
    }

    /// Offset where the trailer starts.
    pub fn trailer_off(&self) -> u64 {
        self.pages_off + self.pages_len
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_off.to_le_bytes());
        b[24..32].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.manifest_crc.to_le_bytes());
        b[40..48].copy_from_slice(&self.pages_off.to_le_bytes());
        b[48..56].copy_from_slice(&self.pages_len.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header.
    pub fn from_bytes(b: &[u8]) -> Result<Header, ImageError> {
        if b.len() < 8 || b[0..8] != MAGIC {
            return Err(ImageError::Foreign);
        }
        if b.len() < HEADER_LEN as usize {
            return Err(ImageError::Truncated("the header is incomplete".into()));
        }
        if crc32fast::hash(&b[0..60]) != le_u32(b, 60) {
            return Err(ImageError::Corrupted("header checksum mismatch".into()));
        }
        let version = le_u32(b, 8);
        if version > VERSION {
            return Err(ImageError::TooNew(version));
        }
        if version < MIN_VERSION {
            return Err(ImageError::TooOld(version));
        }
        if le_u32(b, 12) as u64 != HEADER_LEN {
            return Err(ImageError::Corrupted(format!("bad header (version {version})")));
        }
        let h = Header {
            version,
            manifest_off: le_u64(b, 16),
            manifest_len: le_u64(b, 24),
            manifest_crc: le_u32(b, 32),
            pages_off: le_u64(b, 40),
            pages_len: le_u64(b, 48),
        };
        if h.manifest_off != HEADER_LEN
            || h.manifest_len > MAX_MANIFEST
            || (h.pages_off != Header::layout(h.manifest_len, 0, 0).pages_off && h.pages_off != FAR_PAGES_OFF)
            || !h.pages_len.is_multiple_of(PAGE)
            || h.pages_off.checked_add(h.pages_len).is_none()
        {
            return Err(ImageError::Corrupted("header fields out of range".into()));
        }
        Ok(h)
    }
}

/// The fixed footer in the last [`FOOTER_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub trailer_off: u64,
    pub trailer_len: u64,
    pub trailer_crc: u32,
}

impl Footer {
    /// Total length of an image whose trailer has this placement (`u64::MAX` for a placement
    /// past 2^64, which no file matches: a hostile footer must not overflow).
    pub fn total_len(&self) -> u64 {
        self.trailer_off.saturating_add(self.trailer_len).saturating_add(FOOTER_LEN)
    }

    pub fn to_bytes(&self) -> [u8; FOOTER_LEN as usize] {
        let mut b = [0u8; FOOTER_LEN as usize];
        b[0..8].copy_from_slice(&self.trailer_off.to_le_bytes());
        b[8..16].copy_from_slice(&self.trailer_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.trailer_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b[24..32].copy_from_slice(&END_MAGIC);
        b
    }

    /// Parses the footer; `None` if it is not one (an incomplete image).
    pub fn from_bytes(b: &[u8]) -> Option<Footer> {
        if b.len() != FOOTER_LEN as usize || b[24..32] != END_MAGIC || crc32fast::hash(&b[0..20]) != le_u32(b, 20) {
            return None;
        }
        Some(Footer { trailer_off: le_u64(b, 0), trailer_len: le_u64(b, 8), trailer_crc: le_u32(b, 16) })
    }
}

/// What follows the pages: their checksums, known only once they are written.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trailer {
    /// crc32 of each page run, in the order of `Manifest::runs()`.
    pub run_crcs: Vec<u32>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_MANIFEST as usize }>()
}

/// Encodes a serde value the way images do.
pub fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ImageError> {
    bincode::serde::encode_to_vec(v, config()).map_err(|e| ImageError::Encode(e.to_string()))
}

/// Decodes `b` with bincode's limit on claimed lengths set to the next power of two at least
/// twice `b`'s length (4 KiB at least): a length field cannot make the decoder allocate more
/// than the bytes could hold (bincode reserves a string's claimed length before reading it).
fn decode_bounded<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<(T, usize), bincode::error::DecodeError> {
    let log2 = (b.len().max(2048) * 2).next_power_of_two().trailing_zeros();
    macro_rules! limits {
        ($($n:literal)*) => {
            match log2 {
                $($n => bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<{ 1usize << $n }>()),)*
                _ => bincode::serde::decode_from_slice(b, config()),
            }
        };
    }
    limits!(12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29)
}

/// Decodes a serde value the way images do; the whole slice must be used.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, ImageError> {
    let (v, used) = decode_bounded(b).map_err(|e| ImageError::Corrupted(format!("cannot decode the {what}: {e}")))?;
    if used != b.len() {
        return Err(ImageError::Corrupted(format!("the {what} has {} unexpected trailing bytes", b.len() - used)));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trip_and_alignment() {
        let h = Header::layout(1234, 99, 8 * PAGE);
        assert_eq!(h.pages_off % PAGE, 0);
        assert!(h.pages_off >= HEADER_LEN + 1234);
        assert_eq!(Header::from_bytes(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn header_refuses_foreign_newer_and_flipped() {
        let h = Header::layout(10, 1, 0);
        let mut b = h.to_bytes();
        b[0] = b'X';
        assert!(matches!(Header::from_bytes(&b), Err(ImageError::Foreign)));
        let mut b = h.to_bytes();
        b[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(Header::from_bytes(&b), Err(ImageError::TooNew(_))));
        let mut b = h.to_bytes();
        b[30] ^= 1;
        assert!(matches!(Header::from_bytes(&b), Err(ImageError::Corrupted(_))));
    }

    #[test]
    fn footer_round_trip() {
        let f = Footer { trailer_off: 8192, trailer_len: 17, trailer_crc: 5 };
        assert_eq!(Footer::from_bytes(&f.to_bytes()), Some(f));
        let mut b = f.to_bytes();
        b[3] ^= 0x10;
        assert_eq!(Footer::from_bytes(&b), None);
    }

    proptest! {
        #[test]
        fn header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Header::from_bytes(&bytes);
        }

        #[test]
        fn manifest_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Manifest>(&bytes, "manifest");
        }

        #[test]
        fn header_round_trips(ml in 0u64..MAX_MANIFEST, crc in any::<u32>(), pages in 0u64..(1 << 30)) {
            let h = Header::layout(ml, crc, pages * PAGE);
            prop_assert_eq!(Header::from_bytes(&h.to_bytes()).unwrap(), h);
        }
    }
}
