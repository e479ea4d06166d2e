//! The manifest: everything about the saved process except its page contents.
//!
//! Types are named `*State` after what they save. The format is versioned as a whole (see
//! `VERSION`); fields are only ever added, with a version bump and a default for older images.

use serde::{Deserialize, Serialize};

/// The whole saved process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub host: HostState,
    pub process: ProcessState,
    pub settings: SettingsState,
    pub threads: Vec<ThreadState>,
    pub ckpt: CkptThreadState,
    pub signals: Vec<SigActionState>,
    pub itimers: Vec<ItimerState>,
    pub timers: Vec<PosixTimerState>,
    pub files: Vec<FileState>,
    pub fds: Vec<FdState>,
    pub regions: Vec<RegionState>,
    /// Shared memory objects without a name in the file system (memfds, deleted files) that
    /// regions map shared; fds of the same inode refer to the same object after restore.
    pub objects: Vec<ObjectState>,
    pub vdso: VdsoState,
    /// Files the target lacked or had different, carried to it (network transfers).
    pub carried: Vec<CarriedFile>,
    /// The other processes of the program's tree (in the root's manifest only; empty for a
    /// single process): each one's own image lies earlier in the same file.
    pub tree: Vec<MemberState>,
    /// Regions with `madvise`/`mlock`/`MAP_NORESERVE` flags (smaps `VmFlags`), to set again.
    pub advice: Vec<RegionAdvice>,
    /// System V semaphore sets and message queues the process got (`semget`, `msgget`) and
    /// that still existed, with their state.
    pub sysv: Vec<SysvIpc>,
}

/// A region's flags a program sets (`ADVICE_*` bits), from smaps `VmFlags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionAdvice {
    pub start: u64,
    pub end: u64,
    pub flags: u32,
}

/// `MAP_NORESERVE` ("nr").
pub const ADVICE_NORESERVE: u32 = 1;
/// `MADV_DONTFORK` ("dc").
pub const ADVICE_DONTFORK: u32 = 2;
/// `MADV_DONTDUMP` ("dd").
pub const ADVICE_DONTDUMP: u32 = 4;
/// `MADV_HUGEPAGE` ("hg").
pub const ADVICE_HUGEPAGE: u32 = 8;
/// `MADV_NOHUGEPAGE` ("nh").
pub const ADVICE_NOHUGEPAGE: u32 = 16;
/// `MADV_WIPEONFORK` ("wf").
pub const ADVICE_WIPEONFORK: u32 = 32;
/// `mlock` ("lo").
pub const ADVICE_LOCKED: u32 = 64;
/// `mlock2(MLOCK_ONFAULT)` ("lf").
pub const ADVICE_LOCKONFAULT: u32 = 128;
/// `MADV_RANDOM` ("rr").
pub const ADVICE_RANDOM: u32 = 256;
/// `MADV_SEQUENTIAL` ("sr").
pub const ADVICE_SEQUENTIAL: u32 = 512;
/// A shared mapping that may be made writable ("sh" and "mw": its file was open for writing
/// when it was mapped, so `mprotect(PROT_WRITE)` works on it even while it is read-only).
pub const ADVICE_SHARED_MAYWRITE: u32 = 1024;

impl RegionAdvice {
    /// The `ADVICE_*` bits of a smaps `VmFlags:` value (`rd wr mr mw me nr ...`).
    pub fn parse_vmflags(v: &str) -> u32 {
        v.split_whitespace()
            .map(|f| match f {
                "nr" => ADVICE_NORESERVE,
                "dc" => ADVICE_DONTFORK,
                "dd" => ADVICE_DONTDUMP,
                "hg" => ADVICE_HUGEPAGE,
                "nh" => ADVICE_NOHUGEPAGE,
                "wf" => ADVICE_WIPEONFORK,
                "lo" => ADVICE_LOCKED,
                "lf" => ADVICE_LOCKONFAULT,
                "rr" => ADVICE_RANDOM,
                "sr" => ADVICE_SEQUENTIAL,
                _ => 0,
            })
            .fold(0, |a, b| a | b)
            | if v.split_whitespace().any(|f| f == "sh") && v.split_whitespace().any(|f| f == "mw") && !v.split_whitespace().any(|f| f == "wr") {
                ADVICE_SHARED_MAYWRITE
            } else {
                0
            }
    }
}

/// A System V semaphore set or message queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvIpc {
    pub id: i32,
    pub key: i32,
    /// Permission bits, owner and group.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: SysvKind,
}

/// What a [`SysvIpc`] is, with what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SysvKind {
    /// A semaphore set: each semaphore's value.
    Semaphores { values: Vec<u16> },
    /// A message queue: its byte limit, and the queued messages in order (type, text).
    Messages { qbytes: u64, messages: Vec<(i64, Vec<u8>)> },
}

/// A process of the tree other than its root (the one `pmig-run` started).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub pid: i32,
    /// Its parent; 0 for a process that left the tree's parentage (daemonized: its parent
    /// exited and init took it), made again as a child of the namespace's init.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Its name (`comm`), for messages and `--inspect`.
    pub comm: String,
    pub state: MemberKind,
}

/// What a member of the tree is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberKind {
    /// A running process whose complete image is `len` bytes at `offset` in the file.
    Live { offset: u64, len: u64 },
    /// A zombie: it exited with this wait status and its parent has not reaped it yet.
    Zombie { status: i32 },
    #[default]
    Unknown,
}

/// A file carried in the image, with what it takes to put it back as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFile {
    pub path: String,
    pub mode: u32,
    pub mtime_ns: i128,
    pub content: Vec<u8>,
}

/// A shared memory object (see `Manifest::objects`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState {
    pub ino: u64,
    /// The memfd's name, or the deleted file's path.
    pub name: String,
    pub size: u64,
}

impl Manifest {
    /// All page runs, in the order their checksums appear in the trailer.
    pub fn runs(&self) -> impl Iterator<Item = &PageRun> {
        self.regions.iter().flat_map(|r| r.runs.iter())
    }

    /// Total bytes of saved pages.
    pub fn saved_bytes(&self) -> u64 {
        self.runs().map(|r| r.len).sum()
    }
}

/// The machine and kernel the image was taken on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// `uname -m`: only "x86_64" is written today.
    pub machine: String,
    pub kernel_release: String,
    pub hostname: String,
    /// XSAVE features enabled (XCR0): the target must have all of them.
    pub xcr0: u64,
    /// The CPUID words naming the instruction-set extensions the program could see
    /// (`pmig_abi::arch::cpu_feature_words`): the target must offer every one the saved CPU
    /// had.
    pub cpu_features: Vec<u32>,
    /// Nanoseconds since the epoch (CLOCK_REALTIME) when the image was taken.
    pub time_ns: u64,
    /// `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` (ns) as the program saw them then: a restore
    /// in a time namespace makes them go on from these values.
    pub monotonic_ns: u64,
    pub boottime_ns: u64,
}

/// Process-wide attributes a program may set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessAttrs {
    /// `/proc/PID/oom_score_adj`.
    pub oom_score_adj: i32,
    /// `PR_GET_THP_DISABLE`.
    pub thp_disable: bool,
    /// `PR_GET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
    /// `mlockall` flags in force for mappings made later (`MCL_FUTURE`, with `MCL_ONFAULT`;
    /// 0 for none), as libpmig's `mlockall`/`munlockall` wrappers saw them.
    pub mlockall: i32,
    /// membarrier registrations (`MEMBARRIER_CMD_REGISTER_*` bits) made through libc's
    /// `syscall()`, which libpmig wraps.
    pub membarrier: u32,
}

/// Process-wide state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub gid: u32,
    /// `/proc/self/exe` at checkpoint time.
    pub exe: String,
    pub argv: Vec<String>,
    /// Name of the main thread (`comm`).
    pub comm: String,
    pub cwd: String,
    pub umask: u32,
    pub rlimits: Vec<RlimitState>,
    /// Process-wide attributes (per-thread ones travel in libpmig's own memory).
    pub attrs: ProcessAttrs,
    pub mm: MmState,
    /// `/proc/self/auxv` as words.
    pub auxv: Vec<u64>,
    /// Signals pending for the whole process, each as its raw 128-byte `siginfo_t`.
    pub pending_signals: Vec<Vec<u8>>,
    /// Credentials (those of the main thread; glibc keeps every thread's the same).
    pub creds: CredsState,
    /// How the ids of the process that wrote the image were made (see [`IdsMode`]).
    pub ids: IdsMode,
    /// Process group and session.
    pub pgid: i32,
    pub sid: i32,
    /// The working directory's mode, owner and times when it had been deleted (`cwd` then
    /// ends with " (deleted)"): an empty one is made again, entered and removed.
    pub cwd_deleted: Option<FileMeta>,
    /// The controlling terminal (`tty_nr` of `/proc/self/stat`, 0 for none) and its
    /// foreground process group (`tpgid`).
    pub ctty: u32,
    pub tpgid: i32,
}

/// A pseudo-terminal's settings and queued bytes (saved once, by the lowest pid holding its
/// master).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyState {
    /// The slave's `struct termios2`, as bytes.
    pub termios: Vec<u8>,
    /// Rows, columns, x and y pixels.
    pub winsize: [u16; 4],
    /// Packet mode (`TIOCPKT`) on the master.
    pub packet: bool,
    /// Still locked (`unlockpt` not called yet).
    pub locked: bool,
    /// Bytes the slave side had not read yet (typed or written to the master).
    pub input: Vec<u8>,
    /// Bytes the master side had not read yet (the slave's output).
    pub output: Vec<u8>,
    /// Whether this record holds the state (the other holders' records do not).
    pub saved: bool,
}

impl ProcessState {
    /// The pty index of its controlling terminal, when that is a pty slave.
    pub fn ctty_pty(&self) -> Option<u32> {
        let major = (self.ctty >> 8) & 0xfff;
        let minor = (self.ctty & 0xff) | ((self.ctty >> 12) & 0xfff00);
        (major == 136).then_some(minor)
    }
}

/// How a process's pid and tids relate to the ones it saw before its restores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdsMode {
    /// Never restored: the ids are the kernel's.
    #[default]
    Original,
    /// Restored with its saved pid and tids, for real (a pid namespace, `clone3(set_tid)`).
    Exact,
    /// Restored with new ids, libc's `getpid`/`gettid`/... answering the saved ones.
    Virtual,
}

/// User and group ids, supplementary groups and capabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsState {
    /// Real, effective, saved and file-system uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and file-system gid.
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    /// Capability sets as 64-bit masks.
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_ambient: u64,
    pub securebits: u32,
    /// `PR_GET_DUMPABLE` (0 once a program changed its credentials, unless it set it again).
    pub dumpable: u32,
}

/// One resource limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitState {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// The `mm_struct` fields `PR_SET_MM_MAP` restores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmState {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// How the program was started under pmig; kept across restores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsState {
    pub image_path: String,
    pub exit_after: bool,
    pub signal: i32,
    pub suspend_signal: i32,
}

/// One thread of the program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    pub tid: i32,
    pub name: String,
    /// The main thread (tid == pid at checkpoint time).
    pub main: bool,
}

/// The saved context of pmig's checkpoint thread: where a restore jumps to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CkptThreadState {
    pub tid: i32,
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
    pub mxcsr: u32,
    pub fpucw: u32,
    pub fs_base: u64,
}

/// A signal's disposition, in the kernel's `struct sigaction` terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigActionState {
    pub sig: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// An interval timer (`ITIMER_REAL` = 0, `VIRTUAL` = 1, `PROF` = 2), in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItimerState {
    pub which: i32,
    pub interval_us: u64,
    pub value_us: u64,
}

/// A POSIX timer (`timer_create`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimerState {
    /// The id the program holds (`timer_t`).
    pub id: i32,
    pub clockid: i32,
    /// `SIGEV_SIGNAL`, `SIGEV_NONE` or `SIGEV_THREAD_ID` (glibc's `SIGEV_THREAD` timers are
    /// `SIGEV_THREAD_ID` to its helper thread).
    pub notify: i32,
    pub signo: i32,
    pub sival: u64,
    /// For `SIGEV_THREAD_ID`: the thread, as the program knows it.
    pub tid: i32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// Identity of a file, to tell whether the file found at restore time is the same one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdent {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    /// SHA-256 of the content when it was computed (network transfers), else zeros: a file
    /// with other times but this content is the same file.
    pub sha256: [u8; 32],
}

/// One fd number and the open file description it refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdState {
    pub fd: i32,
    pub cloexec: bool,
    /// Index into `Manifest::files`: fds that share an open file description (after `dup`,
    /// or inherited) share one entry, and so their offset and flags, after restore too.
    pub file: u32,
}

/// An open file description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// `O_*` status flags (`fcntl(F_GETFL)`).
    pub flags: i32,
    /// Offset (for seekable files).
    pub pos: i64,
    pub kind: FileKind,
    /// Non-zero when another process of the tree holds this same open file description (one
    /// offset, one set of flags): the key names it in every process's image.
    pub shared: u64,
    /// `F_GETOWN_EX`: who gets its SIGIO/SIGURG (`F_OWNER_TID`/`PID`/`PGRP`, id; 0: nobody),
    /// and `F_GETSIG` (0: SIGIO).
    pub owner: (i32, i32),
    pub owner_sig: i32,
    /// File locks held through it: `flock` and OFD locks on this description, the process's
    /// POSIX record locks taken through it.
    pub locks: Vec<LockState>,
}

/// Mode, owner and times of a file pmig makes again (a deleted one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i128,
    pub mtime_ns: i128,
}

/// One file lock (`/proc/PID/fdinfo/N`'s `lock:` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    pub kind: LockKind,
    /// A write (exclusive) lock, else a read (shared) one.
    pub write: bool,
    /// The byte range, `end` included (`None`: to the end of the file); 0 and `None` for
    /// `flock`.
    pub start: u64,
    pub end: Option<u64>,
}

/// What kind of lock a [`LockState`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// `flock(2)`: held by the open file description.
    Flock,
    /// `fcntl(F_SETLK)`: held by the process.
    Posix,
    /// `fcntl(F_OFD_SETLK)`: held by the open file description.
    Ofd,
    /// `fcntl(F_SETLEASE)`: a read or write lease, held by the open file description.
    Lease,
}

impl LockState {
    /// Parses one `lock:` line of fdinfo (`1: POSIX  ADVISORY  WRITE 1234 fe:00:42 10 19`);
    /// `None` for a lock waiting to be granted (`->`), a lease being broken or anything else.
    pub fn parse(line: &str) -> Option<LockState> {
        let rest = line.strip_prefix("lock:")?.trim();
        let (_, rest) = rest.split_once(':')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let kind = match *f.first()? {
            "FLOCK" => LockKind::Flock,
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            // "LEASE ACTIVE READ|WRITE ...": one being broken ("BREAKING") is not taken again.
            "LEASE" if f.get(1) == Some(&"ACTIVE") => LockKind::Lease,
            _ => return None,
        };
        let write = match *f.get(2)? {
            "WRITE" => true,
            "READ" => false,
            _ => return None,
        };
        let start = f.get(5)?.parse().ok()?;
        let end = match *f.get(6)? {
            "EOF" => None,
            e => Some(e.parse().ok()?),
        };
        Some(LockState { kind, write, start, end })
    }
}

/// A file's bytes as saved: its size and its data extents; holes are not stored, and stay
/// holes when the file is made again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    pub size: u64,
    /// `(offset, bytes)`, in order, not overlapping, within `size`.
    pub extents: Vec<(u64, Vec<u8>)>,
}

impl FileContent {
    /// A file that is all data.
    pub fn whole(bytes: Vec<u8>) -> FileContent {
        FileContent { size: bytes.len() as u64, extents: if bytes.is_empty() { Vec::new() } else { vec![(0, bytes)] } }
    }

    /// The bytes stored (the size less its holes).
    pub fn stored(&self) -> u64 {
        self.extents.iter().map(|e| e.1.len() as u64).sum()
    }

    /// Whether its extents are in order, apart and within its size (a decoded image's may not be).
    pub fn is_sound(&self) -> bool {
        let mut end = 0u64;
        self.extents.iter().all(|(off, b)| {
            let ok = *off >= end && off.checked_add(b.len() as u64).is_some_and(|e| e <= self.size);
            end = off.saturating_add(b.len() as u64);
            ok
        })
    }
}

/// What an open file is, and so how it is restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file or directory, reopened at `path`.
    Regular { path: String, ident: FileIdent },
    /// A regular file deleted while open: its content travels in the image; it is recreated
    /// as an unlinked file with the same content.
    Deleted { path: String, ino: u64, content: FileContent, meta: FileMeta },
    /// A directory deleted while open (it was empty): made again empty, beside its old path,
    /// and removed once open.
    DeletedDir { path: String, ino: u64, meta: FileMeta },
    /// A memfd: name, content, mode, and its seals (`F_GET_SEALS`).
    Memfd { name: String, ino: u64, content: FileContent, mode: u32, seals: u32 },
    /// A terminal. A pty slave whose master is in the image (`/dev/pts/N` with a
    /// [`FileKind::PtyMaster`] of index N) is opened from that master again; any other is
    /// reopened at its path.
    Tty { path: String },
    /// The master side of a pseudo-terminal (`/dev/ptmx`): made again at restore, with the
    /// same index where it is free.
    PtyMaster { index: u32, pty: PtyState },
    /// A character device other than a terminal (reopened at its path).
    CharDevice { path: String },
    /// One end of a pipe (`fifo`: the FIFO's path). `data`: bytes written but not yet read,
    /// kept on one end of each pipe.
    Pipe { ino: u64, read_end: bool, fifo: Option<String>, capacity: u32, data: Vec<u8> },
    /// A socket.
    Socket(SocketState),
    /// An eventfd.
    EventFd { count: u64, semaphore: bool },
    /// A timerfd: remaining time and interval, in nanoseconds.
    TimerFd { clockid: i32, value_ns: u64, interval_ns: u64, ticks: u64 },
    /// A signalfd and its mask.
    SignalFd { mask: u64 },
    /// An epoll instance and its registrations.
    Epoll { targets: Vec<EpollTarget> },
    /// An inotify instance and its watches.
    Inotify { watches: Vec<InotifyWatch> },
    /// Anything else (its `/proc/self/fd` link).
    Other { link: String },
}

/// One registration of an epoll set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    /// The fd number it was registered under (part of the registration's key).
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    /// -1 when `fd` still names the registered file; else an fd of the process that does
    /// (the program closed or reused `fd` since: the registration lives on the file).
    pub via: i32,
}

/// One inotify watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    pub wd: i32,
    pub path: String,
    pub mask: u32,
}

/// A socket's address, as the kernel's `sockaddr` bytes.
pub type SockAddr = Vec<u8>;

/// A socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketState {
    pub ino: u64,
    pub family: i32,
    pub sotype: i32,
    pub protocol: i32,
    /// What it was doing: see [`SocketRole`].
    pub role: SocketRole,
    pub local: Option<SockAddr>,
    pub peer: Option<SockAddr>,
    pub backlog: i32,
    /// `(level, name, value)` of the options that are restored.
    pub options: Vec<(i32, i32, Vec<u8>)>,
    /// For one end of a socketpair: the inode of the other end.
    pub pair: Option<u64>,
    /// Bytes received but not yet read.
    pub recv_queue: Vec<u8>,
    /// TCP repair state of an established connection (taken as root).
    pub tcp: Option<TcpRepairState>,
    /// A UNIX socket bound to a path: its file's mode, owner and group.
    pub path_meta: Option<(u32, u32, u32)>,
    /// What `shutdown()` left of a UNIX socket: 1 no more reading, 2 no more writing.
    pub shutdown: u8,
}

/// What a socket was doing at checkpoint time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketRole {
    /// Created, not bound.
    #[default]
    Unbound,
    /// Bound (a UDP socket, or TCP before listen).
    Bound,
    /// Listening for connections.
    Listening,
    /// Connected to a peer (TCP established, connected UDP or UNIX).
    Connected,
    /// Part of a socketpair made by the program.
    Pair,
}

/// What TCP repair mode saves of an established connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRepairState {
    pub send_seq: u32,
    pub recv_seq: u32,
    pub send_queue: Vec<u8>,
    pub mss: u32,
    pub snd_wscale: u32,
    pub rcv_wscale: u32,
    pub timestamp: u32,
    pub window: Vec<u8>,
}

impl FileKind {
    /// Short name of the kind, for messages and `--inspect`.
    pub fn name(&self) -> &'static str {
        match self {
            FileKind::Regular { .. } => "file",
            FileKind::Deleted { .. } => "deleted",
            FileKind::DeletedDir { .. } => "deleted dir",
            FileKind::Memfd { .. } => "memfd",
            FileKind::Tty { .. } => "tty",
            FileKind::PtyMaster { .. } => "pty",
            FileKind::CharDevice { .. } => "chardev",
            FileKind::Pipe { fifo: Some(_), .. } => "fifo",
            FileKind::Pipe { .. } => "pipe",
            FileKind::Socket(_) => "socket",
            FileKind::EventFd { .. } => "eventfd",
            FileKind::TimerFd { .. } => "timerfd",
            FileKind::SignalFd { .. } => "signalfd",
            FileKind::Epoll { .. } => "epoll",
            FileKind::Inotify { .. } => "inotify",
            FileKind::Other { .. } => "other",
        }
    }

    /// Whether a file of this kind, when processes of a tree share it, is made at restore by
    /// one of them and taken by the others (sockets and anonymous-inode kernel objects;
    /// regular files and pipes are made by pmig-resume for all).
    pub fn made_by_one_process(&self) -> bool {
        matches!(
            self,
            FileKind::Socket(_)
                | FileKind::EventFd { .. }
                | FileKind::TimerFd { .. }
                | FileKind::SignalFd { .. }
                | FileKind::Epoll { .. }
                | FileKind::Inotify { .. }
        )
    }

    /// For fds 0–2, whether the resumer's own fd takes its place.
    pub fn inherited_as_stdio(&self) -> bool {
        matches!(self, FileKind::Tty { .. } | FileKind::Pipe { .. } | FileKind::Socket(_))
    }
}

/// One mapping of the address space.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    pub start: u64,
    pub end: u64,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: u32,
    pub shared: bool,
    pub kind: RegionKind,
    /// Saved pages (only populated ones).
    pub runs: Vec<PageRun>,
}

impl RegionState {
    /// Private anonymous memory with saved pages (heaps, thread stacks, buffers): what a
    /// lazy restore leaves to come in on first touch (the main thread's stack, file and
    /// shared mappings are read in at once).
    pub fn is_lazy_candidate(&self) -> bool {
        !self.shared && matches!(self.kind, RegionKind::Anon | RegionKind::Heap) && !self.runs.is_empty()
    }
}

/// Where a region's content comes from at restore time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionKind {
    /// Anonymous memory (its populated pages are in the image).
    #[default]
    Anon,
    /// The main thread's stack (grows down).
    Stack,
    /// The brk heap.
    Heap,
    /// A file mapping; pages the program changed (private mappings) are in the image.
    File { path: String, offset: u64, ident: FileIdent },
    /// A shared mapping of `Manifest::objects[object]`; its resident pages are in the image.
    SharedObject { object: u32, offset: u64 },
    /// A SysV shared memory segment attached here (`shmat`); its resident pages are in the
    /// image, used when the segment has to be made again.
    SysvShm { key: i32, shmid: i32, size: u64, mode: u32 },
}

/// A run of populated pages saved in the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub addr: u64,
    pub len: u64,
    /// Offset of the data from the start of the page data (`Header::pages_off`).
    pub data_off: u64,
}

/// The kernel's vdso block at checkpoint time; its pages are never saved, but the block is moved
/// to the same place on restore, which needs the same kernel's vdso.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdsoState {
    /// `(name, start, end)` of `[vvar]`, `[vvar_vclock]`, `[vdso]` as present.
    pub parts: Vec<(String, u64, u64)>,
    /// The vdso's bytes.
    pub vdso_bytes: Vec<u8>,
}
