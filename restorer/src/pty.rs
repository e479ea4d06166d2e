//! The image's pseudo-terminals, made again before any process of the tree exists (a session
//! leader takes its controlling terminal before it makes its children): each pty whose
//! master a process held, with the same index where it is free here (`/dev/ptmx` hands out
//! the lowest free index: opened until it gives the saved one), its slave's termios and
//! window size, packet mode, lock, and the bytes queued each way.

use anyhow::{bail, Result};
use pmig_abi::pty as p;
use pmig_abi::PlanObject;
use pmig_image::{FileKind, PtyState, VerifiedImage};
use std::collections::BTreeMap;

/// Ptys are numbered below this (the kernel's default `kernel.pty.max` is 4096).
const MAX_INDEX: u32 = 1 << 16;

/// Makes every pty the image's processes held a master of; the objects each process's plan
/// names (kind `OBJECT_PTY`, `ino` the saved index; inheritable fds).
pub fn make_all(img: &VerifiedImage) -> Result<Vec<PlanObject>> {
    let mut ptys: BTreeMap<u32, &PtyState> = BTreeMap::new();
    for (_, proc_img) in img.processes() {
        for f in &proc_img.manifest.files {
            if let FileKind::PtyMaster { index, pty } = &f.kind {
                let e = ptys.entry(*index).or_insert(pty);
                if pty.saved && !e.saved {
                    *e = pty;
                }
            }
        }
    }
    let mut out = Vec::new();
    for (index, pty) in ptys {
        let fd = make(index, pty)?;
        out.push(PlanObject { ino: u64::from(index), fd, kind: pmig_abi::OBJECT_PTY });
    }
    Ok(out)
}

fn open_ptmx() -> Result<i32> {
    // SAFETY: open(2) of a NUL-terminated literal.
    let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        bail!("cannot open /dev/ptmx: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn close(fd: i32) {
    // SAFETY: closing an fd this module opened.
    unsafe { libc::close(fd) };
}

/// A new master with index `index` if it is free here, else the lowest free one.
fn master_at(index: u32) -> Result<(i32, u32)> {
    let mut held: Vec<(i32, u32)> = Vec::new();
    let mut got = None;
    while held.len() as u32 <= index.min(MAX_INDEX) {
        let fd = open_ptmx()?;
        let n = p::get_int(fd, p::TIOCGPTN).map_err(|e| anyhow::anyhow!("TIOCGPTN: {}", pmig_abi::errno::Errno(e)))? as u32;
        if n == index {
            got = Some((fd, n));
            break;
        }
        held.push((fd, n));
        if n > index {
            break;
        }
    }
    let (fd, n) = match got {
        Some(g) => g,
        None => {
            let first = held.remove(0);
            eprintln!("pmig-resume: warning: /dev/pts/{index} is taken here: the program's pty comes back as /dev/pts/{} (a name it kept would be stale)", first.1);
            first
        }
    };
    for (h, _) in held {
        close(h);
    }
    Ok((fd, n))
}

fn make(index: u32, pty: &PtyState) -> Result<i32> {
    let errno = |what: &str, e: i32| anyhow::anyhow!("pty /dev/pts/{index}: {what}: {}", pmig_abi::errno::Errno(e));
    let (master, _) = master_at(index)?;
    let r = (|| {
        p::set_int(master, p::TIOCSPTLCK, 0).map_err(|e| errno("cannot unlock it", e))?;
        let peer = p::peer(master, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC).map_err(|e| errno("cannot open its slave", e))?;
        let r = (|| {
            let termios: p::Termios = match pty.termios.as_slice().try_into() {
                Ok(t) => t,
                Err(_) => p::get_termios(peer).map_err(|e| errno("TCGETS2", e))?,
            };
            p::set_termios(peer, &termios).map_err(|e| errno("cannot set its termios", e))?;
            p::set_winsize(peer, &pty.winsize).map_err(|e| errno("cannot set its window size", e))?;
            p::put_back(master, peer, &termios, &pty.input, &pty.output).map_err(|e| errno("cannot queue its bytes again", e))?;
            if pty.packet {
                p::set_int(master, p::TIOCPKT, 1).map_err(|e| errno("cannot set packet mode", e))?;
            }
            if pty.locked {
                p::set_int(master, p::TIOCSPTLCK, 1).map_err(|e| errno("cannot lock it", e))?;
            }
            Ok(())
        })();
        close(peer);
        r
    })();
    match r {
        Ok(()) => Ok(master),
        Err(e) => {
            close(master);
            Err(e)
        }
    }
}

/// In a session leader being made (`pid` of the tree, its session made), takes the pty
/// `index` (made by `make_all`, in `objects`) as its controlling terminal.
pub fn take_as_ctty(index: u32, objects: &[PlanObject]) -> Result<(), String> {
    let Some(o) = objects.iter().find(|o| o.kind == pmig_abi::OBJECT_PTY && o.ino == u64::from(index)) else {
        return Err(format!("pty /dev/pts/{index} was not made"));
    };
    let peer = p::peer(o.fd, libc::O_RDWR | libc::O_CLOEXEC).map_err(|e| format!("cannot open its slave: {}", pmig_abi::errno::Errno(e)))?;
    let r = p::set_ctty(peer).map_err(|e| format!("TIOCSCTTY: {}", pmig_abi::errno::Errno(e)));
    close(peer);
    r
}
