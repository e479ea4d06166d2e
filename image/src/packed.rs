//! Packed (LZ4-compressed) image files, made by `pmig-run --compress --image …`: the plain
//! image, cut into blocks of up to [`BLOCK`] bytes, each LZ4-compressed (or stored as it is
//! when that is not smaller):
//!
//! ```text
//! MAGIC (8 bytes) | block* | end
//! block: plain_len u32 LE | stored_len u32 LE (bit 31: stored raw) | CRC32 of the plain
//!        bytes u32 LE | stored bytes
//! end:   0u32 | 0u32 | 0u32 | plain image length u64 LE | CRC32 of every block header u32 LE
//! ```
//!
//! The plain image keeps its own checksums (manifest, page runs, trailer), checked once it is
//! unpacked; a damaged block that LZ4 cannot decode, a wrong length or a bad end is refused
//! while unpacking. A packed image cannot be mapped: it is unpacked into memory first.

use crate::ImageError;

/// The first bytes of a packed image.
pub const MAGIC: [u8; 8] = *b"PMIGLZ4\n";
/// Plain bytes per block.
pub const BLOCK: usize = 4 << 20;
const RAW: u32 = 1 << 31;

/// Whether `first` (a file's first bytes) starts a packed image.
pub fn is_packed(first: &[u8]) -> bool {
    first.len() >= 8 && first[..8] == MAGIC
}

/// Bytes a block's stored form may take (LZ4's bound for [`BLOCK`] plain bytes): the size of
/// the scratch buffer [`pack_block`] compresses into.
pub const MAX_STORED: usize = lz4_flex::block::get_maximum_output_size(BLOCK);

/// Packs the plain image of `total` bytes that `read_at(offset, buf)` reads (filling `buf`,
/// or less at the end), giving the packed bytes to `out` in order. Returns the packed length.
pub fn pack<E>(
    total: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
    mut out: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut plain = vec![0u8; BLOCK];
    let mut packed = vec![0u8; MAX_STORED];
    let mut end = End::new();
    out(&MAGIC)?;
    let mut off = 0u64;
    while off < total {
        let want = (total - off).min(BLOCK as u64) as usize;
        let mut got = 0;
        while got < want {
            let n = read_at(off + got as u64, &mut plain[got..want])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        let b = pack_block(&plain[..got], &mut packed);
        end.add(&b);
        out(&b.head)?;
        out(b.stored(&plain[..got], &packed))?;
        off += got as u64;
    }
    out(&end.bytes())?;
    Ok(end.written())
}

/// One block packed by [`pack_block`]: its header, and where its stored bytes are.
#[derive(Clone, Copy, Debug)]
pub struct Packed {
    /// The block's header, written before its stored bytes.
    pub head: [u8; 12],
    /// `Some(n)`: the stored bytes are the first `n` bytes of the scratch buffer (compressed);
    /// `None`: they are the plain bytes (stored raw).
    pub compressed: Option<usize>,
}

impl Packed {
    /// The stored bytes, given the plain bytes and the scratch buffer `pack_block` had.
    pub fn stored<'a>(&self, plain: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        match self.compressed {
            Some(n) => &scratch[..n],
            None => plain,
        }
    }

    /// Plain bytes in the block.
    pub fn plain_len(&self) -> usize {
        u32::from_le_bytes([self.head[0], self.head[1], self.head[2], self.head[3]]) as usize
    }

    /// Stored bytes after the header.
    pub fn stored_len(&self) -> usize {
        (u32::from_le_bytes([self.head[4], self.head[5], self.head[6], self.head[7]]) & !RAW) as usize
    }
}

/// Packs one block (`plain`: 1 to [`BLOCK`] bytes; `scratch`: at least [`MAX_STORED`] bytes,
/// where the compressed bytes go). Blocks are independent: they may be packed in any order,
/// by any thread, as long as they are written in order with an [`End`] that saw each of them.
pub fn pack_block(plain: &[u8], scratch: &mut [u8]) -> Packed {
    let c = if incompressible(plain, scratch) {
        usize::MAX
    } else {
        lz4_flex::block::compress_into(plain, scratch).unwrap_or(usize::MAX)
    };
    let (compressed, stored) = if c < plain.len() { (Some(c), c as u32) } else { (None, plain.len() as u32 | RAW) };
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(&(plain.len() as u32).to_le_bytes());
    head[4..8].copy_from_slice(&stored.to_le_bytes());
    head[8..].copy_from_slice(&crc32fast::hash(plain).to_le_bytes());
    Packed { head, compressed }
}

/// The end of a packed image, made from the blocks written before it, in order.
pub struct End {
    crc: crc32fast::Hasher,
    plain: u64,
    written: u64,
}

impl End {
    /// An end that has seen no block yet (the magic counts as written).
    pub fn new() -> End {
        End { crc: crc32fast::Hasher::new(), plain: 0, written: MAGIC.len() as u64 }
    }

    /// Counts block `b`, the next one written.
    pub fn add(&mut self, b: &Packed) {
        self.crc.update(&b.head);
        self.plain += b.plain_len() as u64;
        self.written += 12 + b.stored_len() as u64;
    }

    /// The end's bytes, to write after the last block.
    pub fn bytes(&self) -> [u8; 24] {
        let mut end = [0u8; 24];
        end[12..20].copy_from_slice(&self.plain.to_le_bytes());
        end[20..].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        end
    }

    /// The packed image's length once the end is written.
    pub fn written(&self) -> u64 {
        self.written + 24
    }
}

impl Default for End {
    fn default() -> End {
        End::new()
    }
}

/// Whether `block` looks incompressible (random or already compressed data): three samples of
/// 64 KiB (start, middle, end) each shrink by less than 1/16. Such a block is stored raw
/// without compressing the rest of it, which would cost as much time for nothing. `scratch`
/// holds a compressed block.
fn incompressible(block: &[u8], scratch: &mut [u8]) -> bool {
    const SAMPLE: usize = 64 << 10;
    if block.len() < 4 * SAMPLE {
        return false;
    }
    [0, block.len() / 2 - SAMPLE / 2, block.len() - SAMPLE].iter().all(|&at| {
        let sample = &block[at..at + SAMPLE];
        lz4_flex::block::compress_into(sample, scratch).map_or(true, |c| c > SAMPLE - SAMPLE / 16)
    })
}

/// One block of a packed image held in memory: where its stored bytes are, and where its
/// plain bytes go.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub stored_at: usize,
    pub stored_len: usize,
    pub raw: bool,
    pub plain_at: u64,
    pub plain_len: usize,
    pub crc: u32,
}

/// The blocks of the packed image `p` (whole, in memory) and its plain length; refuses one
/// whose headers or end are damaged or cut short.
pub fn blocks(p: &[u8]) -> Result<(Vec<Block>, u64), ImageError> {
    let bad = |what: &str| ImageError::Corrupted(format!("packed image: {what}"));
    if !is_packed(p) {
        return Err(ImageError::Foreign);
    }
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    let mut crc = crc32fast::Hasher::new();
    let mut plain = 0u64;
    loop {
        let head = p.get(at..at + 12).ok_or_else(|| bad("truncated (a block header is missing)"))?;
        let plain_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let s = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let block_crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if plain_len == 0 && s == 0 && block_crc == 0 {
            let end = p.get(at + 12..at + 24).ok_or_else(|| bad("truncated (its end is missing)"))?;
            let len = u64::from_le_bytes(end[..8].try_into().unwrap_or_default());
            let want = u32::from_le_bytes(end[8..].try_into().unwrap_or_default());
            if len != plain || want != crc.finalize() || at + 24 != p.len() {
                return Err(bad("its end does not match its blocks"));
            }
            return Ok((out, plain));
        }
        crc.update(head);
        let (raw, slen) = (s & RAW != 0, (s & !RAW) as usize);
        if plain_len > BLOCK || slen > MAX_STORED || (raw && slen != plain_len) {
            return Err(bad("a block header is damaged"));
        }
        if at + 12 + slen > p.len() {
            return Err(bad("truncated (a block is cut short)"));
        }
        out.push(Block { stored_at: at + 12, stored_len: slen, raw, plain_at: plain, plain_len, crc: block_crc });
        plain += plain_len as u64;
        at += 12 + slen;
    }
}

/// Decodes block `b` of the packed image `p` into `out` (`b.plain_len` bytes), checking it.
pub fn decode(p: &[u8], b: &Block, out: &mut [u8]) -> Result<(), ImageError> {
    let bad = |what: &str| ImageError::Corrupted(format!("packed image: {what}"));
    let stored = &p[b.stored_at..b.stored_at + b.stored_len];
    let out = &mut out[..b.plain_len];
    if b.raw {
        out.copy_from_slice(stored);
    } else if lz4_flex::block::decompress_into(stored, out).map_err(|_| bad("a block does not decompress"))? != b.plain_len {
        return Err(bad("a block decompresses to another length"));
    }
    if crc32fast::hash(out) != b.crc {
        return Err(bad("a block's checksum does not match"));
    }
    Ok(())
}

/// Unpacks a packed image read from `input` (positioned after nothing: it starts with the
/// magic), giving the plain bytes to `out`. Returns the plain length.
pub fn unpack(mut input: impl std::io::Read, mut out: impl FnMut(&[u8]) -> std::io::Result<()>) -> Result<u64, ImageError> {
    let bad = |what: &str| ImageError::Corrupted(format!("packed image: {what}"));
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if magic != MAGIC {
        return Err(ImageError::Foreign);
    }
    let mut plain = vec![0u8; BLOCK];
    let mut stored = Vec::with_capacity(MAX_STORED);
    let mut crc = crc32fast::Hasher::new();
    let mut total = 0u64;
    loop {
        let mut head = [0u8; 12];
        input.read_exact(&mut head).map_err(|_| bad("truncated (a block header is missing)"))?;
        let plain_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let s = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let block_crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if plain_len == 0 && s == 0 && block_crc == 0 {
            let mut end = [0u8; 12];
            input.read_exact(&mut end).map_err(|_| bad("truncated (its end is missing)"))?;
            let len = u64::from_le_bytes(end[..8].try_into().unwrap_or_default());
            let want = u32::from_le_bytes(end[8..].try_into().unwrap_or_default());
            if len != total || want != crc.finalize() {
                return Err(bad("its end does not match its blocks"));
            }
            return Ok(total);
        }
        crc.update(&head);
        let (raw, slen) = (s & RAW != 0, (s & !RAW) as usize);
        if plain_len > BLOCK || slen > MAX_STORED || (raw && slen != plain_len) {
            return Err(bad("a block header is damaged"));
        }
        stored.resize(slen, 0);
        input.read_exact(&mut stored).map_err(|_| bad("truncated (a block is cut short)"))?;
        let bytes = if raw {
            &stored[..]
        } else {
            let n = lz4_flex::block::decompress_into(&stored, &mut plain[..plain_len]).map_err(|_| bad("a block does not decompress"))?;
            if n != plain_len {
                return Err(bad("a block decompresses to another length"));
            }
            &plain[..plain_len]
        };
        if crc32fast::hash(bytes) != block_crc {
            return Err(bad("a block's checksum does not match"));
        }
        out(bytes)?;
        total += plain_len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed_of(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pack::<()>(
            data.len() as u64,
            |off, buf| {
                let off = off as usize;
                let n = buf.len().min(data.len() - off);
                buf[..n].copy_from_slice(&data[off..off + n]);
                Ok(n)
            },
            |b| {
                out.extend_from_slice(b);
                Ok(())
            },
        )
        .unwrap();
        out
    }

    fn unpacked(p: &[u8]) -> Result<Vec<u8>, ImageError> {
        let mut v = Vec::new();
        let streamed = unpack(p, |b| {
            v.extend_from_slice(b);
            Ok(())
        })
        .map(|_| v);
        // The block-wise decoder agrees with the streaming one.
        let by_blocks = blocks(p).and_then(|(bs, total)| {
            let mut w = vec![0u8; total as usize];
            for b in &bs {
                decode(p, b, &mut w[b.plain_at as usize..])?;
            }
            Ok(w)
        });
        match (&streamed, &by_blocks) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => panic!("the two decoders disagree: {streamed:?} / {by_blocks:?}"),
        }
        streamed
    }

    #[test]
    fn round_trip_compressible_and_random() {
        let mut data = vec![0u8; BLOCK * 2 + 12345];
        let mut x = 12345u64;
        for (i, b) in data.iter_mut().enumerate().skip(BLOCK) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = if i < BLOCK + BLOCK / 2 { x as u8 } else { (i % 7) as u8 };
        }
        let p = packed_of(&data);
        assert!(p.len() < data.len() / 2, "zeros and patterns must shrink: {} of {}", p.len(), data.len());
        assert!(is_packed(&p));
        assert_eq!(unpacked(&p).unwrap(), data);
    }

    #[test]
    fn incompressible_blocks_are_stored_raw_and_others_compressed() {
        let mut data = vec![0u8; BLOCK * 2];
        let mut x = 99u64;
        for b in data[..BLOCK].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let p = packed_of(&data);
        let (bs, _) = blocks(&p).unwrap();
        assert_eq!(bs.iter().map(|b| b.raw).collect::<Vec<_>>(), vec![true, false]);
        assert_eq!(unpacked(&p).unwrap(), data);
    }

    #[test]
    fn blocks_packed_out_of_order_give_the_same_image() {
        // What a ring of packers does: blocks packed in another order, by other buffers,
        // written in order with one End.
        let mut data = vec![0u8; BLOCK * 3 + 777];
        let mut x = 7u64;
        for (i, b) in data.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = if i / BLOCK == 1 { x as u8 } else { b"pmig packs text "[i % 16] };
        }
        let chunks: Vec<&[u8]> = data.chunks(BLOCK).collect();
        let mut done: Vec<Option<(Packed, Vec<u8>)>> = vec![None; chunks.len()];
        for k in [2, 0, 3, 1] {
            let mut scratch = vec![0u8; MAX_STORED];
            let b = pack_block(chunks[k], &mut scratch);
            done[k] = Some((b, b.stored(chunks[k], &scratch).to_vec()));
        }
        let mut out = MAGIC.to_vec();
        let mut end = End::new();
        for (b, stored) in done.iter().flatten() {
            end.add(b);
            out.extend_from_slice(&b.head);
            out.extend_from_slice(stored);
        }
        out.extend_from_slice(&end.bytes());
        assert_eq!(end.written(), out.len() as u64);
        assert_eq!(out, packed_of(&data));
        assert_eq!(unpacked(&out).unwrap(), data);
    }

    #[test]
    fn damage_is_refused() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let p = packed_of(&data);
        assert!(unpacked(&p[..p.len() - 3]).is_err(), "truncated");
        let mut q = p.clone();
        q[20] ^= 0xff;
        assert!(unpacked(&q).is_err(), "damaged block");
        let mut r = p.clone();
        let at = r.len() - 5;
        r[at] ^= 1;
        assert!(unpacked(&r).is_err(), "damaged end");
    }
}
