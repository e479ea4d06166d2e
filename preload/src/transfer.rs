//! Sending a checkpoint straight to a receiver (`pmig-run --to HOST:PORT`): the connection
//! and handshake (made before the program is stopped, so an unreachable or refusing receiver
//! costs nothing), and a [`Sink`] that frames the image stream, optionally LZ4-compressed,
//! with a progress line for transfers longer than a second. See `pmig_image::wire`.
//!
//! The sink runs in the checkpoint thread with the other threads stopped: raw system calls,
//! arena allocation only.

use crate::errno::Errno;
use crate::checkpoint::Sink;
use crate::{log, sys};
use pmig_abi::arch::syscall6;
use pmig_image::wire::{self, frame, Auth, AUTH_LEN, FLAG_LZ4, HELLO_LEN, MAX_FRAME};
use std::os::fd::IntoRawFd;
use std::time::Duration;

/// A random challenge from `getrandom(2)`.
fn challenge() -> [u8; 32] {
    let mut c = [0u8; 32];
    // SAFETY: getrandom writes at most 32 bytes into our array.
    unsafe { syscall6(libc::SYS_getrandom as u64, c.as_mut_ptr() as u64, 32, 0, 0, 0, 0) };
    c
}

fn recv_exact(fd: i32, buf: &mut [u8]) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, &mut buf[got..]) {
            Ok(0) => return Err("the receiver closed the connection".into()),
            Ok(n) => got += n as usize,
            Err(libc::EINTR) => {}
            Err(libc::EAGAIN) => return Err("the receiver did not answer in time".into()),
            Err(e) => return Err(format!("reading from the receiver: {}", Errno(e))),
        }
    }
    Ok(())
}

fn send_all(fd: i32, b: &[u8]) -> Result<(), String> {
    sys::write_all(fd, b).map_err(|e| match e {
        libc::EPIPE | libc::ECONNRESET => "the receiver closed the connection".to_string(),
        libc::EAGAIN => "the receiver stopped reading (timed out)".to_string(),
        e => format!("sending to the receiver: {}", Errno(e)),
    })
}

/// Reads a status reply: `Ok(message)` or `Err(message)`.
fn read_status(fd: i32, mac: Option<(&[u8], &[u8; 32])>) -> Result<String, String> {
    let mut st = [0u8; 1];
    recv_exact(fd, &mut st)?;
    // An acceptance carries the receiver's proof; a refusal does not.
    let mut their_mac = [0u8; 32];
    if mac.is_some() && st[0] == 0 {
        recv_exact(fd, &mut their_mac)?;
    }
    let mut len = [0u8; 2];
    recv_exact(fd, &mut len)?;
    let mut msg = vec![0u8; u16::from_le_bytes(len) as usize];
    recv_exact(fd, &mut msg)?;
    let msg = String::from_utf8_lossy(&msg).into_owned();
    if st[0] != 0 {
        return Err(format!("the receiver refused: {msg}"));
    }
    if let Some((token, chal)) = mac {
        if !wire::mac_ok(token, b"pmig-receiver", chal, &their_mac) {
            return Err("the receiver could not prove it knows the token".into());
        }
    }
    Ok(msg)
}

/// A connection to a receiver that agreed to take the program.
pub struct Connection {
    /// Where the stream goes.
    pub fd: i32,
    /// Where the receiver's answers come from (`fd` itself for TCP; ssh's stdout).
    pub rfd: i32,
    /// The ssh client, for `ssh://` receivers.
    pub ssh: Option<std::process::Child>,
    /// The files the program uses, with their content hashes.
    pub offers: Vec<wire::FileOffer>,
    /// For each offer: carry it (the target lacks it or has another).
    pub carry: Vec<bool>,
    /// The hosts share a file system: nothing is carried.
    pub shared_fs: bool,
}

/// The files the program uses — its executable, every mapped file, every regular file open on
/// an fd — in this process and every other process of its tree (normal context: the program
/// runs, std may be used).
fn file_offers() -> Vec<wire::FileOffer> {
    let mut paths: Vec<String> = Vec::new();
    let mut written: Vec<String> = Vec::new();
    let pids = core::iter::once(sys::getpid()).chain(crate::tree::descendants().into_iter().filter(|f| !f.zombie).map(|f| f.pid));
    for pid in pids {
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            paths.push(exe.to_string_lossy().into_owned());
        }
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            for m in crate::memory::parse_maps(&maps) {
                if m.path.starts_with('/') && !m.path.ends_with(" (deleted)") && m.inode != 0 {
                    paths.push(m.path);
                }
            }
        }
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            let Ok(t) = std::fs::read_link(e.path()) else { continue };
            let t = t.to_string_lossy().into_owned();
            if t.starts_with('/') && !t.ends_with(" (deleted)") && std::fs::metadata(&t).is_ok_and(|m| m.is_file()) {
                let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()));
                let flags = info
                    .ok()
                    .and_then(|i| i.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| i32::from_str_radix(f.trim(), 8).ok()));
                if flags.is_some_and(|f| f & libc::O_ACCMODE != libc::O_RDONLY) {
                    written.push(t.clone());
                }
                paths.push(t);
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| !p.starts_with("/proc/") && !p.starts_with("/dev/") && !p.starts_with("/sys/"))
        .filter_map(|path| {
            let writable = written.contains(&path);
            let (size, sha256) = with_file(&path, |fd, _| {
                if writable {
                    return Ok([0; 32]);
                }
                let mut off = 0u64;
                wire::sha256_of(|b| {
                    let n = sys::pread(fd, b, off).map_err(std::io::Error::from_raw_os_error)? as usize;
                    off += n as u64;
                    Ok(n)
                })
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
            })
            .ok()?;
            Some(wire::FileOffer { path, size, sha256, writable })
        })
        .collect()
}

/// Runs `f` on an fd reading `path` and its size: one of this process's own fds on it when it
/// has one (opening and closing another would drop the POSIX locks the process holds on the
/// file: they go with the first close of any fd of it), else a new one, closed after.
fn with_file<T>(path: &str, f: impl FnOnce(i32, u64) -> Result<T, i32>) -> Result<(u64, T), i32> {
    let mut own = -1;
    let _ = sys::for_each_numbered_entry(b"/proc/self/fd\0", |fd, dir| {
        if own < 0 && fd != dir && sys::readlink_string(&sys::cstr(&format!("/proc/self/fd/{fd}"))).is_ok_and(|l| l == path) {
            let fl = sys::fcntl(fd, libc::F_GETFL, 0).map(|f| f as i32).unwrap_or(libc::O_WRONLY);
            if fl & libc::O_ACCMODE != libc::O_WRONLY {
                own = fd;
            }
        }
    });
    let fd = if own >= 0 { own } else { sys::openat(libc::AT_FDCWD, &sys::cstr(path), libc::O_RDONLY | libc::O_CLOEXEC, 0)? as i32 };
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    let r = sys::fstat(fd, &mut st).and_then(|_| f(fd, st.st_size as u64));
    if own < 0 {
        let _ = sys::close(fd);
    }
    r.map(|v| (st.st_size as u64, v))
}

/// Starts `ssh [user@]host pmig-resume --ssh-receiver` for `ssh://[user@]host[:port]`: the
/// transfer protocol then runs over its standard input and output (ssh authenticates both
/// ends; the token is empty). `$PMIG_SSH` replaces the `ssh` command (with options), and
/// `$PMIG_REMOTE_RESUME` the path of pmig-resume on the target.
fn spawn_ssh(spec: &str) -> Result<(i32, i32, std::process::Child), String> {
    use std::os::fd::IntoRawFd;
    let (dest, port) = match spec.rsplit_once(':') {
        Some((d, p)) if p.parse::<u16>().is_ok() => (d, Some(p)),
        _ => (spec, None),
    };
    let ssh = std::env::var("PMIG_SSH").unwrap_or_else(|_| "ssh".into());
    let mut words = ssh.split_whitespace();
    let mut cmd = std::process::Command::new(words.next().unwrap_or("ssh"));
    cmd.args(words).args(["-T", "-o", "BatchMode=yes"]);
    if let Some(p) = port {
        cmd.args(["-p", p]);
    }
    let remote = std::env::var("PMIG_REMOTE_RESUME").unwrap_or_else(|_| "pmig-resume".into());
    cmd.arg(dest).arg(format!("{remote} --ssh-receiver"));
    cmd.env_remove("LD_PRELOAD").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
    let w = child.stdin.take().map(|s| s.into_raw_fd()).unwrap_or(-1);
    let r = child.stdout.take().map(|s| s.into_raw_fd()).unwrap_or(-1);
    Ok((w, r, child))
}

/// Connects to `addr` (`ip:port` or `ssh://[user@]host[:port]`), authenticates, and agrees on
/// the files to carry.
pub fn connect(addr: &str, token: &[u8], lz4: bool, shared_fs: bool, live: bool) -> Result<Connection, String> {
    let flags = if lz4 { FLAG_LZ4 } else { 0 } | if live { wire::FLAG_LIVE } else { 0 };
    if let Some(spec) = addr.strip_prefix("ssh://") {
        let (w, r, mut child) = spawn_ssh(spec)?;
        return match handshake(w, r, b"", flags, shared_fs) {
            Ok((offers, carry)) => Ok(Connection { fd: w, rfd: r, ssh: Some(child), offers, carry, shared_fs }),
            Err(e) => {
                let _ = sys::close(w);
                let _ = sys::close(r);
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("through ssh to {spec}: {e}"))
            }
        };
    }
    let sa: std::net::SocketAddr = addr.parse().map_err(|_| format!("bad receiver address {addr}"))?;
    let s = socket2::Socket::new(socket2::Domain::for_address(sa), socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    // Large buffers keep a fast link full; timeouts keep a dead one from hanging the program.
    let _ = s.set_send_buffer_size(8 << 20);
    let _ = s.set_tcp_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    s.connect_timeout(&sa.into(), Duration::from_secs(10)).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let fd = s.into_raw_fd();
    match handshake(fd, fd, token, flags, shared_fs) {
        Ok((offers, carry)) => Ok(Connection { fd, rfd: fd, ssh: None, offers, carry, shared_fs }),
        Err(e) => {
            let _ = sys::close(fd);
            Err(e)
        }
    }
}

/// The protocol up to the image: greeting, proofs, file negotiation.
#[allow(clippy::type_complexity)]
fn handshake(fd: i32, rfd: i32, token: &[u8], flags: u32, shared_fs: bool) -> Result<(Vec<wire::FileOffer>, Vec<bool>), String> {
    {
        let mut hello = [0u8; HELLO_LEN];
        recv_exact(rfd, &mut hello)?;
        let c = wire::parse_hello(&hello)?;
        let mine = challenge();
        let auth = Auth {
            mac: wire::mac(token, b"pmig-sender", &c),
            flags,
            uid: sys::getuid(),
            challenge: mine,
        };
        let b: [u8; AUTH_LEN] = auth.to_bytes();
        send_all(fd, &b)?;
        read_status(rfd, Some((token, &mine)))?;
        let offers = if shared_fs { Vec::new() } else { file_offers() };
        send_all(fd, &wire::files_message(&offers))?;
        read_status(rfd, None)?;
        let mut carry = vec![0u8; offers.len()];
        recv_exact(rfd, &mut carry)?;
        Ok((offers, carry.into_iter().map(|c| c != 0).collect()))
    }
}

/// The receiver's verdict on the whole image, once it has it.
pub fn verdict(rfd: i32) -> Result<String, String> {
    read_status(rfd, None)
}

impl Connection {
    /// Closes the connection; an ssh client is given a moment to end its session (the remote
    /// side ends it once the process runs there), then stopped.
    pub fn close(&mut self) {
        let _ = sys::close(self.fd);
        if self.rfd != self.fd {
            let _ = sys::close(self.rfd);
        }
        if let Some(child) = self.ssh.as_mut() {
            let started = sys::monotonic_ms();
            while sys::monotonic_ms() - started < 10_000 {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                sys::sleep_ms(20);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The image stream to a receiver, in frames.
pub struct WireSink {
    fd: i32,
    rfd: i32,
    lz4: bool,
    buf: Vec<u8>,
    cbuf: Vec<u8>,
    total: u64,
    sent: u64,
    wire_bytes: u64,
    t0: u64,
    last_report: u64,
}

impl WireSink {
    /// A sink on the connected `fd` for an image of `total` bytes.
    pub fn new(fd: i32, rfd: i32, lz4: bool, total: u64) -> WireSink {
        WireSink {
            fd,
            rfd,
            lz4,
            buf: Vec::with_capacity(MAX_FRAME),
            cbuf: if lz4 { vec![0u8; lz4_flex::block::get_maximum_output_size(MAX_FRAME)] } else { Vec::new() },
            total,
            sent: 0,
            wire_bytes: 0,
            t0: sys::monotonic_ms(),
            last_report: 0,
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.buf.len();
        let compressed = if self.lz4 { lz4_flex::block::compress_into(&self.buf, &mut self.cbuf).ok() } else { None };
        match compressed {
            Some(c) if c + 4 < n => {
                send_all(self.fd, &wire::frame_header(frame::LZ4, (c + 4) as u32))?;
                send_all(self.fd, &(n as u32).to_le_bytes())?;
                send_all(self.fd, &self.cbuf[..c])?;
                self.wire_bytes += 9 + c as u64;
            }
            _ => {
                send_all(self.fd, &wire::frame_header(frame::RAW, n as u32))?;
                send_all(self.fd, &self.buf)?;
                self.wire_bytes += 5 + n as u64;
            }
        }
        self.sent += n as u64;
        self.buf.clear();
        self.progress(false);
        Ok(())
    }

    /// A progress line each second of a transfer longer than a second.
    fn progress(&mut self, last: bool) {
        let now = sys::monotonic_ms();
        let ms = now - self.t0;
        if ms < 1000 || (!last && now - self.last_report < 1000) {
            return;
        }
        self.last_report = now;
        let rate = self.sent as f64 / 1048576.0 / (ms as f64 / 1000.0);
        let left = if rate > 0.0 { (self.total.saturating_sub(self.sent)) as f64 / 1048576.0 / rate } else { 0.0 };
        log::say!(
            "sent {:.1} of {:.1} MiB ({:.1} MiB on the wire), {:.1} MiB/s, {:.0} s left",
            self.sent as f64 / 1048576.0,
            self.total as f64 / 1048576.0,
            self.wire_bytes as f64 / 1048576.0,
            rate,
            left
        );
    }

    /// Ends the stream and waits for the receiver's verdict on the whole image.
    pub fn finish(&mut self) -> Result<String, String> {
        self.flush()?;
        send_all(self.fd, &wire::frame_header(frame::END, 0))?;
        self.progress(true);
        read_status(self.rfd, None)
    }
}

impl Sink for WireSink {
    fn put(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let n = (MAX_FRAME - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == MAX_FRAME {
                self.flush()?;
            }
        }
        Ok(())
    }
}

/// Reads a whole file with raw system calls (the program is stopped), through the process's
/// own fd on it when it has one (see [`with_file`]).
fn read_whole(path: &str) -> Result<(Vec<u8>, libc::stat), String> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    with_file(path, |fd, size| {
        sys::fstat(fd, &mut st)?;
        sys::pread_all(fd, size)
    })
    .map(|(_, v)| (v, st))
    .map_err(|e| format!("cannot read {path} to carry it: {}", Errno(e)))
}

/// Puts the content hashes into the manifest's file identities, and the files the receiver
/// asked for into `carried`.
pub fn carry(m: &mut pmig_image::Manifest, c: &Connection) -> Result<(), String> {
    let hash = |path: &str| c.offers.iter().find(|o| o.path == path).map(|o| o.sha256);
    for r in m.regions.iter_mut() {
        if let pmig_image::RegionKind::File { path, ident, .. } = &mut r.kind {
            if let Some(h) = hash(path) {
                ident.sha256 = h;
            }
        }
    }
    for f in m.files.iter_mut() {
        if let pmig_image::FileKind::Regular { path, ident } = &mut f.kind {
            if let Some(h) = hash(path) {
                ident.sha256 = h;
            }
        }
    }
    for (o, _) in c.offers.iter().zip(&c.carry).filter(|(_, &carry)| carry) {
        // The offers were made while the tree still ran: a file removed since (a compiler's
        // temporary file) is in no image now (one still open is saved as a deleted file).
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        if sys::fstatat(libc::AT_FDCWD, &sys::cstr(&o.path), &mut st, 0) == Err(libc::ENOENT) {
            log::debug!("transfer: {} was removed since it was offered; not carried", o.path);
            continue;
        }
        carry_file(m, &o.path)?;
    }
    if c.shared_fs {
        return Ok(());
    }
    // Files opened since the offers were made (the tree ran meanwhile: a child's temporary
    // file) were never offered: carried too. The receiver writes each one it lacks and
    // refuses, before it confirms, one it has with other content.
    for path in open_files_now() {
        if !c.offers.iter().any(|o| o.path == path) && !m.carried.iter().any(|f| f.path == path) {
            log::debug!("transfer: {path} was opened after the files were offered; carried");
            carry_file(m, &path)?;
        }
    }
    Ok(())
}

fn carry_file(m: &mut pmig_image::Manifest, path: &str) -> Result<(), String> {
    let (content, st) = read_whole(path)?;
    m.carried.push(pmig_image::CarriedFile {
        path: path.to_string(),
        mode: st.st_mode & 0o7777,
        mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
        content,
    });
    Ok(())
}

/// The regular files open on an fd in this process and the rest of its tree, as the checkpoint
/// sees them with the tree stopped (raw system calls only: no libc allocation).
fn open_files_now() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let pids = core::iter::once(sys::getpid()).chain(crate::tree::descendants().into_iter().filter(|f| !f.zombie).map(|f| f.pid));
    for pid in pids {
        let dir = format!("/proc/{pid}/fd");
        let _ = sys::for_each_numbered_entry(&sys::cstr(&dir), |fd, dirfd| {
            if pid == sys::getpid() && fd == dirfd {
                return;
            }
            let Ok(t) = sys::readlink_string(&sys::cstr(&format!("{dir}/{fd}"))) else { return };
            if !t.starts_with('/') || t.ends_with(" (deleted)") || ["/proc/", "/dev/", "/sys/"].iter().any(|p| t.starts_with(p)) {
                return;
            }
            // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
            let mut st: libc::stat = unsafe { core::mem::zeroed() };
            if sys::fstatat(libc::AT_FDCWD, &sys::cstr(&t), &mut st, 0).is_ok() && st.st_mode & libc::S_IFMT == libc::S_IFREG && !out.contains(&t) {
                out.push(t);
            }
        });
    }
    out
}
