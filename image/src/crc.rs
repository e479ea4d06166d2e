//! Checksums of page runs put together from the checksums of their pages.
//!
//! A live move (`pmig-run --to … --live`) sends a page in one round of pre-copy and the run it
//! belongs to is only known when the program stops; neither side may spend the downtime
//! reading every page again. Each side keeps the CRC-32 of every page it sent or received,
//! and the CRC of a run is made from them: CRC-32 is linear, so for any `a` and a 4096-byte
//! `b`, `crc(a ‖ b) = Z(crc(a)) ^ crc(b)`, where `Z` is the (fixed, linear) effect of 4096
//! zero bytes on a checksum. `Z` is a 32×32 bit matrix, applied here a byte at a time
//! through four 256-entry tables built once.

use std::sync::OnceLock;

/// The page size the tables are built for.
pub const PAGE: usize = 4096;

/// The CRC-32 (IEEE, reflected) polynomial.
const POLY: u32 = 0xedb8_8320;

/// A 32×32 matrix over GF(2): column `i` is the image of bit `i`.
type Matrix = [u32; 32];

fn times(m: &Matrix, mut v: u32) -> u32 {
    let mut out = 0;
    let mut i = 0;
    while v != 0 {
        if v & 1 != 0 {
            out ^= m[i];
        }
        v >>= 1;
        i += 1;
    }
    out
}

fn square(m: &Matrix) -> Matrix {
    let mut out = [0u32; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = times(m, m[i]);
    }
    out
}

/// The tables of `Z` for one page of zeros: `t[k][b]` is `Z` of byte `b` at byte `k`.
fn tables() -> &'static [[u32; 256]; 4] {
    static T: OnceLock<[[u32; 256]; 4]> = OnceLock::new();
    T.get_or_init(|| {
        // One zero bit: shift right, folding in the polynomial.
        let mut m: Matrix = [0; 32];
        m[0] = POLY;
        for (i, c) in m.iter_mut().enumerate().skip(1) {
            *c = 1 << (i - 1);
        }
        // Square up to 8 bits (one byte), then to 4096 bytes (2^12 bytes).
        for _ in 0..3 {
            m = square(&m);
        }
        let mut z = m;
        let mut n = 1usize;
        while n < PAGE {
            z = square(&z);
            n *= 2;
        }
        let mut t = [[0u32; 256]; 4];
        for (k, tk) in t.iter_mut().enumerate() {
            for (b, e) in tk.iter_mut().enumerate() {
                *e = times(&z, (b as u32) << (8 * k));
            }
        }
        t
    })
}

/// The checksum of `a ‖ page`, given `crc(a)` (0 for nothing yet) and `crc(page)` of a
/// 4096-byte page.
pub fn append_page(crc_a: u32, crc_page: u32) -> u32 {
    let t = tables();
    let x = crc_a;
    t[0][(x & 0xff) as usize] ^ t[1][((x >> 8) & 0xff) as usize] ^ t[2][((x >> 16) & 0xff) as usize] ^ t[3][(x >> 24) as usize] ^ crc_page
}

/// The checksum of consecutive pages, from their checksums.
pub fn of_pages(page_crcs: impl IntoIterator<Item = u32>) -> u32 {
    page_crcs.into_iter().fold(0, append_page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_checksums_combine_to_the_runs_checksum() {
        let mut data = vec![0u8; 7 * PAGE];
        let mut x = 0x1234_5678u32;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        // A page of zeros and a page of ones in the middle: no special cases.
        data[2 * PAGE..3 * PAGE].fill(0);
        data[4 * PAGE..5 * PAGE].fill(0xff);
        for n in 0..=7 {
            let pages = data[..n * PAGE].chunks(PAGE).map(crc32fast::hash);
            assert_eq!(of_pages(pages), crc32fast::hash(&data[..n * PAGE]), "{n} pages");
        }
        // A changed byte anywhere changes the result.
        let before = of_pages(data.chunks(PAGE).map(crc32fast::hash));
        data[5 * PAGE + 17] ^= 1;
        assert_ne!(of_pages(data.chunks(PAGE).map(crc32fast::hash)), before);
    }
}
