//! Reading and verifying an image file, front to back, before anything acts on it.
//!
//! A file holds one image, or a process tree: the images of the tree's other processes, one
//! after another (each page aligned and complete), then the root's image, whose footer ends
//! the file and whose manifest lists the others (`Manifest::tree`). A single process's image
//! is the tree of one.

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
    /// Length of this image (for a tree's root: of the whole file).
    pub file_len: u64,
    /// Where this image starts in the file (its header's offsets are relative to this).
    pub base: u64,
    /// The tree's other processes, verified too (only in the root's).
    pub members: Vec<VerifiedMember>,
}

/// A process of the tree other than the root.
#[derive(Debug)]
pub struct VerifiedMember {
    pub state: crate::MemberState,
    /// Its image, for a live process; `None` for a zombie.
    pub image: Option<VerifiedImage>,
}

impl VerifiedImage {
    /// Every process of the tree, the root first: `(pid, image)`, live ones only.
    pub fn processes(&self) -> impl Iterator<Item = (i32, &VerifiedImage)> {
        core::iter::once((self.manifest.process.pid, self))
            .chain(self.members.iter().filter_map(|m| m.image.as_ref().map(|i| (m.state.pid, i))))
    }
}

fn read_at(f: &mut impl ReadSeek, off: u64, len: u64) -> Result<Vec<u8>, ImageError> {
    f.seek(SeekFrom::Start(off))?;
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v)?;
    Ok(v)
}

/// Opens, parses and fully verifies the image at `path` (every checksum, every bound), and
/// for a process tree every member's image and the tree's consistency.
pub fn verify_file(path: &Path) -> Result<VerifiedImage, ImageError> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    verify(&mut f, file_len)
}

/// How much of the page data a verification reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// Every page run's checksum is checked.
    All,
    /// Runs of regions a lazy restore leaves to its pager
    /// ([`crate::RegionState::is_lazy_candidate`]) are not read: the pager checks each run's
    /// checksum before it puts the run in place. Everything else is checked.
    NotLazy,
    /// No page data is read: the caller checks the runs' checksums its own way (a live move's
    /// receiver, from the checksums of the pages as they arrived: `crate::crc`).
    Unread,
}

/// [`verify_file`], reading only the page data `pages` says.
pub fn verify_file_pages(path: &Path, pages: Pages) -> Result<VerifiedImage, ImageError> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    verify_with(&mut f, file_len, pages)
}

/// What an image is read from: a file, or bytes in memory.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Parses and fully verifies the image held in `bytes`.
pub fn verify_bytes(bytes: &[u8]) -> Result<VerifiedImage, ImageError> {
    verify(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// Parses and fully verifies the image (or tree) of `file_len` bytes that `f` reads.
pub fn verify(f: &mut impl ReadSeek, file_len: u64) -> Result<VerifiedImage, ImageError> {
    verify_with(f, file_len, Pages::All)
}

/// [`verify`], reading only the page data `pages` says.
pub fn verify_with(f: &mut impl ReadSeek, file_len: u64, pages: Pages) -> Result<VerifiedImage, ImageError> {
    let mut f = f;
    if file_len == 0 {
        return Err(ImageError::Truncated("the file is empty".into()));
    }
    if file_len < HEADER_LEN + FOOTER_LEN {
        let head = read_at(&mut f, 0, file_len.min(HEADER_LEN))?;
        Header::from_bytes(&head)?;
        return Err(ImageError::Truncated(format!("only {file_len} bytes")));
    }
    let footer = Footer::from_bytes(&read_at(&mut f, file_len - FOOTER_LEN, FOOTER_LEN)?).ok_or_else(|| {
        // A foreign file says so rather than "truncated".
        match read_at(&mut f, 0, HEADER_LEN).map(|h| Header::from_bytes(&h)) {
            Ok(Err(ImageError::Foreign)) => ImageError::Foreign,
            _ => ImageError::Truncated(format!(
                "no end marker in its last {FOOTER_LEN} bytes ({file_len} bytes in all): the checkpoint was interrupted or the file was cut short"
            )),
        }
    })?;
    if footer.total_len() > file_len || footer.total_len() < HEADER_LEN + FOOTER_LEN {
        return Err(ImageError::Truncated(format!(
            "the end marker says {} bytes, the file has {file_len}",
            footer.total_len()
        )));
    }
    let base = file_len - footer.total_len();
    let mut root = verify_at(&mut f, base, footer.total_len(), pages)?;
    root.file_len = file_len;
    // A file with bytes before the root's image must be a tree whose members fill them.
    if root.manifest.tree.is_empty() && base != 0 {
        return Err(ImageError::Truncated(format!(
            "the end marker says {} bytes, the file has {file_len}",
            footer.total_len()
        )));
    }
    root.members = verify_tree(&mut f, &root.manifest, base, pages)?;
    Ok(root)
}

/// The members of a tree: each image verified in its window, and the table consistent (one
/// pid each, parents in the tree — or 0, a live process that left it (daemonized, now the
/// child of init) —, windows inside the file before the root and disjoint).
fn verify_tree(f: &mut impl ReadSeek, m: &Manifest, root_base: u64, pages: Pages) -> Result<Vec<VerifiedMember>, ImageError> {
    let bad = |what: String| Err(ImageError::Corrupted(what));
    let root_pid = m.process.pid;
    let mut pids = vec![root_pid];
    let mut windows: Vec<(u64, u64)> = Vec::new();
    for t in &m.tree {
        if t.pid <= 0 || pids.contains(&t.pid) {
            return bad(format!("the process table names pid {} twice", t.pid));
        }
        pids.push(t.pid);
    }
    for t in &m.tree {
        let orphan = t.ppid == 0 && matches!(t.state, crate::MemberKind::Live { .. });
        if !(orphan || pids.contains(&t.ppid)) || t.ppid == t.pid {
            return bad(format!("process {} has a parent ({}) that is not in the image", t.pid, t.ppid));
        }
        if let crate::MemberKind::Live { offset, len } = t.state {
            let end = offset.checked_add(len);
            if offset % PAGE != 0 || len < HEADER_LEN + FOOTER_LEN || end.is_none_or(|e| e > root_base) {
                return bad(format!("the image of process {} lies outside the file", t.pid));
            }
            if windows.iter().any(|&(o, l)| offset < o + l && o < offset + len) {
                return bad(format!("the image of process {} overlaps another", t.pid));
            }
            windows.push((offset, len));
        }
    }
    let mut out = Vec::with_capacity(m.tree.len());
    for t in &m.tree {
        let image = match t.state {
            crate::MemberKind::Live { offset, len } => {
                let img = verify_at(f, offset, len, pages).map_err(|e| match e {
                    ImageError::Corrupted(w) | ImageError::Truncated(w) => {
                        ImageError::Corrupted(format!("process {} of the tree: {w}", t.pid))
                    }
                    other => other,
                })?;
                if img.manifest.process.pid != t.pid || !img.manifest.tree.is_empty() {
                    return bad(format!("the image at offset {offset} is not process {}'s", t.pid));
                }
                Some(img)
            }
            crate::MemberKind::Zombie { .. } => None,
            crate::MemberKind::Unknown => return bad(format!("process {} of the tree has no state", t.pid)),
        };
        out.push(VerifiedMember { state: t.clone(), image });
    }
    Ok(out)
}

/// Verifies the one image that is `len` bytes at `base` in `f`.
fn verify_at(f: &mut impl ReadSeek, base: u64, len: u64, pages: Pages) -> Result<VerifiedImage, ImageError> {
    let head = read_at(f, base, len.min(HEADER_LEN))?;
    let header = Header::from_bytes(&head)?;
    let footer = Footer::from_bytes(&read_at(f, base + len - FOOTER_LEN, FOOTER_LEN)?)
        .ok_or_else(|| ImageError::Truncated("an image in the file has no end marker".into()))?;
    if footer.total_len() != len {
        return Err(ImageError::Truncated(format!("the end marker says {} bytes, the image has {len}", footer.total_len())));
    }
    if footer.trailer_off != header.trailer_off() || header.pages_off + header.pages_len > len {
        return Err(ImageError::Corrupted("header and end marker disagree on the layout".into()));
    }

    let manifest_bytes = read_at(f, base + header.manifest_off, header.manifest_len)?;
    if crc32fast::hash(&manifest_bytes) != header.manifest_crc {
        return Err(ImageError::Corrupted("manifest checksum mismatch".into()));
    }
    let manifest: Manifest = decode(&manifest_bytes, "manifest")?;

    let trailer_bytes = read_at(f, base + footer.trailer_off, footer.trailer_len)?;
    if crc32fast::hash(&trailer_bytes) != footer.trailer_crc {
        return Err(ImageError::Corrupted("trailer checksum mismatch".into()));
    }
    let trailer: Trailer = decode(&trailer_bytes, "trailer")?;

    check_layout(&header, &manifest, &trailer)?;
    check_pages(f, base, &header, &manifest, &trailer, pages)?;
    Ok(VerifiedImage { header, footer, manifest, manifest_bytes, trailer, file_len: len, base, members: Vec::new() })
}

/// Regions sorted and disjoint, runs inside their regions and inside the page data, in order.
fn check_layout(h: &Header, m: &Manifest, t: &Trailer) -> Result<(), ImageError> {
    let bad = |what: String| Err(ImageError::Corrupted(what));
    let mut prev_end = 0u64;
    let mut next_off = 0u64;
    let mut n_runs = 0usize;
    let mut placed: Vec<(u64, u64)> = Vec::new();
    for f in &m.files {
        if let crate::FileKind::Deleted { content, .. } | crate::FileKind::Memfd { content, .. } = &f.kind {
            if !content.is_sound() {
                return bad(format!("a saved file's extents ({} of them, size {}) overlap or lie beyond its size", content.extents.len(), content.size));
            }
        }
    }
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
            if h.is_sparse() {
                if run.data_off % PAGE != 0 || run.data_off.checked_add(run.len).is_none_or(|e| e > h.pages_len) {
                    return bad(format!("page run at {:#x} lies outside the page data", run.addr));
                }
                placed.push((run.data_off, run.len));
            } else if run.data_off != next_off {
                return bad(format!("page run at {:#x} is not where the layout puts it", run.addr));
            }
            next_off += run.len;
        }
    }
    if h.is_sparse() {
        // Placed by the sender: no two runs may share page data.
        placed.sort_unstable();
        if placed.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return bad("two page runs share page data".into());
        }
    } else if next_off != h.pages_len {
        return bad("page data length does not match the runs".into());
    }
    if n_runs != t.run_crcs.len() {
        return bad(format!("{} page runs but {} checksums", n_runs, t.run_crcs.len()));
    }
    Ok(())
}

fn check_pages(f: &mut impl ReadSeek, base: u64, hd: &Header, m: &Manifest, t: &Trailer, pages: Pages) -> Result<(), ImageError> {
    let mut buf = vec![0u8; 1 << 20];
    let runs = m.regions.iter().flat_map(|r| r.runs.iter().map(move |run| (r, run)));
    for ((r, run), &want) in runs.zip(&t.run_crcs) {
        if pages == Pages::Unread || (pages == Pages::NotLazy && r.is_lazy_candidate()) {
            continue;
        }
        f.seek(SeekFrom::Start(base + hd.pages_off + run.data_off))?;
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
                base + hd.pages_off + run.data_off
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, MemberKind, MemberState};

    /// A complete image of a process with pid `pid` and no pages.
    fn image(pid: i32, tree: Vec<MemberState>) -> Vec<u8> {
        let mut m = Manifest::default();
        m.process.pid = pid;
        m.tree = tree;
        let mb = encode(&m).unwrap();
        let h = Header::layout(mb.len() as u64, crc32fast::hash(&mb), 0);
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&mb);
        out.resize(h.pages_off as usize, 0);
        let t = encode(&Trailer { run_crcs: Vec::new() }).unwrap();
        let footer = Footer { trailer_off: h.trailer_off(), trailer_len: t.len() as u64, trailer_crc: crc32fast::hash(&t) };
        out.extend_from_slice(&t);
        out.extend_from_slice(&footer.to_bytes());
        out
    }

    fn member(pid: i32, ppid: i32, state: MemberKind) -> MemberState {
        MemberState { pid, ppid, pgid: ppid, sid: ppid, comm: format!("p{pid}"), state }
    }

    /// Members' images, then the root's with the table `table(offsets)`.
    fn tree_file(members: &[i32], table: impl Fn(&[(u64, u64)]) -> Vec<MemberState>) -> Vec<u8> {
        let mut file = Vec::new();
        let mut at = Vec::new();
        for &pid in members {
            let img = image(pid, Vec::new());
            at.push((file.len() as u64, img.len() as u64));
            file.extend_from_slice(&img);
            file.resize(file.len().div_ceil(4096) * 4096, 0);
        }
        file.extend_from_slice(&image(100, table(&at)));
        file
    }

    fn verify(bytes: &[u8]) -> Result<VerifiedImage, ImageError> {
        let dir = std::env::temp_dir().join(format!("pmig-tree-test-{}-{}", std::process::id(), crc32fast::hash(bytes)));
        std::fs::write(&dir, bytes).unwrap();
        let r = verify_file(&dir);
        let _ = std::fs::remove_file(&dir);
        r
    }

    #[test]
    fn a_consistent_tree_verifies() {
        let f = tree_file(&[101, 102], |at| {
            vec![
                member(101, 100, MemberKind::Live { offset: at[0].0, len: at[0].1 }),
                member(102, 101, MemberKind::Live { offset: at[1].0, len: at[1].1 }),
                member(103, 100, MemberKind::Zombie { status: 7 << 8 }),
            ]
        });
        let v = verify(&f).unwrap();
        assert_eq!(v.members.len(), 3);
        // A live process that left the tree's parentage (parent 0) belongs to it.
        let f = tree_file(&[101], |at| vec![member(101, 0, MemberKind::Live { offset: at[0].0, len: at[0].1 })]);
        assert_eq!(verify(&f).unwrap().members[0].state.ppid, 0);
        assert_eq!(v.processes().map(|(p, _)| p).collect::<Vec<_>>(), vec![100, 101, 102]);
        let base = v.members[1].image.as_ref().unwrap().base;
        assert!(base > 0 && base.is_multiple_of(4096), "member images start on page boundaries: {base}");
    }

    #[test]
    fn inconsistent_trees_are_refused() {
        let live = |pid, ppid, at: (u64, u64)| member(pid, ppid, MemberKind::Live { offset: at.0, len: at.1 });
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("twice", tree_file(&[101, 102], |at| vec![live(101, 100, at[0]), live(101, 100, at[1])])),
            ("not in the image", tree_file(&[101], |at| vec![live(101, 99, at[0])])),
            ("overlaps", tree_file(&[101, 102], |at| vec![live(101, 100, at[0]), live(102, 100, (at[0].0, at[1].1))])),
            ("outside", tree_file(&[101], |at| vec![live(101, 100, (at[0].0, at[0].1 + (1 << 20)))])),
            ("is not process", tree_file(&[101], |at| vec![live(105, 100, at[0])])),
            ("pid 100 twice", tree_file(&[], |_| vec![member(100, 100, MemberKind::Zombie { status: 0 })])),
            ("not in the image", tree_file(&[], |_| vec![member(104, 0, MemberKind::Zombie { status: 0 })])),
        ];
        for (want, f) in cases {
            match verify(&f) {
                Err(ImageError::Corrupted(why)) => assert!(why.contains(want.split(' ').next().unwrap()) || why.contains(want), "{want}: {why}"),
                other => panic!("{want}: expected a refusal, got {:?}", other.map(|v| v.members.len())),
            }
        }
        // Bytes before a single process's image are not a tree.
        let mut f = vec![0u8; 4096];
        f.extend_from_slice(&image(100, Vec::new()));
        assert!(matches!(verify(&f), Err(ImageError::Truncated(_))));
    }
}
