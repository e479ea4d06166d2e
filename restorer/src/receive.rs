//! Where an image comes from when it is not a file: standard input (`pmig-resume -`) or the
//! network (`pmig-resume --listen ADDR:PORT`). Either way it is spooled into a memfd and fully
//! verified before anything acts on it; a receiver refuses a sender that cannot prove it knows
//! the shared token before reading a single image byte, logs every refusal with the peer's
//! address, and stays up for the next sender. See `pmig_image::wire` for the protocol.
//!
//! `--listen` serves every connection in a thread of its own, within deadlines and caps
//! (see [`Served`]), so no peer can hold up another; a received image is restored by `exec`
//! of `pmig-resume --received FD`, in a process with one thread again.

use anyhow::{bail, Context, Result};
use pmig_image::wire::{self, Auth, AUTH_LEN};
use pmig_image::{verify_file, verify_file_pages, VerifiedImage};
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

/// A packed image file (`pmig-run --compress --image`) unpacked into a memfd, or `None`
/// for a plain one. `lazy`: only the blocks a restore reads before the program runs are
/// unpacked now (as the checks and the engine read them, through [`Packed`]); the others
/// when the pager needs them.
pub fn unpack_file(path: &std::path::Path, lazy: bool) -> Result<Option<(Spooled, Packed)>> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut first = [0u8; 8];
    let n = f.read(&mut first).unwrap_or(0);
    if !pmig_image::packed::is_packed(&first[..n]) {
        return Ok(None);
    }
    drop(f);
    let t0 = std::time::Instant::now();
    // The packed file is mapped (read in as its blocks are decoded), its blocks decoded into
    // their places in the memfd.
    let packed = Mapped::new(path)?;
    let (blocks, len) = pmig_image::packed::blocks(packed.bytes()).context("cannot unpack the image")?;
    let s = memfd()?;
    s.file.set_len(len).context("cannot size the memfd for the unpacked image")?;
    let done = blocks.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
    let p = Packed { packed: std::sync::Arc::new(packed), blocks: blocks.into(), done: std::sync::Arc::new(done), len };
    if !lazy {
        p.finish(&s.file)?;
        say!(
            "pmig-resume: unpacked the image ({:.1} MiB on disk, {:.1} MiB plain) in {} ms",
            p.packed.bytes().len() as f64 / 1048576.0,
            len as f64 / 1048576.0,
            t0.elapsed().as_millis()
        );
    }
    Ok(Some((s, p)))
}

/// A file mapped read-only and shared, whole (a file another process or thread fills in
/// meanwhile, as a packed image's memfd, shows what was written).
pub struct Mapped {
    ptr: *const u8,
    len: usize,
}

// SAFETY: a read-only mapping, never written through, unmapped only on drop.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    pub fn new(path: &std::path::Path) -> Result<Mapped> {
        use std::os::fd::AsRawFd;
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f.metadata()?.len() as usize;
        if len == 0 {
            bail!("{} is empty", path.display());
        }
        // SAFETY: a fresh read-only mapping of a file we opened; checked below.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            bail!("cannot map {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr: p as *const u8, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A packed image being unpacked into its memfd, block by block as parts of it are needed
/// (shared with the pager: [`Packed::share`]).
#[derive(Clone)]
pub struct Packed {
    packed: std::sync::Arc<Mapped>,
    blocks: std::sync::Arc<[pmig_image::packed::Block]>,
    /// Which blocks are in the memfd.
    done: std::sync::Arc<Vec<std::sync::atomic::AtomicBool>>,
    /// The plain image's length.
    pub len: u64,
}

impl Packed {
    /// Unpacks into `file` every block `[off, off + len)` of the plain image touches that is
    /// not there yet.
    pub fn ensure(&self, file: &File, off: u64, len: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::Ordering::*;
        let bs = pmig_image::packed::BLOCK as u64;
        let (first, last) = ((off / bs) as usize, ((off + len.max(1) - 1) / bs) as usize);
        let mut buf = Vec::new();
        for i in first..=last.min(self.blocks.len().saturating_sub(1)) {
            if self.done[i].load(Acquire) {
                continue;
            }
            let b = &self.blocks[i];
            buf.resize(pmig_image::packed::BLOCK, 0);
            pmig_image::packed::decode(self.packed.bytes(), b, &mut buf).context("cannot unpack the image")?;
            file.write_all_at(&buf[..b.plain_len], b.plain_at).context("cannot write the unpacked image")?;
            self.done[i].store(true, Release);
        }
        Ok(())
    }

    /// The same unpacking, for another thread.
    pub fn share(&self) -> Packed {
        self.clone()
    }

    /// Unpacks every block not in `file` yet, on every core.
    pub fn finish(&self, file: &File) -> Result<()> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let bs = pmig_image::packed::BLOCK as u64;
        std::thread::scope(|sc| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    sc.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= self.blocks.len() {
                                return Ok(());
                            }
                            self.ensure(file, i as u64 * bs, 1)?;
                        }
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an unpacking thread failed"))))
        })
    }

    /// A reader of the plain image in `file` that unpacks what it reads first.
    pub fn reader<'a>(&'a self, file: &'a File) -> PackedReader<'a> {
        PackedReader { packed: self, file, pos: 0 }
    }
}

/// See [`Packed::reader`].
pub struct PackedReader<'a> {
    packed: &'a Packed,
    file: &'a File,
    pos: u64,
}

impl Read for PackedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = (buf.len() as u64).min(self.packed.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.packed.ensure(self.file, self.pos, n as u64).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl std::io::Seek for PackedReader<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let base = match to {
            std::io::SeekFrom::Start(o) => o as i128,
            std::io::SeekFrom::End(d) => self.packed.len as i128 + d as i128,
            std::io::SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if base < 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        self.pos = base as u64;
        Ok(self.pos)
    }
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

fn send_status(conn: &mut dyn Conn, ok: bool, mac: Option<[u8; 32]>, msg: &str) -> std::io::Result<()> {
    let st = wire::status(ok, msg);
    let mut out = Vec::with_capacity(st.len() + 32);
    out.push(st[0]);
    if let Some(m) = mac {
        out.extend_from_slice(&m);
    }
    out.extend_from_slice(&st[1..]);
    conn.write_all(&out).and_then(|_| conn.flush())
}

/// Refuses: tells the sender why (if it still listens) and fails with the same reason.
fn refuse<T>(conn: &mut dyn Conn, why: String) -> Result<T> {
    let _ = send_status(conn, false, None, &why);
    bail!("{why}")
}

impl Receiver {
    /// Receives one image on `conn`: handshake, frames, verification, verdict. Used through
    /// ssh, where there is one sender and no one else to wait for.
    pub fn receive(&self, conn: &mut dyn Conn) -> Result<(Spooled, VerifiedImage)> {
        let auth = self.authenticate(conn)?;
        self.admit(conn, &auth)?;
        let got = self.take(conn, &auth, &std::sync::Mutex::new(()))?;
        send_status(conn, true, None, "the whole image arrived and checks out").context("cannot tell the sender the image arrived")?;
        Ok(got)
    }

    /// HELLO, then AUTH: the sender's proof that it knows the token, and whose process it
    /// sends. Refuses (telling the sender) a wrong proof or another user's process. Reads
    /// [`AUTH_LEN`] bytes at most.
    fn authenticate(&self, conn: &mut dyn Conn) -> Result<Auth> {
        let challenge = random32()?;
        conn.write_all(&wire::hello(&challenge)).and_then(|_| conn.flush()).context("cannot greet the sender")?;
        let mut auth = [0u8; AUTH_LEN];
        conn.read_exact(&mut auth).context("the sender did not authenticate (no or short answer)")?;
        let auth = Auth::from_bytes(&auth);
        if !wire::mac_ok(&self.token, b"pmig-sender", &challenge, &auth.mac) {
            let _ = send_status(conn, false, None, "authentication failed");
            bail!("authentication failed: the sender does not know the token");
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if self.check_uid && auth.uid != me && !(me == 0 && self.as_owner) {
            let why = format!("the process belongs to uid {}, this receiver runs as uid {me}", auth.uid);
            let _ = send_status(conn, false, None, &why);
            bail!("{why} (as root, --as-owner takes it)");
        }
        Ok(auth)
    }

    /// ACCEPT: the receiver's own proof; the sender may go on.
    fn admit(&self, conn: &mut dyn Conn, auth: &Auth) -> Result<()> {
        send_status(conn, true, Some(wire::mac(&self.token, b"pmig-receiver", &auth.challenge)), "ok").context("cannot answer the sender")
    }

    /// FILES, NEEDS, the frames, verification and `ready` (run under `ready_lock`: two
    /// senders never write carried files at once). Everything but the final good verdict,
    /// which the caller sends once it knows it will restore the image.
    fn take(&self, conn: &mut dyn Conn, auth: &Auth, ready_lock: &std::sync::Mutex<()>) -> Result<(Spooled, VerifiedImage)> {
        // Which of the program's files this host lacks (carry them) or has otherwise (carry
        // them only if they can go under --root: a file here is never replaced).
        let offers = match wire::read_files_message(|b| conn.read_exact(b)).context("the sender did not list its files")? {
            Ok(o) => o,
            Err(e) => return refuse(conn, e),
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
            return refuse(conn, why);
        }
        let n_carry = carry.iter().filter(|&&c| c != 0).count();
        let mut reply = wire::status(true, &format!("{n_carry} file(s) to carry"));
        reply.extend_from_slice(&carry);
        conn.write_all(&reply).and_then(|_| conn.flush()).context("cannot answer the sender's file list")?;

        let mut s = memfd()?;
        let live = auth.flags & wire::FLAG_LIVE != 0;
        let mut frames = wire::Frames::new(auth.flags, MAX_IMAGE);
        let mut sums = wire::PageSums::default();
        let started = Instant::now();
        let mut last = Instant::now();
        loop {
            use std::os::unix::fs::FileExt;
            let put = |f: &File, off: u64, b: &[u8]| f.write_all_at(b, off).context("cannot hold the image in memory");
            match frames.next(|b| conn.read_exact(b))? {
                wire::Frame::End => break,
                wire::Frame::Bytes(bytes) => s.file.write_all(bytes).context("cannot hold the image in memory")?,
                wire::Frame::At { off, data } => put(&s.file, off, data)?,
                wire::Frame::Pages { off, data } => {
                    sums.put(off, data);
                    put(&s.file, pmig_image::FAR_PAGES_OFF + off, data)?;
                }
                wire::Frame::Round { round, bytes } => {
                    if std::env::var_os("PMIG_DEBUG").is_some_and(|v| !v.is_empty() && v != "0") {
                        say!("pmig-resume: pre-copy round {round}: {:.1} MiB", bytes as f64 / 1048576.0);
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(1) && last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let mib = frames.total as f64 / 1048576.0;
                say!("pmig-resume: received {mib:.1} MiB, {:.1} MiB/s", mib / started.elapsed().as_secs_f64());
            }
        }
        drop(frames);
        // A live move's pages were checked as they came (each page's checksum, put together
        // into the runs' here); anything else is read and checked whole.
        let checked = if live {
            verify_file_pages(&s.path, pmig_image::Pages::Unread).map_err(|e| e.to_string()).and_then(|img| {
                if !img.header.is_sparse() || !img.manifest.tree.is_empty() {
                    return Err("a live move's image is not laid out as one".to_string());
                }
                sums.check(&img).map(|_| img)
            })
        } else {
            verify_file(&s.path).map_err(|e| e.to_string())
        };
        let mut img = match checked {
            Ok(img) => img,
            Err(e) => {
                let _ = send_status(conn, false, None, &format!("the image does not check out: {e}"));
                bail!("the image does not check out: {e}");
            }
        };
        let ready = {
            let _held = ready_lock.lock().unwrap_or_else(|p| p.into_inner());
            (self.ready)(&mut img, self.root.as_deref())
        };
        if let Err(e) = ready {
            let _ = send_status(conn, false, None, &format!("this host cannot run it: {e:#}"));
            return Err(e.context("this host cannot run it"));
        }
        Ok((s, img))
    }

    /// Listens on `addr` and serves senders concurrently, each in a thread of its own (see
    /// [`Served`]). The first image that arrives and checks out is restored in this process
    /// (through `exec` of `pmig-resume --received FD resume_args...`, which leaves one
    /// thread); with `keep_listening`, each is restored by a child of its own and the
    /// receiver goes on. Returns only on failure to listen.
    pub fn listen(&self, addr: &str, keep_listening: bool, resume_args: &[std::ffi::OsString]) -> Result<std::convert::Infallible> {
        // A bare port listens on loopback: another address must be asked for.
        let addr = if addr.parse::<u16>().is_ok() { format!("127.0.0.1:{addr}") } else { addr.to_string() };
        let addr = addr.as_str();
        let sa: SocketAddr = addr.parse().with_context(|| format!("--listen {addr}: expected [ADDR:]PORT, e.g. 7070 or 10.0.0.2:7070"))?;
        let l = socket2::Socket::new(socket2::Domain::for_address(sa), socket2::Type::STREAM, None).context("socket")?;
        let _ = l.set_reuse_address(true);
        let _ = l.set_recv_buffer_size(8 << 20);
        l.bind(&sa.into()).with_context(|| format!("cannot listen on {addr}"))?;
        l.listen(128).with_context(|| format!("cannot listen on {addr}"))?;
        let local = l.local_addr().ok().and_then(|a| a.as_socket()).map_or(addr.to_string(), |a| a.to_string());
        let me = std::env::current_exe().context("cannot find my own path (to start restorers)")?;
        say!("pmig-resume: listening on {local}");
        if keep_listening {
            // SAFETY: setting SIGCHLD to SIG_IGN makes the kernel reap our children.
            unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        }
        let served = Served { receiver: self, keep_listening, me: &me, resume_args, pending: Default::default(), senders: Default::default(), won: Default::default(), ready_lock: Default::default() };
        std::thread::scope(|scope| {
            let mut next_id = 0u64;
            loop {
                let (conn, peer) = match l.accept() {
                    Ok(c) => c,
                    Err(e) => {
                        say!("pmig-resume: accept: {e}");
                        // EMFILE and the like: give the connection threads a moment to end.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                next_id += 1;
                let peer = peer.as_socket().map_or("?".to_string(), |a| a.to_string());
                let id = next_id;
                if !served.pend(id, &conn) {
                    say!("pmig-resume: refused {peer}: cannot track the connection");
                    continue;
                }
                let served = &served;
                let spawned = std::thread::Builder::new()
                    .name(format!("pmig-conn-{id}"))
                    .stack_size(256 << 10)
                    .spawn_scoped(scope, move || served.serve(id, conn, &peer));
                if let Err(e) = spawned {
                    served.unpend(id);
                    say!("pmig-resume: cannot serve a connection: {e}");
                }
            }
        })
    }
}

/// How long an unauthenticated peer has, in all, to prove it knows the token.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an authenticated sender may go without sending anything.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections waiting for their handshake, at most: one more closes the oldest.
pub const MAX_PENDING: usize = 64;
/// Authenticated transfers at once, at most (each holds about 8 MiB of buffers and its
/// image): one more is refused, and its program goes on where it is.
pub const MAX_SENDERS: usize = 8;

/// A receiver's connections: what `--listen` shares between its threads.
///
/// Bounds: an unauthenticated peer makes the receiver read [`AUTH_LEN`] bytes, within
/// [`HANDSHAKE_TIMEOUT`] in all, and is one of at most [`MAX_PENDING`] (a new connection
/// beyond closes the oldest, so a flood of idle peers cannot keep a quick sender out); an
/// authenticated one is one of at most [`MAX_SENDERS`], may send a file list of
/// `wire::MAX_FILES_BYTES` and an image of [`MAX_IMAGE`], and is dropped after
/// [`IDLE_TIMEOUT`] of silence.
struct Served<'a> {
    receiver: &'a Receiver,
    keep_listening: bool,
    /// This executable, exec'd to restore.
    me: &'a std::path::Path,
    resume_args: &'a [std::ffi::OsString],
    /// Connections still in their handshake, oldest first, each with a handle (a dup of
    /// its socket) to close it.
    pending: std::sync::Mutex<std::collections::VecDeque<(u64, socket2::Socket)>>,
    /// Authenticated transfers in progress.
    senders: std::sync::atomic::AtomicUsize,
    /// Without --keep-listening: an image is taken; others are refused.
    won: std::sync::atomic::AtomicBool,
    ready_lock: std::sync::Mutex<()>,
}

/// A TCP connection to a sender, with a deadline on its reads while it has not
/// authenticated.
struct Tcp {
    sock: socket2::Socket,
    deadline: Option<Instant>,
}

impl Read for Tcp {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let timed_out = || match self.deadline {
            Some(_) => format!("past the handshake deadline ({} s)", HANDSHAKE_TIMEOUT.as_secs()),
            None => format!("silent for {} s", IDLE_TIMEOUT.as_secs()),
        };
        let wait = match self.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => IDLE_TIMEOUT,
        };
        if wait.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, timed_out()));
        }
        self.sock.set_read_timeout(Some(wait))?;
        match (&self.sock).read(b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, timed_out())),
            r => r,
        }
    }
}

impl Write for Tcp {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        (&self.sock).write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Conn for Tcp {}

/// Decrements a count when dropped.
struct Held<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Served<'_> {
    /// Notes a new connection as waiting for its handshake, closing the oldest waiting one
    /// if there are [`MAX_PENDING`] already.
    fn pend(&self, id: u64, conn: &socket2::Socket) -> bool {
        let Ok(handle) = conn.try_clone() else { return false };
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while p.len() >= MAX_PENDING {
            if let Some((_, old)) = p.pop_front() {
                let _ = old.shutdown(std::net::Shutdown::Both);
            }
        }
        p.push_back((id, handle));
        true
    }

    /// Forgets a connection's handle; false if it was closed to make room.
    fn unpend(&self, id: u64) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match p.iter().position(|(i, _)| *i == id) {
            Some(at) => {
                p.remove(at);
                true
            }
            None => false,
        }
    }

    /// Serves one connection, start to end; logs its refusal or its program's restore.
    fn serve(&self, id: u64, sock: socket2::Socket, peer: &str) {
        let _ = sock.set_write_timeout(Some(IDLE_TIMEOUT));
        let mut conn = Tcp { sock, deadline: Some(Instant::now() + HANDSHAKE_TIMEOUT) };
        match self.serve_conn(id, &mut conn, peer) {
            Ok(()) => {}
            Err(e) => say!("pmig-resume: refused {peer}: {e:#}"),
        }
    }

    fn serve_conn(&self, id: u64, conn: &mut Tcp, peer: &str) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let r = self.receiver;
        let auth = r.authenticate(conn);
        if !self.unpend(id) {
            bail!("closed to make room: {MAX_PENDING} connections were waiting for their handshake, this one the longest");
        }
        let auth = auth?;
        conn.deadline = None;
        let _held = Held(&self.senders);
        if self.senders.fetch_add(1, SeqCst) >= MAX_SENDERS {
            return refuse(conn, format!("the receiver is busy ({MAX_SENDERS} transfers in progress); try again"));
        }
        if !self.keep_listening && self.won.load(SeqCst) {
            return refuse(conn, "this receiver has taken another program already".into());
        }
        r.admit(conn, &auth)?;
        let (s, _img) = r.take(conn, &auth, &self.ready_lock)?;
        if !self.keep_listening && self.won.swap(true, SeqCst) {
            return refuse(conn, "this receiver has taken another program already".into());
        }
        if let Err(e) = send_status(conn, true, None, "the whole image arrived and checks out") {
            self.won.store(false, SeqCst);
            bail!("cannot tell the sender the image arrived: {e}");
        }
        say!("pmig-resume: image from {peer} received and verified");
        self.restore(s)
    }

    /// Restores a received image: `exec` of `pmig-resume --received FD` (which verifies it
    /// again and restores it in a process with one thread, as `unshare` needs), in this
    /// process or, with --keep-listening, in a child.
    fn restore(&self, s: Spooled) -> Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = s.file.as_raw_fd();
        let mut cmd = std::process::Command::new(self.me);
        cmd.arg("--received").arg(fd.to_string()).args(self.resume_args);
        // SAFETY: fcntl and signal are async-signal-safe, and touch only the child's own
        // fd table and dispositions.
        unsafe {
            cmd.pre_exec(move || {
                // The memfd goes on into the restorer; SIGCHLD as the program expects it.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                Ok(())
            })
        };
        if self.keep_listening {
            let child = cmd.spawn().context("cannot start a restorer")?;
            say!("pmig-resume: restoring it as pid {}", child.id());
            return Ok(());
        }
        // The other threads end with the exec.
        let err = cmd.exec();
        say!("pmig-resume: cannot start the restorer {}: {err}", self.me.display());
        std::process::exit(2)
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
