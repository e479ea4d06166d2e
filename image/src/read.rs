//! Reading and verifying an image file, front to back, before anything acts on it.

use crate::{decode, Footer, Header, ImageError, Manifest, Trailer, FOOTER_LEN, HEADER_LEN, PAGE};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// An image whose structure and checksums have all been checked.
#[derive(Debug)]
pub struct VerifiedImage {
    pub header: Header,
    pub footer: Footer,
    pub manifest: Manifest,
    /// The manifest exactly as stored (handed on to the restored process).
    pub manifest_bytes: Vec<u8>,
    pub trailer: Trailer,
    pub file_len: u64,
}

fn read_at(f: &mut impl ReadSeek, off: u64, len: u64) -> Result<Vec<u8>, ImageError> {
    f.seek(SeekFrom::Start(off))?;
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v)?;
    Ok(v)
}

/// What an image is read from: a file, or bytes in memory.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Opens, parses and fully verifies the image at `path` (every checksum, every bound).
pub fn verify_file(path: &Path) -> Result<VerifiedImage, ImageError> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    verify(&mut f, file_len)
}

/// Parses and fully verifies the image held in `bytes`.
pub fn verify_bytes(bytes: &[u8]) -> Result<VerifiedImage, ImageError> {
    verify(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// Parses and fully verifies the image of `file_len` bytes that `f` reads.
pub fn verify(f: &mut impl ReadSeek, file_len: u64) -> Result<VerifiedImage, ImageError> {
    let mut f = f;
    if file_len == 0 {
        return Err(ImageError::Truncated("the file is empty".into()));
    }
    let head = read_at(&mut f, 0, file_len.min(HEADER_LEN))?;
    let header = Header::from_bytes(&head)?;
    if file_len < HEADER_LEN + FOOTER_LEN {
        return Err(ImageError::Truncated(format!("only {file_len} bytes")));
    }
    let footer = Footer::from_bytes(&read_at(&mut f, file_len - FOOTER_LEN, FOOTER_LEN)?).ok_or_else(|| {
        ImageError::Truncated(format!(
            "no end marker in its last {FOOTER_LEN} bytes ({file_len} bytes in all): the checkpoint was interrupted or the file was cut short"
        ))
    })?;
    if footer.total_len() != file_len {
        return Err(ImageError::Truncated(format!(
            "the end marker says {} bytes, the file has {file_len}",
            footer.total_len()
        )));
    }
    if footer.trailer_off != header.trailer_off() || header.pages_off + header.pages_len > file_len {
        return Err(ImageError::Corrupted("header and end marker disagree on the layout".into()));
    }

    let manifest_bytes = read_at(&mut f, header.manifest_off, header.manifest_len)?;
    if crc32fast::hash(&manifest_bytes) != header.manifest_crc {
        return Err(ImageError::Corrupted("manifest checksum mismatch".into()));
    }
    let manifest: Manifest = decode(&manifest_bytes, "manifest")?;

    let trailer_bytes = read_at(&mut f, footer.trailer_off, footer.trailer_len)?;
    if crc32fast::hash(&trailer_bytes) != footer.trailer_crc {
        return Err(ImageError::Corrupted("trailer checksum mismatch".into()));
    }
    let trailer: Trailer = decode(&trailer_bytes, "trailer")?;

    check_layout(&header, &manifest, &trailer)?;
    check_pages(&mut f, &header, &manifest, &trailer)?;
    Ok(VerifiedImage { header, footer, manifest, manifest_bytes, trailer, file_len })
}

/// Regions sorted and disjoint, runs inside their regions and inside the page data, in order.
fn check_layout(h: &Header, m: &Manifest, t: &Trailer) -> Result<(), ImageError> {
    let bad = |what: String| Err(ImageError::Corrupted(what));
    let mut prev_end = 0u64;
    let mut next_off = 0u64;
    let mut n_runs = 0usize;
    for r in &m.regions {
        if r.start % PAGE != 0 || r.end % PAGE != 0 || r.start >= r.end || r.start < prev_end {
            return bad(format!("region {:#x}-{:#x} is misplaced", r.start, r.end));
        }
        prev_end = r.end;
        if let crate::RegionKind::SharedObject { object, .. } = r.kind {
            if object as usize >= m.objects.len() {
                return bad(format!("region {:#x} maps a shared object the image does not have", r.start));
            }
        }
        for run in &r.runs {
            n_runs += 1;
            let end = run.addr.checked_add(run.len);
            if run.len == 0 || run.len % PAGE != 0 || run.addr < r.start || end.is_none_or(|e| e > r.end) {
                return bad(format!("page run at {:#x} lies outside its region", run.addr));
            }
            if run.data_off != next_off {
                return bad(format!("page run at {:#x} is not where the layout puts it", run.addr));
            }
            next_off += run.len;
        }
    }
    if next_off != h.pages_len {
        return bad("page data length does not match the runs".into());
    }
    if n_runs != t.run_crcs.len() {
        return bad(format!("{} page runs but {} checksums", n_runs, t.run_crcs.len()));
    }
    Ok(())
}

fn check_pages(f: &mut impl ReadSeek, hd: &Header, m: &Manifest, t: &Trailer) -> Result<(), ImageError> {
    let mut buf = vec![0u8; 1 << 20];
    for (run, &want) in m.runs().zip(&t.run_crcs) {
        f.seek(SeekFrom::Start(hd.pages_off + run.data_off))?;
        let mut h = crc32fast::Hasher::new();
        let mut left = run.len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        if h.finalize() != want {
            return Err(ImageError::Corrupted(format!(
                "checksum mismatch in the saved pages at {:#x} ({} bytes at file offset {})",
                run.addr,
                run.len,
                hd.pages_off + run.data_off
            )));
        }
    }
    Ok(())
}
