//! The vdso across kernels: a saved process's code calls the vdso functions (clock_gettime,
//! gettimeofday, time, getcpu, …) of the kernel it ran on, at the addresses libc found at its
//! start. Where this kernel's vdso differs, the restore makes a **proxy**: this kernel's vdso
//! block (`[vvar]`, `[vvar_vclock]`, `[vdso]`) goes to a free place of the saved address space,
//! and at the saved `[vdso]` address an anonymous copy of the *saved* vdso is mapped with every
//! function's entry replaced by a jump to the same function of this kernel's vdso (found by
//! name in both ELF dynamic symbol tables). The saved `[vvar]` pages are not mapped again:
//! only the jumps of the old code run. A later checkpoint saves the proxy as the anonymous
//! memory it is, and the real vdso where it now is.
//!
//! `PMIG_FOREIGN_VDSO=1` makes pmig-resume take this path even when the vdso is the same (so
//! the trampolines run for real on one kernel, as the tests do).

use anyhow::{bail, Context, Result};
use pmig_image::Manifest;
use std::collections::HashMap;

/// `(name, start, end)` of each piece of a vdso block.
pub type VdsoParts = Vec<(String, u64, u64)>;

/// The pieces of this process's vdso block, and the vdso's bytes. Read once (from
/// `/proc/self/mem`, which a process that changed its credentials — `--as-owner` — may no
/// longer read) by the first caller, the host check, and kept for the plans.
pub fn own() -> Result<(VdsoParts, Vec<u8>)> {
    static OWN: std::sync::OnceLock<std::result::Result<(VdsoParts, Vec<u8>), String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| read_own().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow::anyhow!(e))
}

fn read_own() -> Result<(VdsoParts, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string("/proc/self/maps").context("cannot read /proc/self/maps")?;
    let mut parts = Vec::new();
    for l in maps.lines() {
        let name = l.split_whitespace().nth(5).unwrap_or("");
        if matches!(name, "[vvar]" | "[vvar_vclock]" | "[vdso]") {
            let range = l.split_whitespace().next().unwrap_or("0-0");
            let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
            parts.push((name.to_string(), u64::from_str_radix(s, 16)?, u64::from_str_radix(e, 16)?));
        }
    }
    let mut bytes = Vec::new();
    if let Some((_, s, e)) = parts.iter().find(|p| p.0 == "[vdso]") {
        let mut mem = std::fs::File::open("/proc/self/mem")?;
        mem.seek(SeekFrom::Start(*s))?;
        bytes.resize((e - s) as usize, 0);
        mem.read_exact(&mut bytes)?;
    }
    Ok((parts, bytes))
}

/// `true` when the saved process can use this kernel's vdso block where it had its own.
pub fn same(m: &Manifest) -> Result<bool> {
    if std::env::var_os("PMIG_FOREIGN_VDSO").is_some_and(|v| v == "1") {
        return Ok(false);
    }
    let (parts, bytes) = own()?;
    let shape = |p: &[(String, u64, u64)]| p.iter().map(|(n, s, e)| (n.clone(), e - s)).collect::<Vec<_>>();
    Ok(shape(&parts) == shape(&m.vdso.parts) && bytes == m.vdso.vdso_bytes)
}

/// The functions an ELF image (a vdso) exports: name → (offset, size).
pub fn functions(elf: &[u8]) -> Result<HashMap<String, (u64, u64)>> {
    let u16_at = |o: usize| -> Result<u64> { Ok(u16::from_le_bytes(elf.get(o..o + 2).context("vdso ELF cut short")?.try_into()?) as u64) };
    let u32_at = |o: usize| -> Result<u64> { Ok(u32::from_le_bytes(elf.get(o..o + 4).context("vdso ELF cut short")?.try_into()?) as u64) };
    let u64_at = |o: usize| -> Result<u64> { Ok(u64::from_le_bytes(elf.get(o..o + 8).context("vdso ELF cut short")?.try_into()?)) };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        bail!("the vdso is not a 64-bit ELF image");
    }
    let (shoff, shentsize, shnum) = (u64_at(0x28)? as usize, u16_at(0x3a)? as usize, u16_at(0x3c)? as usize);
    let section = |i: usize| -> Result<(u64, u64, u64, u64, u64)> {
        let o = shoff + i * shentsize;
        // (type, offset, size, link, entsize)
        Ok((u32_at(o + 4)?, u64_at(o + 0x18)?, u64_at(o + 0x20)?, u32_at(o + 0x28)?, u64_at(o + 0x38)?))
    };
    let mut out = HashMap::new();
    for i in 0..shnum {
        let (kind, off, size, link, entsize) = section(i)?;
        const SHT_DYNSYM: u64 = 11;
        if kind != SHT_DYNSYM || entsize < 24 {
            continue;
        }
        let (_, str_off, str_size, _, _) = section(link as usize)?;
        for k in 0..(size / entsize) as usize {
            let s = off as usize + k * entsize as usize;
            let (name, info, value, sz) = (u32_at(s)?, elf.get(s + 4).copied().unwrap_or(0), u64_at(s + 8)?, u64_at(s + 16)?);
            const STT_FUNC: u8 = 2;
            if info & 0xf != STT_FUNC || value == 0 || name >= str_size {
                continue;
            }
            let start = (str_off + name) as usize;
            let end = elf[start..].iter().position(|&c| c == 0).map(|n| start + n).context("vdso symbol name unterminated")?;
            out.insert(String::from_utf8_lossy(&elf[start..end]).into_owned(), (value, sz));
        }
    }
    if out.is_empty() {
        bail!("the vdso exports no function");
    }
    Ok(out)
}

/// Bytes of a jump to an absolute address: `jmp [rip+0]` then the address.
const JUMP_LEN: u64 = 14;

/// What the engine needs for a proxy.
pub struct Proxy {
    /// Where this kernel's vdso block goes (its first piece).
    pub new_base: u64,
    /// The saved `[vdso]` address, and the patched copy of the saved vdso to map there.
    pub at: u64,
    pub bytes: Vec<u8>,
}

/// Builds the proxy for `m`'s process: a free place for this kernel's vdso block, and the
/// saved vdso with a jump to this kernel's function at each of its functions' entries.
/// Refuses, naming it, a function the saved vdso has and this one lacks.
pub fn proxy(m: &Manifest) -> Result<Proxy> {
    let (parts, bytes) = own()?;
    let (Some(old), Some(new)) = (m.vdso.parts.iter().find(|p| p.0 == "[vdso]"), parts.iter().find(|p| p.0 == "[vdso]")) else {
        bail!("the saved process or this one has no vdso");
    };
    let old_fns = functions(&m.vdso.vdso_bytes).context("the saved vdso")?;
    let new_fns = functions(&bytes).context("this kernel's vdso")?;
    let base = parts.iter().map(|p| p.1).min().unwrap_or(new.1);
    let len = parts.iter().map(|p| p.2).max().unwrap_or(new.2) - base;
    let new_base = free_place(m, len).context("no room in the saved address space for this kernel's vdso")?;
    let new_vdso = new_base + (new.1 - base);
    let mut out = m.vdso.vdso_bytes.clone();
    let mut missing = Vec::new();
    for (name, &(off, size)) in &old_fns {
        let Some(&(to, _)) = new_fns.get(name) else {
            missing.push(name.clone());
            continue;
        };
        if size != 0 && size < JUMP_LEN || off + JUMP_LEN > out.len() as u64 {
            bail!("the saved vdso's {name} is too short ({size} bytes) for a jump to this kernel's");
        }
        let at = off as usize;
        out[at..at + 6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
        out[at + 6..at + 14].copy_from_slice(&(new_vdso + to).to_le_bytes());
    }
    if !missing.is_empty() {
        missing.sort();
        bail!("this kernel's vdso lacks {} the saved process's had ({})", missing.join(", "), m.host.kernel_release);
    }
    Ok(Proxy { new_base, at: old.1, bytes: out })
}

/// The highest free gap of the saved address space (below the stack's guard, above the
/// restore engine's range) that holds `len` bytes with a free page on each side.
fn free_place(m: &Manifest, len: u64) -> Option<u64> {
    let mut used: Vec<(u64, u64)> = m.regions.iter().map(|r| (r.start, r.end)).collect();
    used.extend(m.vdso.parts.iter().map(|p| (p.1, p.2)));
    used.push((pmig_abi::ENGINE_BASE, pmig_abi::ENGINE_BASE + pmig_abi::RESERVE_LEN));
    used.sort();
    let top = 0x7fff_ffff_0000u64;
    let mut hi = top;
    for &(s, e) in used.iter().rev() {
        if e >= hi {
            hi = hi.min(s);
            continue;
        }
        // Gap [e, hi).
        if hi - e >= len + 2 * 4096 && hi > pmig_abi::ENGINE_BASE + pmig_abi::RESERVE_LEN {
            return Some(hi - 4096 - len);
        }
        hi = s;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_vdso_exports_the_clock_functions() {
        let (_, bytes) = own().unwrap();
        let f = functions(&bytes).unwrap();
        for name in ["__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time"] {
            let (off, size) = f.get(name).copied().unwrap_or_else(|| panic!("{name} missing: {:?}", f.keys()));
            assert!(off > 0 && (off as usize) < bytes.len() && (size == 0 || size >= JUMP_LEN), "{name}: {off:#x} {size}");
        }
    }

    #[test]
    fn the_new_block_goes_in_a_free_gap() {
        let mut m = Manifest::default();
        let r = |start, end| pmig_image::RegionState { start, end, ..Default::default() };
        m.regions = vec![r(0x5555_0000_0000, 0x5555_0001_0000), r(0x7fff_f000_0000, 0x7fff_f100_0000)];
        // The highest gap that fits: above the top region, a page clear of both ends.
        let at = free_place(&m, 0x4000).unwrap();
        assert!(at >= 0x7fff_f100_0000 + 4096 && at + 0x4000 + 4096 <= 0x7fff_ffff_0000, "{at:#x}");
        // Filled up there: the next gap down, below the big region.
        m.regions.push(r(0x7fff_f100_0000, 0x7fff_ffff_0000));
        m.regions.push(r(0x7000_0000_0000, 0x7fff_efff_f000));
        let at = free_place(&m, 0x4000).unwrap();
        assert!(at + 0x4000 + 4096 <= 0x7000_0000_0000 && at >= 0x5555_0001_0000 + 4096, "{at:#x}");
        // No gap is large enough: none.
        assert_eq!(free_place(&m, 0x7000_0000_0000), None);
    }
}
