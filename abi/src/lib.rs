//! The binary contract between the three pieces of pmig that meet at restore time:
//! `pmig-resume` (which writes a restore *plan*), the `#![no_std]` restore engine (which
//! executes it) and `libpmig.so` (whose checkpoint thread wakes up inside the restored
//! process and finishes the job).
//!
//! Everything here is `#[repr(C)]`, made of `u64`/`u32`/`i32` fields with explicit padding,
//! so it can be written as bytes by one program and read in place by another.
//!
//! ```text
//! reserved range (ENGINE_BASE .. ENGINE_BASE+RESERVE_LEN), kept PROT_NONE in every pmig process
//! +0x0000_0000  restore engine image (static, non-PIE, linked here)
//! +0x00f0_0000  parking place for the kernel's [vvar][vvar_vclock][vdso] block
//! +0x0100_0000  the plan, mapped from its memfd
//!
//! plan:  PlanHeader | PlanRegion * n_regions | PlanRun * n_runs | PlanObject * n_objects | manifest
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod errno;
pub mod pty;
pub mod uffd;

/// Start of the address range that libpmig reserves in every process it runs in, and where
/// the restore engine is linked. Nothing of a saved process can ever live here.
pub const ENGINE_BASE: u64 = 0x6000_0000;
/// Length of the reserved range.
pub const RESERVE_LEN: u64 = 0x1000_0000;
/// Where the engine parks the kernel's vdso block while it rebuilds the address space.
pub const VDSO_PARK: u64 = ENGINE_BASE + 0x00f0_0000;
/// Where the engine maps the plan.
pub const PLAN_ADDR: u64 = ENGINE_BASE + 0x0100_0000;
/// The largest plan the engine can map.
pub const PLAN_MAX: u64 = RESERVE_LEN - 0x0100_0000;
/// Page size assumed by images (x86_64).
pub const PAGE_SIZE: u64 = 4096;

/// Value `save_and_call` returns in a restored application thread.
pub const RESTORED_THREAD: u64 = 1;

/// A callee-saved CPU context, as saved by [`arch::save_and_call`]: resuming it makes that call
/// return a second time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ctx {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// Stack pointer as it is after `save_and_call` returns.
    pub rsp: u64,
    /// The return address of `save_and_call`.
    pub rip: u64,
    pub mxcsr: u32,
    pub fpucw: u32,
}

/// Magic of [`Mailbox`].
pub const MAILBOX_MAGIC: u64 = 0x786f_626c_6961_6d70; // "pmailbox"

/// What the engine hands to the restored checkpoint thread: a pointer to this is the value
/// `save_and_call` returns in the checkpoint thread after a restore (always `>= ENGINE_BASE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Mailbox {
    pub magic: u64,
    /// fd of the plan memfd (holds the manifest at `manifest_off`).
    pub plan_fd: i32,
    /// fd of the image file.
    pub image_fd: i32,
    pub manifest_off: u64,
    pub manifest_len: u64,
    /// Non-zero when `PMIG_DEBUG` was set for `pmig-resume`.
    pub debug: u32,
    pub _pad: u32,
    /// Where the `PlanObject` table is in the plan, and how many entries.
    pub objects_off: u64,
    pub n_objects: u64,
    /// The thread-group leader (the process's first thread, whose tid is the pid) waits in
    /// the engine on this futex word until the restored checkpoint thread sets it:
    /// [`LEADER_RESUME`] (resume `*leader_ctx` with thread pointer `leader_fs`, as the
    /// program's main thread) or [`LEADER_EXIT`] (the main thread had exited: end the leader).
    pub leader_go: u32,
    /// [`IDS_EXACT`] when the threads are made with their saved tids, else 0.
    pub ids: u32,
    pub leader_ctx: u64,
    pub leader_fs: u64,
    /// fd of the saved executable (or -1): libpmig makes it `/proc/self/exe` once the engine,
    /// whose file the kernel will not replace while it is mapped, is gone.
    pub exe_fd: i32,
    /// Non-zero when some of the process's memory comes in lazily (see [`PlanHeader::pager_fd`]):
    /// a checkpoint waits until the pager has put every page in place.
    pub lazy: u32,
}

/// [`Mailbox::leader_go`]: resume the main thread's context.
pub const LEADER_RESUME: u32 = 1;
/// [`Mailbox::leader_go`]: the saved process had no main thread any more; the leader exits.
pub const LEADER_EXIT: u32 = 2;
/// [`PlanHeader::ids`] / [`Mailbox::ids`]: ids are exact (a pid namespace where every saved
/// tid is free, and `CAP_CHECKPOINT_RESTORE` to ask for them with `clone3(set_tid)`).
pub const IDS_EXACT: u32 = 1;

/// `struct clone_args` of `<linux/sched.h>` (`clone3(2)`), up to `cgroup`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    /// Address of an array of `set_tid_size` pids, innermost namespace first.
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// The flags of a thread that shares everything with its process.
pub const THREAD_FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x80000;
// CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS

/// Magic of [`PlanHeader`].
pub const PLAN_MAGIC: u64 = 0x6e61_6c70_676d_6970; // "pimgplan"
/// Version of the plan layout.
pub const PLAN_VERSION: u32 = 5;

/// `struct prctl_mm_map` of `<linux/prctl.h>` (for `PR_SET_MM_MAP`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmMap {
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
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// Number of `u64` words of auxv the plan carries (the kernel keeps at most 2*(2+20+...) too).
pub const AUXV_WORDS: usize = 128;

/// One piece of the vdso block (`[vvar]`, `[vvar_vclock]`, `[vdso]`), at its saved address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanVdso {
    /// 0: unused entry; 1: `[vvar]`; 2: `[vvar_vclock]`; 3: `[vdso]`.
    pub kind: u32,
    pub _pad: u32,
    pub start: u64,
    pub len: u64,
}

/// The vdso pieces by kind, as [`PlanVdso::kind`] numbers them.
pub const VDSO_NAMES: [&str; 4] = ["", "[vvar]", "[vvar_vclock]", "[vdso]"];

/// Header of the plan.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PlanHeader {
    pub magic: u64,
    pub version: u32,
    /// Non-zero: log each phase to stderr.
    pub debug: u32,
    pub image_fd: i32,
    pub plan_fd: i32,
    pub n_regions: u64,
    pub regions_off: u64,
    pub n_runs: u64,
    pub runs_off: u64,
    pub manifest_off: u64,
    pub manifest_len: u64,
    pub n_objects: u64,
    pub objects_off: u64,
    pub total_len: u64,
    pub mm: MmMap,
    pub auxv: [u64; AUXV_WORDS],
    pub vdso: [PlanVdso; 4],
    /// The checkpoint thread's context and thread pointer.
    pub ctx: Ctx,
    pub fs_base: u64,
    /// The checkpoint thread's saved tid (asked for with `clone3(set_tid)` when `ids` is
    /// [`IDS_EXACT`]).
    pub ckpt_tid: i32,
    pub ids: u32,
    /// A `SOCK_SEQPACKET` socket to pmig-resume's pager, or -1 (every page read in at
    /// once). With it the engine makes a userfaultfd, registers the [`REGION_LAZY`] regions
    /// (leaving their runs unread), and sends the pager one [`PagerHello`] with the
    /// userfaultfd and a pidfd of itself; where that cannot be done it sends a hello without
    /// fds and reads every run in itself.
    pub pager_fd: i32,
    /// The saved pid of the process (which image's pages the pager serves it).
    pub saved_pid: i32,
    /// Non-zero: the vdso is another kernel's (see `restorer/src/vdso.rs`): this kernel's
    /// vdso block goes to `vdso_new_base`, and `vdso_proxy_len` bytes of the plan at
    /// `vdso_proxy_off` (the saved vdso, its functions jumping to this kernel's) are mapped
    /// at `vdso_proxy_at`, read and execute only.
    pub vdso_proxy_len: u64,
    pub vdso_proxy_off: u64,
    pub vdso_proxy_at: u64,
    pub vdso_new_base: u64,
}

/// What the engine sends the pager (with `SCM_RIGHTS`: the userfaultfd, then a pidfd of the
/// process, when `lazy` is 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PagerHello {
    pub magic: u32,
    /// 1: the fds came along and the lazy regions are registered; 0: the engine read every
    /// page in itself (`errno` says why not).
    pub lazy: u32,
    pub saved_pid: i32,
    pub errno: i32,
}

/// [`PagerHello::magic`].
pub const PAGER_MAGIC: u32 = 0x5047_5250;

/// Kinds of [`PlanRegion`].
pub mod region_kind {
    /// Private anonymous memory.
    pub const ANON: u32 = 1;
    /// Private anonymous memory that grows down (the main thread's `[stack]`).
    pub const STACK: u32 = 2;
    /// `MAP_PRIVATE` of a file (`fd` open on it).
    pub const FILE_PRIVATE: u32 = 3;
    /// `MAP_SHARED` of a file (`fd` open on it).
    pub const FILE_SHARED: u32 = 4;
    /// `MAP_SHARED | MAP_ANONYMOUS`.
    pub const SHARED_ANON: u32 = 5;
    /// A SysV shared memory segment (`fd` holds its id), attached with `shmat`.
    pub const SYSV: u32 = 6;
}

/// One memory region to map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanRegion {
    pub start: u64,
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// One of [`region_kind`].
    pub kind: u32,
    /// File to map for file kinds, else -1.
    pub fd: i32,
    /// [`REGION_FILL`]: the region has saved pages to read in.
    pub flags: u32,
    /// Offset in the file for file kinds.
    pub offset: u64,
}

/// [`PlanRegion::flags`]: the region has saved pages, so it is mapped writable while they are
/// read in (a shared object's fd is opened read/write for this).
pub const REGION_FILL: u32 = 1;
/// [`PlanRegion::flags`] of a SysV region: mark the segment for removal once attached (the
/// program had done `IPC_RMID`).
pub const REGION_SYSV_RMID: u32 = 2;
/// [`PlanRegion::flags`]: map anonymous memory with `MAP_NORESERVE` (the program's region
/// had it).
pub const REGION_NORESERVE: u32 = 4;
/// [`PlanRegion::flags`]: private anonymous memory whose pages come in on first touch (from
/// the pager, through userfaultfd) instead of being read in by the engine.
pub const REGION_LAZY: u32 = 8;

/// An object pmig-resume made for the restored process, which inherits it: the inode it had
/// at checkpoint time, the fd, and what it is ([`OBJECT_SHARED_MEMORY`], …).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanObject {
    pub ino: u64,
    pub fd: i32,
    pub kind: u32,
}

/// [`PlanObject::kind`]: a shared memory object (memfd) for shared mappings and fds.
pub const OBJECT_SHARED_MEMORY: u32 = 0;
/// [`PlanObject::kind`]: the read end of a pipe the processes of a tree share.
pub const OBJECT_PIPE_READ: u32 = 1;
/// [`PlanObject::kind`]: the write end of a pipe the processes of a tree share.
pub const OBJECT_PIPE_WRITE: u32 = 2;
/// [`PlanObject::kind`]: an open file description (a regular file, one offset) the processes
/// of a tree share; `ino` is its key (`FileState::shared`).
pub const OBJECT_FILE: u32 = 3;
/// [`PlanObject::kind`]: the tree's board (a memfd holding a [`BoardHeader`] and its
/// [`BoardSlot`]s), through which the processes of a tree hand each other the sockets and
/// kernel objects they share; `ino` is the number of slots.
pub const OBJECT_BOARD: u32 = 4;
/// [`PlanObject::kind`]: the master of a pseudo-terminal pair pmig-resume made again (with
/// its index where it could, its settings and queued bytes); `ino` is its saved index
/// (`/dev/pts/<ino>` at checkpoint time). Its slave is opened from it (`TIOCGPTPEER`).
pub const OBJECT_PTY: u32 = 5;

/// The start of the tree's board (every restored tree has one). Sockets and kernel objects (eventfd, epoll, timerfd,
/// signalfd, inotify) that processes of a tree share are made at restore by one of them, the
/// one with the lowest pid (its image holds their whole state), and taken by the others with
/// `pidfd_getfd`: its slot says who makes it, and when it is there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BoardHeader {
    pub magic: u32,
    pub n_slots: u32,
    /// Processes that restore fds (the tree's processes but its zombies).
    pub live: u32,
    /// Processes done with their fds: each waits for all before it closes what it handed out.
    pub done: u32,
    /// Processes done with their whole restore: none goes on before all are (the tree
    /// resumes at one instant, and no process sees another half restored).
    pub restored: u32,
    pub _pad: u32,
}

/// [`BoardHeader::magic`].
pub const BOARD_MAGIC: u32 = 0x504d_4244;

/// One object the tree shares (see [`BoardHeader`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BoardSlot {
    /// `FileState::shared` of the object's files.
    pub key: u64,
    /// For a connected pair of UNIX sockets, the inodes of its two ends (smaller first);
    /// 0 for any other object.
    pub ends: [u64; 2],
    /// The process that makes it.
    pub maker: i32,
    /// [`SLOT_WAITING`], [`SLOT_READY`] or [`SLOT_FAILED`].
    pub state: u32,
    /// The maker's fds for it (one per end of a pair), valid once ready.
    pub fds: [i32; 2],
}

/// In a key the tree's root hands a process for a shared fd: the object is a UNIX
/// connection with its two ends in processes of the tree (saved as the ends of a pair).
pub const SHARE_TREE_PEER: u64 = 1 << 62;
/// In a key the tree's root hands a process for a shared fd: another process of the tree
/// (the lowest pid holding this description) saves its state; this one saves what it is.
/// Not part of the key saved as `FileState::shared`.
pub const SHARE_FOLLOWER: u64 = 1 << 61;

/// [`BoardSlot::state`]: not made yet.
pub const SLOT_WAITING: u32 = 0;
/// [`BoardSlot::state`]: made; `fds` can be taken.
pub const SLOT_READY: u32 = 1;
/// [`BoardSlot::state`]: its maker could not make it.
pub const SLOT_FAILED: u32 = 2;

/// A run of saved pages: `len` bytes at `addr` come from the image at `file_off`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanRun {
    pub addr: u64,
    pub len: u64,
    pub file_off: u64,
    /// Non-zero: the run lies in a [`REGION_LAZY`] region (the pager puts it in, unless the
    /// engine could not hand the region to the pager: then the engine reads it in).
    pub lazy: u64,
}

/// Engine exit codes: each names the phase that failed (the engine has nobody to report to
/// once the old address space is gone, so the exit status is the report).
pub mod exit_code {
    pub const ARGS: i32 = 101;
    pub const PLAN: i32 = 102;
    pub const VDSO_PARK: i32 = 103;
    pub const UNMAP: i32 = 104;
    pub const MAP: i32 = 105;
    pub const FILL: i32 = 106;
    pub const PROTECT: i32 = 107;
    pub const VDSO_PLACE: i32 = 108;
    pub const MM_MAP: i32 = 109;
    pub const JUMP: i32 = 110;
    pub const CLONE: i32 = 111;
    pub const LAZY: i32 = 112;

    /// A human name for an engine exit code.
    pub fn name(code: i32) -> Option<&'static str> {
        Some(match code {
            ARGS => "reading its arguments",
            PLAN => "mapping the restore plan",
            VDSO_PARK => "parking the vdso",
            UNMAP => "unmapping the old address space",
            MAP => "mapping a saved region",
            FILL => "reading saved pages from the image",
            PROTECT => "setting region protections",
            VDSO_PLACE => "moving the vdso to its saved address",
            MM_MAP => "prctl(PR_SET_MM_MAP)",
            JUMP => "jumping to the saved context",
            CLONE => "creating the checkpoint thread (clone3 with its saved tid)",
            LAZY => "handing the lazily restored memory to the pager",
            _ => return None,
        })
    }
}
