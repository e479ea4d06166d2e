//! Where an image comes from when it is not a file: standard input (`pmig-resume -`) or the
//! network (`pmig-resume --listen ADDR:PORT`). Either way it is spooled into a memfd and fully
//! verified before anything acts on it; a receiver refuses a sender that cannot prove it knows
//! the shared token before reading a single image byte, logs every refusal with the peer's
//! address, and stays up for the next sender. See `pmig_image::wire` for the protocol.

use anyhow::{bail, Context, Result};
use pmig_image::wire::{self, frame, Auth, AUTH_LEN, FLAG_LZ4, MAX_FRAME};
use pmig_image::{verify_file, VerifiedImage};
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The largest image a receiver takes (it is held in memory until restored).
const MAX_IMAGE: u64 = 1 << 40;

/// An image held in a memfd, with the path that names it.
pub struct Spooled {
    pub file: File,
    pub path: PathBuf,
}

fn memfd() -> Result<Spooled> {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"pmig-image".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        bail!("memfd_create: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the memfd just created, owned here.
    let file = unsafe { File::from_raw_fd(fd) };
    Ok(Spooled { file, path: PathBuf::from(format!("/proc/self/fd/{fd}")) })
}

/// Reads an image from standard input (`pmig-resume -`).
pub fn from_stdin() -> Result<Spooled> {
    let mut s = memfd()?;
    let n = std::io::copy(&mut std::io::stdin().lock(), &mut s.file).context("cannot read the image from standard input")?;
    if n == 0 {
        bail!("standard input was empty: no image");
    }
    Ok(s)
}

/// How a receiver judges senders.
pub struct Receiver {
    pub token: Vec<u8>,
    /// As root, take images of other users' processes (restored as their owner).
    pub as_owner: bool,
    /// Put carried files under this directory instead of at their own paths.
    pub root: Option<PathBuf>,
    /// Refuse processes of other users (off through ssh, where the login decides the user).
    pub check_uid: bool,
    /// Makes the host ready for a verified image (writes carried files) and checks it can run
    /// here, before the sender is told it can go: an image this host cannot run leaves the
    /// program running on the source.
    pub ready: fn(&mut VerifiedImage, Option<&std::path::Path>) -> Result<()>,
}

/// SHA-256 of the file at `path`.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    wire::sha256_of(|b| f.read(b))
}

fn random32() -> Result<[u8; 32]> {
    let mut c = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut c)).context("cannot read /dev/urandom")?;
    Ok(c)
}

/// The two directions of a transfer: a TCP connection, or ssh's standard input and output.
pub trait Conn: Read + Write {}
impl Conn for socket2::Socket {}

/// `pmig-resume --ssh-receiver`: the wire protocol on standard input and output.
pub struct Stdio;

impl Read for Stdio {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        std::io::stdin().lock().read(b)
    }
}

impl Write for Stdio {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

impl Conn for Stdio {}

fn send_status(conn: &mut dyn Conn, ok: bool, mac: Option<[u8; 32]>, msg: &str) {
    let st = wire::status(ok, msg);
    let mut out = Vec::with_capacity(st.len() + 32);
    out.push(st[0]);
    if let Some(m) = mac {
        out.extend_from_slice(&m);
    }
    out.extend_from_slice(&st[1..]);
    let _ = conn.write_all(&out);
    let _ = conn.flush();
}

impl Receiver {
    /// Receives one image on `conn`: handshake, frames, verification, verdict.
    pub fn receive(&self, conn: &mut dyn Conn) -> Result<(Spooled, VerifiedImage)> {
        let challenge = random32()?;
        conn.write_all(&wire::hello(&challenge)).and_then(|_| conn.flush()).context("cannot greet the sender")?;
        let mut auth = [0u8; AUTH_LEN];
        conn.read_exact(&mut auth).context("the sender did not authenticate (no or short answer)")?;
        let auth = Auth::from_bytes(&auth);
        if !wire::mac_ok(&self.token, b"pmig-sender", &challenge, &auth.mac) {
            send_status(conn, false, None, "authentication failed");
            bail!("authentication failed: the sender does not know the token");
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if self.check_uid && auth.uid != me && !(me == 0 && self.as_owner) {
            let why = format!("the process belongs to uid {}, this receiver runs as uid {me}", auth.uid);
            send_status(conn, false, None, &why);
            bail!("{why} (as root, --as-owner takes it)");
        }
        send_status(conn, true, Some(wire::mac(&self.token, b"pmig-receiver", &auth.challenge)), "ok");

        // Which of the program's files this host lacks (carry them) or has otherwise (carry
        // them only if they can go under --root: a file here is never replaced).
        let offers = match wire::read_files_message(|b| conn.read_exact(b)).context("the sender did not list its files")? {
            Ok(o) => o,
            Err(e) => {
                send_status(conn, false, None, &e);
                bail!("{e}");
            }
        };
        let mut carry = Vec::with_capacity(offers.len());
        let mut differ = Vec::new();
        for o in &offers {
            let p = std::path::Path::new(&o.path);
            let missing = std::fs::symlink_metadata(p).is_err();
            // The program's output files: the target's copy is used as it is.
            let same = (o.writable && !missing)
                || (std::fs::metadata(p).is_ok_and(|m| m.len() == o.size) && sha256_file(p).is_ok_and(|h| h == o.sha256));
            carry.push(u8::from(!same));
            if !same && !missing && self.root.is_none() {
                differ.push(o.path.clone());
            }
        }
        if !differ.is_empty() {
            let why = format!(
                "{} file(s) the program uses differ on this host ({}{}); pmig never replaces them: restart the receiver with --root DIR to put the program's copies there",
                differ.len(),
                differ.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                if differ.len() > 3 { ", ..." } else { "" }
            );
            send_status(conn, false, None, &why);
            bail!("{why}");
        }
        let n_carry = carry.iter().filter(|&&c| c != 0).count();
        let mut reply = wire::status(true, &format!("{n_carry} file(s) to carry"));
        reply.extend_from_slice(&carry);
        conn.write_all(&reply).and_then(|_| conn.flush()).context("cannot answer the sender's file list")?;

        let mut s = memfd()?;
        let lz4 = auth.flags & FLAG_LZ4 != 0;
        let mut buf = vec![0u8; MAX_FRAME + MAX_FRAME / 255 + 64];
        let mut out = vec![0u8; MAX_FRAME];
        let mut total = 0u64;
        let started = Instant::now();
        let mut last = Instant::now();
        loop {
            let mut h = [0u8; 5];
            conn.read_exact(&mut h).context("the stream ended before its end mark (truncated)")?;
            let (kind, len) = wire::parse_frame_header(&h).map_err(anyhow::Error::msg)?;
            let data = &mut buf[..len as usize];
            conn.read_exact(data).context("the stream ended inside a frame (truncated)")?;
            let bytes: &[u8] = match kind {
                frame::END => break,
                frame::RAW => data,
                _ => {
                    if !lz4 || len < 4 {
                        bail!("a compressed frame the sender did not announce");
                    }
                    let raw = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
                    if raw > MAX_FRAME {
                        bail!("a compressed frame claims {raw} bytes");
                    }
                    let n = lz4_flex::block::decompress_into(&data[4..], &mut out[..raw])
                        .map_err(|e| anyhow::anyhow!("a compressed frame does not decompress: {e}"))?;
                    if n != raw {
                        bail!("a compressed frame decompresses to {n} bytes, not {raw}");
                    }
                    &out[..raw]
                }
            };
            total += bytes.len() as u64;
            if total > MAX_IMAGE {
                bail!("the image is larger than {MAX_IMAGE} bytes");
            }
            s.file.write_all(bytes).context("cannot hold the image in memory")?;
            if started.elapsed() > Duration::from_secs(1) && last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let mib = total as f64 / 1048576.0;
                say!("pmig-resume: received {mib:.1} MiB, {:.1} MiB/s", mib / started.elapsed().as_secs_f64());
            }
        }
        match verify_file(&s.path) {
            Ok(mut img) => match (self.ready)(&mut img, self.root.as_deref()) {
                Ok(()) => {
                    send_status(conn, true, None, "the whole image arrived and checks out");
                    Ok((s, img))
                }
                Err(e) => {
                    send_status(conn, false, None, &format!("this host cannot run it: {e:#}"));
                    Err(e.context("this host cannot run it"))
                }
            },
            Err(e) => {
                send_status(conn, false, None, &format!("the image does not check out: {e}"));
                Err(anyhow::Error::new(e).context("the image does not check out"))
            }
        }
    }

    /// Listens on `addr` until an image arrives and checks out; returns it. With
    /// `keep_listening`, forks one child per image (the child returns it, to restore it) and
    /// never returns in the parent.
    pub fn listen(&self, addr: &str, keep_listening: bool) -> Result<(Spooled, VerifiedImage)> {
        // A bare port listens on loopback: another address must be asked for.
        let addr = if addr.parse::<u16>().is_ok() { format!("127.0.0.1:{addr}") } else { addr.to_string() };
        let addr = addr.as_str();
        let sa: SocketAddr = addr.parse().with_context(|| format!("--listen {addr}: expected [ADDR:]PORT, e.g. 7070 or 10.0.0.2:7070"))?;
        let l = socket2::Socket::new(socket2::Domain::for_address(sa), socket2::Type::STREAM, None).context("socket")?;
        let _ = l.set_reuse_address(true);
        let _ = l.set_recv_buffer_size(8 << 20);
        l.bind(&sa.into()).with_context(|| format!("cannot listen on {addr}"))?;
        l.listen(16).with_context(|| format!("cannot listen on {addr}"))?;
        let local = l.local_addr().ok().and_then(|a| a.as_socket()).map_or(addr.to_string(), |a| a.to_string());
        say!("pmig-resume: listening on {local}");
        if keep_listening {
            // SAFETY: setting SIGCHLD to SIG_IGN makes the kernel reap our children.
            unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        }
        loop {
            let (mut conn, peer) = match l.accept() {
                Ok(c) => c,
                Err(e) => {
                    say!("pmig-resume: accept: {e}");
                    continue;
                }
            };
            let peer = peer.as_socket().map_or("?".to_string(), |a| a.to_string());
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
            match self.receive(&mut conn) {
                Ok(got) => {
                    say!("pmig-resume: image from {peer} received and verified");
                    drop(conn);
                    if !keep_listening {
                        return Ok(got);
                    }
                    // SAFETY: pmig-resume is single-threaded here; the child only restores.
                    match unsafe { libc::fork() } {
                        0 => return Ok(got),
                        -1 => say!("pmig-resume: cannot fork a restorer: {}", std::io::Error::last_os_error()),
                        child => say!("pmig-resume: restoring it as pid {child}"),
                    }
                }
                Err(e) => say!("pmig-resume: refused {peer}: {e:#}"),
            }
        }
    }
}

/// Writes the files the image carries (never over an existing file) and creates a missing
/// working directory; with `root`, under it, rewriting the image's paths to match. Returns
/// what it did, for the log.
pub fn materialize(img: &mut VerifiedImage, root: Option<&std::path::Path>) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut done = Vec::new();
    let place = |p: &str| match root {
        Some(r) => r.join(p.trim_start_matches('/')),
        None => PathBuf::from(p),
    };
    let m = &mut img.manifest;
    let mut moved: Vec<(String, String)> = Vec::new();
    for c in &m.carried {
        let to = place(&c.path);
        if std::fs::symlink_metadata(&to).is_ok() {
            let same = sha256_file(&to).ok() == Some(wire_hash(&c.content));
            if !same {
                bail!("{} exists here and differs from the program's copy; it is left alone (use another --root)", to.display());
            }
        } else {
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&to, &c.content).with_context(|| format!("cannot write {}", to.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(c.mode)).ok();
            let ts = libc::timespec { tv_sec: (c.mtime_ns / 1_000_000_000) as i64, tv_nsec: (c.mtime_ns % 1_000_000_000) as i64 };
            let times = [ts, ts];
            let cpath = std::ffi::CString::new(to.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: utimensat with a NUL-terminated path and two timespecs we own.
            unsafe { libc::utimensat(libc::AT_FDCWD, cpath.as_ptr(), times.as_ptr(), 0) };
            done.push(format!("carried {} ({} bytes)", to.display(), c.content.len()));
        }
        if root.is_some() {
            moved.push((c.path.clone(), to.to_string_lossy().into_owned()));
        }
    }
    let cwd = place(&m.process.cwd);
    if !cwd.is_dir() {
        std::fs::create_dir_all(&cwd).with_context(|| format!("cannot create the working directory {}", cwd.display()))?;
        done.push(format!("created the working directory {}", cwd.display()));
    }
    if root.is_some() {
        m.process.cwd = cwd.to_string_lossy().into_owned();
    }
    let renamed = |p: &mut String| {
        if let Some((_, to)) = moved.iter().find(|(from, _)| from == p) {
            *p = to.clone();
        }
    };
    for r in m.regions.iter_mut() {
        if let pmig_image::RegionKind::File { path, .. } = &mut r.kind {
            renamed(path);
        }
    }
    for f in m.files.iter_mut() {
        if let pmig_image::FileKind::Regular { path, .. } = &mut f.kind {
            renamed(path);
        }
    }
    if root.is_some() || !moved.is_empty() {
        img.manifest_bytes = pmig_image::encode(m).context("cannot encode the manifest")?;
    }
    Ok(done)
}

fn wire_hash(b: &[u8]) -> [u8; 32] {
    let mut at = 0;
    wire::sha256_of(|buf| {
        let n = (b.len() - at).min(buf.len());
        buf[..n].copy_from_slice(&b[at..at + n]);
        at += n;
        Ok(n)
    })
    .unwrap_or([0; 32])
}
