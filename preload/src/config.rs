//! Settings given by `pmig-run` in `PMIG_*` variables, read once at start and kept in memory
//! (so a restored program keeps them), and the few process-wide flags.

use std::sync::OnceLock;
use core::sync::atomic::{AtomicI32, AtomicU32};

/// How this program runs under pmig.
#[derive(Debug)]
pub struct Config {
    /// Absolute path of the image to write.
    pub image_path: String,
    /// Exit once the image is durable.
    pub exit_after: bool,
    /// The checkpoint signal.
    pub signal: i32,
    /// The signal that stops threads for a checkpoint.
    pub suspend_signal: i32,
    /// Leave out what cannot be restored (with a warning) instead of failing the checkpoint.
    pub drop_unsupported: bool,
    /// Send the image to this receiver (`ip:port`) instead of writing a file, then exit.
    pub to: Option<String>,
    /// The shared secret proving who we are to the receiver.
    pub token: Vec<u8>,
    /// LZ4-compress the transfer.
    pub compress: bool,
    /// The hosts share a file system: offer no files to carry.
    pub shared_fs: bool,
    /// With `to`: pre-copy memory while the program runs (`precopy`).
    pub live: bool,
    /// Write a checkpoint the program survives in the background (`snapshot`); off with
    /// `PMIG_BACKGROUND=0`.
    pub background: bool,
    /// The pid of the process `pmig-run` started: the root of the tree, which the checkpoint
    /// signal checkpoints whole. Other processes of the tree take part when it asks them.
    pub root_pid: i32,
    /// Threads that pack a `--compress` image (`PMIG_PACKERS`; 0, the default: one per CPU).
    pub packers: usize,
}

impl Config {
    /// Whether this process is the tree's root.
    pub fn is_root(&self) -> bool {
        self.root_pid == crate::sys::getpid()
    }
}

pub static CONFIG: OnceLock<Config> = OnceLock::new();

/// The pid pmig is active in (0: inactive). Updated after a restore.
pub static ACTIVE_PID: AtomicI32 = AtomicI32::new(0);
/// Bumped by the checkpoint signal handler; the checkpoint thread waits on it.
pub static CKPT_REQUEST: AtomicU32 = AtomicU32::new(0);
/// A request of the tree's root to take part in its checkpoint: the nonce naming the root's
/// socket for it (0: none pending).
pub static TREE_NONCE: AtomicU32 = AtomicU32::new(0);
/// High 32 bits of the signal value of a tree request ("pmig").
pub const TREE_MAGIC: u64 = 0x706d_6967;

/// Default suspend signal: a real-time signal near the top, away from what programs use.
pub const SUSPEND_SIGNAL: i32 = 62;

/// The settings (pmig is active only when they are set).
pub fn get() -> Option<&'static Config> {
    CONFIG.get()
}

/// Reads the settings from the environment: in the process pmig-run started (the tree's root)
/// and in every program a process of its tree execs (they inherit the variables). `None` when
/// pmig is not configured.
pub fn from_env() -> Option<Config> {
    let root_pid: i32 = std::env::var("PMIG_PID").ok()?.parse().ok()?;
    let image_path = std::env::var("PMIG_IMAGE").ok()?;
    let exit_after = std::env::var("PMIG_EXIT").map(|v| v == "1").unwrap_or(false);
    let signal = std::env::var("PMIG_SIGNAL").ok().and_then(|s| s.parse().ok()).unwrap_or(libc::SIGUSR2);
    if crate::log::debug_on() {
        crate::log::say!("active: image {image_path}, exit after checkpoint: {exit_after}, signal {signal}, tree root {root_pid}");
    }
    let drop_unsupported = std::env::var("PMIG_DROP_UNSUPPORTED").map(|v| v == "1").unwrap_or(false);
    let to = std::env::var("PMIG_TO").ok().filter(|t| !t.is_empty());
    let token = match std::env::var_os("PMIG_TOKEN_FILE") {
        Some(p) => match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) => {
                crate::log::say!("cannot read the token file {}: {e}; checkpoints are disabled", p.to_string_lossy());
                return None;
            }
        },
        None => Vec::new(),
    };
    let compress = std::env::var("PMIG_COMPRESS").map(|v| v == "1").unwrap_or(false);
    let shared_fs = std::env::var("PMIG_SHARED_FS").map(|v| v == "1").unwrap_or(false);
    let live = std::env::var("PMIG_LIVE").map(|v| v == "1").unwrap_or(false);
    let background = std::env::var("PMIG_BACKGROUND").map(|v| v != "0").unwrap_or(true);
    let packers = std::env::var("PMIG_PACKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(Config { image_path, exit_after, signal, suspend_signal: SUSPEND_SIGNAL, drop_unsupported, to, token, compress, shared_fs, live, background, root_pid, packers })
}
