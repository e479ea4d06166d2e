//! Pseudo-terminals: the ioctls libpmig (at checkpoint) and pmig-resume (at restore) use to
//! save a pty pair's state and give it back, with raw system calls (no libc here).
//!
//! A pty's queued bytes cannot be peeked: saving them means reading them, and a checkpoint
//! the program survives puts them back the way the restore does ([`put_back`]): bytes the
//! slave side had not read yet are written to the master with the slave's line discipline
//! made raw (no echo, no signals, no CR/NL mapping: they were processed once already), and
//! bytes the master side had not read yet are written to the slave with output processing
//! off (`OPOST`), so each side reads exactly what it would have read.

use crate::arch::syscall6;

/// `struct termios2` (x86_64): four flag words, the line discipline, 19 control characters,
/// two speeds.
pub const TERMIOS_LEN: usize = 44;
pub type Termios = [u8; TERMIOS_LEN];

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_IOCTL: u64 = 16;
const SYS_NANOSLEEP: u64 = 35;

pub const TCGETS2: u64 = 0x802C_542A;
pub const TCSETS2: u64 = 0x402C_542B;
pub const TIOCGPTPEER: u64 = 0x5441;
pub const TIOCGPTN: u64 = 0x8004_5430;
pub const TIOCSPTLCK: u64 = 0x4004_5431;
pub const TIOCGPTLCK: u64 = 0x8004_5439;
pub const TIOCGPKT: u64 = 0x8004_5438;
pub const TIOCPKT: u64 = 0x5420;
pub const TIOCGWINSZ: u64 = 0x5413;
pub const TIOCSWINSZ: u64 = 0x5414;
pub const FIONREAD: u64 = 0x541B;
pub const TIOCSCTTY: u64 = 0x540E;
pub const TIOCSPGRP: u64 = 0x5410;

/// The major number of every pty slave (`/dev/pts/N` is `136:N`).
pub const SLAVE_MAJOR: u32 = 136;
/// `/dev/ptmx`'s device number (5:2).
pub const PTMX_MAJOR: u32 = 5;
pub const PTMX_MINOR: u32 = 2;

fn ioctl(fd: i32, req: u64, arg: u64) -> Result<i64, i32> {
    // SAFETY: every request used here reads or writes at most the object `arg` points to,
    // which the callers own with the size the request names.
    let r = unsafe { syscall6(SYS_IOCTL, fd as u64, req, arg, 0, 0, 0) };
    if r < 0 { Err(-r as i32) } else { Ok(r) }
}

/// An `int` the ioctl `req` reads into.
pub fn get_int(fd: i32, req: u64) -> Result<i32, i32> {
    let mut v: i32 = 0;
    ioctl(fd, req, &mut v as *mut i32 as u64).map(|_| v)
}

/// An `int` the ioctl `req` takes by pointer.
pub fn set_int(fd: i32, req: u64, v: i32) -> Result<(), i32> {
    ioctl(fd, req, &v as *const i32 as u64).map(|_| ())
}

/// Takes the slave open on `fd` as the caller's controlling terminal (it must lead a session
/// without one).
pub fn set_ctty(fd: i32) -> Result<(), i32> {
    ioctl(fd, TIOCSCTTY, 0).map(|_| ())
}

/// A new open of the master's slave (`TIOCGPTPEER`, with `flags`).
pub fn peer(master: i32, flags: i32) -> Result<i32, i32> {
    ioctl(master, TIOCGPTPEER, flags as u64).map(|fd| fd as i32)
}

pub fn get_termios(fd: i32) -> Result<Termios, i32> {
    let mut t = [0u8; TERMIOS_LEN];
    ioctl(fd, TCGETS2, t.as_mut_ptr() as u64).map(|_| t)
}

pub fn set_termios(fd: i32, t: &Termios) -> Result<(), i32> {
    ioctl(fd, TCSETS2, t.as_ptr() as u64).map(|_| ())
}

/// `struct winsize`: rows, columns, x and y pixels.
pub fn get_winsize(fd: i32) -> Result<[u16; 4], i32> {
    let mut w = [0u16; 4];
    ioctl(fd, TIOCGWINSZ, w.as_mut_ptr() as u64).map(|_| w)
}

pub fn set_winsize(fd: i32, w: &[u16; 4]) -> Result<(), i32> {
    ioctl(fd, TIOCSWINSZ, w.as_ptr() as u64).map(|_| ())
}

fn flag(t: &Termios, word: usize) -> u32 {
    u32::from_ne_bytes([t[word * 4], t[word * 4 + 1], t[word * 4 + 2], t[word * 4 + 3]])
}

fn set_flag(t: &mut Termios, word: usize, v: u32) {
    t[word * 4..word * 4 + 4].copy_from_slice(&v.to_ne_bytes());
}

/// `t` with no input processing, echo, signals or canonical lines; reads return at once.
pub fn raw(t: &Termios) -> Termios {
    let mut r = *t;
    // IGNBRK BRKINT PARMRK ISTRIP INLCR IGNCR ICRNL IXON
    set_flag(&mut r, 0, flag(t, 0) & !(0o1 | 0o2 | 0o10 | 0o40 | 0o100 | 0o200 | 0o400 | 0o2000));
    // ISIG ICANON ECHO ECHONL IEXTEN
    set_flag(&mut r, 3, flag(t, 3) & !(0o1 | 0o2 | 0o10 | 0o100 | 0o100000));
    // c_cc starts at 17: VTIME (5) and VMIN (6) 0.
    r[17 + 5] = 0;
    r[17 + 6] = 0;
    r
}

/// `t` without output processing.
pub fn no_opost(t: &Termios) -> Termios {
    let mut r = *t;
    set_flag(&mut r, 1, flag(t, 1) & !1);
    r
}

/// Bytes readable on `fd` now (`FIONREAD`).
pub fn pending(fd: i32) -> Result<usize, i32> {
    get_int(fd, FIONREAD).map(|n| n.max(0) as usize)
}

/// Reads up to `buf.len()` bytes (one `read`).
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: read(2) into the caller's buffer, of its length.
    let r = unsafe { syscall6(SYS_READ, fd as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0) };
    if r < 0 { Err(-r as i32) } else { Ok(r as usize) }
}

fn write_all(fd: i32, mut b: &[u8]) -> Result<(), i32> {
    while !b.is_empty() {
        // SAFETY: write(2) from the caller's slice.
        let r = unsafe { syscall6(SYS_WRITE, fd as u64, b.as_ptr() as u64, b.len() as u64, 0, 0, 0) };
        if r == -4 {
            continue;
        }
        if r <= 0 {
            return Err(if r < 0 { -r as i32 } else { 5 });
        }
        b = &b[r as usize..];
    }
    Ok(())
}

fn sleep_ms(ms: u64) {
    let ts = [0u64, ms * 1_000_000];
    // SAFETY: nanosleep reads the timespec we own.
    unsafe { syscall6(SYS_NANOSLEEP, ts.as_ptr() as u64, 0, 0, 0, 0, 0) };
}

/// Gives a pty its queued bytes back (see the module's comment) and leaves the slave with
/// the termios `saved`: `input` is what the slave side had to read, `output` what the
/// master side had to read. `peer` is an fd on the slave.
pub fn put_back(master: i32, peer: i32, saved: &Termios, input: &[u8], output: &[u8]) -> Result<(), i32> {
    let r = (|| {
        if !input.is_empty() {
            set_termios(peer, &raw(saved))?;
            write_all(master, input)?;
            // The line discipline takes them in from a work queue: wait until they are all
            // in (a second at most) before the saved termios comes back.
            for _ in 0..1000 {
                if pending(peer)? >= input.len() {
                    break;
                }
                sleep_ms(1);
            }
        }
        if !output.is_empty() {
            set_termios(peer, &no_opost(saved))?;
            write_all(peer, output)?;
        }
        Ok(())
    })();
    let back = set_termios(peer, saved);
    r.and(back)
}
