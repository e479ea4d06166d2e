//! An offline mutation fuzzer for the two fuzz targets (`pmig_image::fuzz::{image, wire}`),
//! run by the test suite for a bounded time: `PMIG_FUZZ_SECS` per target (default 6),
//! `PMIG_FUZZ_SEED` to replay a run (the seed is printed when a run fails).
//!
//! Inputs are structure-aware mutations of valid samples: bit flips, interesting values in
//! length and offset fields, truncations, duplicated, dropped and inserted chunks; for images
//! also mutations with every checksum made right again (so they reach the manifest decoder and
//! the layout checks), and manifests and trailers mutated and laid out again; for streams,
//! frame headers, LZ4 length prefixes and blocks, and frames dropped or repeated. Each input
//! must be refused or mean exactly what the sample meant (shallow mutations, which checksums
//! guard) or pass the image's invariants (deep ones); none may panic, take more than a few
//! seconds, or allocate more than [`MAX_ALLOC`] at once (a counting allocator watches).

use pmig_image::fuzz::{self, sample_image, sample_stream};
use pmig_image::{decode, encode, Footer, Header, Manifest, VerifiedImage, FOOTER_LEN, HEADER_LEN, PAGE};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The largest single allocation an input may cause.
const MAX_ALLOC: usize = 256 << 20;
/// The longest an input may take.
const SLOW: Duration = Duration::from_secs(3);

static BIGGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, refusing (and noting) allocations over [`MAX_ALLOC`].
struct Watch;

// SAFETY: every call is passed on to `System` unchanged, except over-large requests, which
// are answered with null (an allocation failure, which `GlobalAlloc` allows).
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BIGGEST.fetch_max(l.size(), Ordering::Relaxed);
        if l.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with layout `l` (null is never handed out).
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BIGGEST.fetch_max(new, Ordering::Relaxed);
        if new > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Watch = Watch;

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// A value that breaks length and offset checks.
    fn interesting(&mut self, near: u64) -> u64 {
        const V: [u64; 12] = [0, 1, 2, 7, 8, 63, 64, 4095, 4096, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000_0000_0000];
        match self.below(4) {
            0 => V[self.below(V.len())],
            1 => u64::MAX - self.below(64) as u64,
            2 => near.wrapping_add(self.below(9) as u64).wrapping_sub(4),
            _ => self.next() >> self.below(64),
        }
    }
}

/// One byte-level mutation of `b`; `fields` are offsets of length fields (`(offset, width)`).
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>, fields: &[(usize, usize)]) {
    let len = b.len();
    match rng.below(8) {
        0 if len > 0 => {
            let at = rng.below(len);
            b[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            b[at] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
        }
        2 if !fields.is_empty() => {
            let (at, w) = fields[rng.below(fields.len())];
            if at + w <= len {
                let mut cur = [0u8; 8];
                cur[..w].copy_from_slice(&b[at..at + w]);
                let v = rng.interesting(u64::from_le_bytes(cur)).to_le_bytes();
                b[at..at + w].copy_from_slice(&v[..w]);
            }
        }
        3 => b.truncate(rng.below(len + 1)),
        4 if len > 0 => {
            let at = rng.below(len);
            let n = rng.below((len - at).min(4096) + 1);
            let chunk = b[at..at + n].to_vec();
            let to = rng.below(len + 1);
            b.splice(to..to, chunk);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let n = rng.below((len - at).min(4096) + 1);
            b.drain(at..at + n);
        }
        6 => {
            let to = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            b.splice(to..to, junk);
        }
        _ if len > 0 => {
            // Several flips at once.
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(len);
                b[at] ^= rng.next() as u8;
            }
        }
        _ => {}
    }
}

fn crc(b: &[u8]) -> u32 {
    // crc32fast is pmig-image's; the same CRC-32 (IEEE) is small enough to do here.
    let mut c = !0u32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// Makes the checksums of a mutated image right again where its layout can be read.
fn fix_checksums(b: &mut [u8]) {
    let n = b.len();
    if n < HEADER_LEN as usize + FOOTER_LEN as usize {
        return;
    }
    let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let (moff, mlen) = (le64(b, 16), le64(b, 24));
    if let Some(end) = moff.checked_add(mlen).filter(|&e| e <= n as u64) {
        let c = crc(&b[moff as usize..end as usize]);
        b[32..36].copy_from_slice(&c.to_le_bytes());
    }
    let c = crc(&b[0..60]);
    b[60..64].copy_from_slice(&c.to_le_bytes());
    let f = n - FOOTER_LEN as usize;
    let (toff, tlen) = (le64(b, f), le64(b, f + 8));
    if let Some(end) = toff.checked_add(tlen).filter(|&e| e <= n as u64) {
        let c = crc(&b[toff as usize..end as usize]);
        b[f + 16..f + 20].copy_from_slice(&c.to_le_bytes());
    }
    let c = crc(&b[f..f + 20]);
    b[f + 20..f + 24].copy_from_slice(&c.to_le_bytes());
}

/// Lays out an image again with other manifest or trailer bytes (same pages).
fn relayout(orig: &VerifiedImage, img: &[u8], manifest: &[u8], trailer: &[u8]) -> Vec<u8> {
    let pages = &img[orig.header.pages_off as usize..(orig.header.pages_off + orig.header.pages_len) as usize];
    let h = Header::layout(manifest.len() as u64, crc(manifest), pages.len() as u64);
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(manifest);
    out.resize(h.pages_off as usize, 0);
    out.extend_from_slice(pages);
    let f = Footer { trailer_off: out.len() as u64, trailer_len: trailer.len() as u64, trailer_crc: crc(trailer) };
    out.extend_from_slice(trailer);
    out.extend_from_slice(&f.to_bytes());
    out
}

/// The offsets of the image's length and offset fields.
fn image_fields(len: usize) -> Vec<(usize, usize)> {
    let mut f = vec![(8, 4), (12, 4), (16, 8), (24, 8), (32, 4), (40, 8), (48, 8), (60, 4)];
    if len >= FOOTER_LEN as usize {
        let e = len - FOOTER_LEN as usize;
        f.extend([(e, 8), (e + 8, 8), (e + 16, 4), (e + 20, 4)]);
    }
    f
}

/// The bytes of each page run, as `img` holds them.
fn pages_of(v: &VerifiedImage, img: &[u8]) -> Vec<Vec<u8>> {
    v.manifest.runs().map(|r| img[(v.header.pages_off + r.data_off) as usize..][..r.len as usize].to_vec()).collect()
}

/// What an accepted image must satisfy whatever its bytes.
fn check_invariants(v: &VerifiedImage, input: &[u8]) -> Result<(), String> {
    let again: Manifest = decode(&encode(&v.manifest).map_err(|e| e.to_string())?, "manifest").map_err(|e| e.to_string())?;
    if again != v.manifest {
        return Err("the accepted manifest does not survive encode/decode".into());
    }
    if v.file_len != input.len() as u64 || v.trailer.run_crcs.len() != v.manifest.runs().count() {
        return Err("accepted with a length or run count that does not add up".into());
    }
    for r in v.manifest.runs() {
        let end = v.header.pages_off.checked_add(r.data_off).and_then(|o| o.checked_add(r.len));
        if end.is_none_or(|e| e > input.len() as u64) || r.len % PAGE != 0 {
            return Err(format!("accepted a page run outside the file: {r:?}"));
        }
    }
    let _ = pmig_image::describe(&v.manifest, v.file_len, &[]);
    Ok(())
}

/// Runs `one` on inputs from `make` for the configured time; saves and reports a failing input.
fn run(name: &str, mut make: impl FnMut(&mut Rng) -> (Vec<u8>, bool), one: impl Fn(&[u8], bool) -> Result<(), String>) {
    let secs: f64 = std::env::var("PMIG_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6.0);
    let seed: u64 = std::env::var("PMIG_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0000 + name.len() as u64);
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let (input, deep) = make(&mut rng);
        BIGGEST.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&input, deep))).unwrap_or_else(|p| {
            Err(format!("panicked: {}", p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()))
        });
        let took = t.elapsed();
        let got = got.and_then(|()| match (took > SLOW, BIGGEST.load(Ordering::Relaxed)) {
            (true, _) => Err(format!("took {took:?}")),
            (_, big) if big > MAX_ALLOC => Err(format!("asked for {big} bytes at once")),
            _ => Ok(()),
        });
        if let Err(why) = got {
            let path = std::env::temp_dir().join(format!("pmig-fuzz-{name}-{seed}-{n}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!("{name} input {n} (PMIG_FUZZ_SEED={seed}, deep: {deep}): {why}; the input is in {}", path.display());
        }
        n += 1;
    }
    eprintln!("{name}: {n} inputs in {:.1?}, seed {seed}", start.elapsed());
    assert!(n > 100, "the fuzzer ran too few inputs ({n}) to mean anything");
}

#[test]
fn fuzz_the_image_decoder() {
    let img = sample_image();
    let orig = fuzz::image(&img).expect("the sample verifies");
    let orig_pages = pages_of(&orig, &img);
    let trailer_bytes = encode(&orig.trailer).unwrap();
    let fields = image_fields(img.len());
    run(
        "image",
        |rng| {
            let mut b = img.clone();
            let deep = match rng.below(4) {
                0 => false,
                1 => true,
                2 => {
                    let mut m = orig.manifest_bytes.clone();
                    for _ in 0..1 + rng.below(3) {
                        mutate_bytes(rng, &mut m, &[]);
                    }
                    b = relayout(&orig, &img, &m, &trailer_bytes);
                    true
                }
                _ => {
                    let mut t = trailer_bytes.clone();
                    mutate_bytes(rng, &mut t, &[]);
                    b = relayout(&orig, &img, &orig.manifest_bytes, &t);
                    true
                }
            };
            if rng.below(4) < 2 {
                for _ in 0..1 + rng.below(3) {
                    mutate_bytes(rng, &mut b, &fields);
                }
            }
            if deep {
                fix_checksums(&mut b);
            }
            (b, deep)
        },
        |input, deep| {
            let Some(v) = fuzz::image(input) else { return Ok(()) };
            check_invariants(&v, input)?;
            if !deep && (v.manifest != orig.manifest || v.trailer != orig.trailer || pages_of(&v, input) != orig_pages) {
                return Err("a corrupted image was accepted with another meaning".into());
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_the_wire_protocol() {
    let img = sample_image();
    let orig = fuzz::image(&img).expect("the sample verifies");
    let orig_pages = pages_of(&orig, &img);
    let streams: Vec<Vec<u8>> = [(false, 5000), (true, 3000), (true, 40000)].iter().map(|&(lz4, f)| sample_stream(&img, lz4, f)).collect();
    run(
        "wire",
        |rng| {
            let s = &streams[rng.below(streams.len())];
            // Where the frames' headers and LZ4 prefixes are, and the FILES count.
            let mut fields = vec![(pmig_image::wire::AUTH_LEN - 68, 4), (pmig_image::wire::AUTH_LEN, 4)];
            let mut at = pmig_image::wire::AUTH_LEN + 4;
            for _ in 0..2 {
                fields.push((at, 2));
                at += 2 + u16::from_le_bytes([s[at], s[at + 1]]) as usize + 8 + 32 + 1;
            }
            let mut frames = Vec::new();
            while at + 5 <= s.len() {
                let len = u32::from_le_bytes(s[at + 1..at + 5].try_into().unwrap()) as usize;
                fields.extend([(at, 1), (at + 1, 4)]);
                if s[at] == pmig_image::wire::frame::LZ4 {
                    fields.push((at + 5, 4));
                }
                frames.push(at..at + 5 + len);
                at += 5 + len;
            }
            let mut b = s.clone();
            let deep = rng.chance(4);
            if deep {
                // An image mutated with its checksums right, framed as a sender would.
                let mut i = img.clone();
                mutate_bytes(rng, &mut i, &image_fields(img.len()));
                fix_checksums(&mut i);
                b = sample_stream(&i, rng.chance(2), 1 + rng.below(20000));
            } else if rng.chance(3) && frames.len() > 1 {
                let f = frames[rng.below(frames.len() - 1)].clone();
                if rng.chance(2) {
                    b.drain(f);
                } else {
                    let copy = b[f.clone()].to_vec();
                    b.splice(f.end..f.end, copy);
                }
            } else {
                for _ in 0..1 + rng.below(3) {
                    mutate_bytes(rng, &mut b, &fields);
                }
            }
            (b, deep)
        },
        |input, deep| {
            let Ok(r) = fuzz::wire(input) else { return Ok(()) };
            check_invariants(&r.image, &r.bytes)?;
            if !deep && (r.image.manifest != orig.manifest || r.image.trailer != orig.trailer || pages_of(&r.image, &r.bytes) != orig_pages) {
                return Err("a corrupted stream was accepted with another image".into());
            }
            Ok(())
        },
    );
}

/// A crafted footer whose trailer offset and length add up past 2^64 (to the file's length,
/// modulo 2^64): refused, not an overflow.
#[test]
fn a_footer_that_overflows_is_refused() {
    let img = sample_image();
    let v = fuzz::image(&img).unwrap();
    let mut b = img.clone();
    let f = b.len() - FOOTER_LEN as usize;
    let k = 4096;
    let huge = Footer { trailer_off: v.footer.trailer_off + k, trailer_len: v.footer.trailer_len.wrapping_sub(k), trailer_crc: 0 };
    b[f..].copy_from_slice(&huge.to_bytes());
    assert!(fuzz::image(&b).is_none());
}
