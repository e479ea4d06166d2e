//! libpmig: preloaded into a program by `pmig-run`, it makes the program checkpointable.
//!
//! At load time (a constructor in `.init_array`) it reads its settings, reserves the restore
//! engine's address range, installs the checkpoint and suspend signal handlers and starts the
//! checkpoint thread. The checkpoint signal wakes that thread, which stops the others, writes
//! the image and lets them go on (or exits); after a restore the same thread wakes up inside
//! the restored process and finishes the restore (see `restore`).
//!
//! Modules, by resource family: `memory`, `thread`, `fd`, `signal`, `process`; control in
//! `checkpoint` and `restore`; exported libc replacements in `api` (calls a checkpoint
//! interrupts are issued again by `restart`).

pub mod alloc;
pub mod api;
pub mod checkpoint;
pub mod config;
pub mod creds;
pub mod dirty;
pub mod errno;
pub mod exec;
pub mod fd;
pub mod log;
pub mod memory;
pub mod pack;
pub mod pid;
pub mod precopy;
pub mod process;
pub mod restart;
pub mod restore;
pub mod signal;
pub mod snapshot;
pub mod sys;
pub mod sysv;
pub mod thread;
pub mod timer;
pub mod transfer;
pub mod tree;
pub mod umem;

use core::sync::atomic::Ordering::Relaxed;
use log::{debug, say};
use pmig_abi::{ENGINE_BASE, RESERVE_LEN};

#[global_allocator]
static ALLOC: alloc::PmigAlloc = alloc::PmigAlloc;

/// Maps the engine's range `PROT_NONE` so nothing of the program ever lands there.
pub fn reserve_engine_range() -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE;
    matches!(sys::mmap(ENGINE_BASE, RESERVE_LEN, libc::PROT_NONE, flags, -1, 0), Ok(a) if a == ENGINE_BASE)
}

fn find_rseq() {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the symbols, when present, are
    // glibc's `__rseq_offset` (ptrdiff_t) and `__rseq_size` (unsigned int), set before any
    // constructor of a preloaded library runs.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const i64;
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if !off.is_null() && !size.is_null() && *size > 0 {
            thread::RSEQ_OFFSET.store(*off as u64, Relaxed);
            thread::RSEQ_SIZE.store(*size, Relaxed);
        }
    }
}

/// In a child just forked (`pthread_atfork`): its ids are its own, and it is a process of the
/// tree, so it gets a checkpoint thread of its own (only the forking thread was copied).
extern "C" fn after_fork_in_child() {
    pid::after_fork_in_child();
    exec::after_fork_in_child();
    snapshot::after_fork_in_child();
    process::MLOCKALL.store(0, Relaxed);
    // (A new mm has no membarrier registration; rseq's passes to the forking thread's copy.)
    process::MEMBARRIER.store(0, Relaxed);
    if config::get().is_none() || config::ACTIVE_PID.load(Relaxed) == 0 {
        return;
    }
    config::CKPT_REQUEST.store(0, Relaxed);
    config::TREE_NONCE.store(0, Relaxed);
    config::ACTIVE_PID.store(sys::getpid(), Relaxed);
    if let Err(e) = checkpoint::start() {
        say!("cannot start the checkpoint thread in a forked child: {e}; the tree cannot be checkpointed");
        config::ACTIVE_PID.store(0, Relaxed);
    }
}

extern "C" fn init() {
    if std::env::var_os("PMIG_DEBUG").is_some_and(|v| !v.is_empty() && v != "0") {
        log::DEBUG.store(true, Relaxed);
    }
    let Some(cfg) = config::from_env() else { return };
    api::resolve_real();
    exec::resolve_real();
    if !reserve_engine_range() {
        say!(
            "cannot reserve the address range {ENGINE_BASE:#x}-{:#x} (something is mapped there); checkpoints are disabled",
            ENGINE_BASE + RESERVE_LEN
        );
        return;
    }
    if !alloc::map_arena(0) {
        say!("cannot map the checkpoint arena; checkpoints are disabled");
        return;
    }
    thread::TID_OFFSET.store(thread::find_tid_offset(), Relaxed);
    process::START_SECCOMP_FILTERS.store(process::seccomp_filters_at_start(), Relaxed);
    // SAFETY: registering a handler that only stores atomics; no other thread exists yet.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    find_rseq();
    let (sig, sus) = (cfg.signal, cfg.suspend_signal);
    if config::CONFIG.set(cfg).is_err() {
        return;
    }
    config::ACTIVE_PID.store(sys::getpid(), Relaxed);
    if let Err(e) = signal::install_handlers(sig, sus) {
        say!("cannot install the checkpoint signal handler: {}; checkpoints are disabled", errno::Errno(e));
        config::ACTIVE_PID.store(0, Relaxed);
        return;
    }
    signal::block_checkpoint_signal(sig);
    if let Err(e) = checkpoint::start() {
        say!("cannot start the checkpoint thread: {e}; checkpoints are disabled");
        config::ACTIVE_PID.store(0, Relaxed);
        return;
    }
    debug!("ready: tid offset {}, rseq size {}", thread::TID_OFFSET.load(Relaxed), thread::RSEQ_SIZE.load(Relaxed));
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// At `exit` (and a return from `main`): a checkpoint still being written in the background
/// is finished first, as it would be if the program had been stopped for it.
extern "C" fn at_exit() {
    if sys::getpid() == config::ACTIVE_PID.load(Relaxed) {
        snapshot::wait_at_exit();
    }
}

#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = at_exit;
