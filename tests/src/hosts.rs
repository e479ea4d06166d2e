//! [`Hosts`]: two "hosts" on one machine, for the end-to-end tests that move a process to
//! another host (`tests/hosts.rs`).
//!
//! Each host is a network namespace; a veth pair joins them:
//!
//! ```text
//!   source netns  pmig-<pid>-<n>-src        target netns  pmig-<pid>-<n>-dst
//!     lo up                                    lo up
//!     pv<pid%10000><n>a 10.A.B.1/24  <--veth-->  pv<pid%10000><n>b 10.A.B.2/24
//! ```
//!
//! The target also gets its own mount namespace in which the source's files are not
//! visible: every test puts the program it moves (a copy of it) and its working directory
//! under `SRC = <hidden>/src`, with `<hidden> = /tmp/pmig-hosts-XXXX`, and the target's
//! command is
//!
//! ```text
//! ip netns exec DST unshare --mount --propagation private \
//!     sh -c 'mount -t tmpfs tmpfs <hidden> && exec PROGRAM ARGS...'
//! ```
//!
//! so on the target `<hidden>` is an empty tmpfs and `SRC` does not exist: whatever of it the
//! program needs must travel with it.  The pmig binaries (the build directory) and the token
//! file (in a [`crate::Sandbox`]) live elsewhere and are visible on both sides.  Anything a
//! receiver writes under `<hidden>` lands in that private tmpfs and goes away with its mount
//! namespace.
//!
//! `ip netns exec`, `unshare` (without `--fork`) and `sh -c 'exec ...'` all exec, so the pid
//! of a spawned [`crate::Proc`] is the pid of `pmig-run` / `pmig-resume`, hence of the
//! program.
//!
//! Setting `PMIG_TEST_HOSTS_SHARED_FS=1` keeps the source's files visible on the target (no
//! tmpfs), to check the harness and the network path without file carrying.
//!
//! Requirements: root, `ip` (iproute2), `unshare` and `sh`.  [`Hosts::new`] says why and
//! returns `None` when they are missing, and the tests skip.  Everything is torn down on
//! drop: both namespaces (which takes the veth pair with them) and the directory.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bins::copy_executable;

/// Set to `1` to leave the source's files visible on the target (see the module docs).
pub const SHARED_FS_ENV: &str = "PMIG_TEST_HOSTS_SHARED_FS";

/// The tools [`Hosts`] runs, looked up in `PATH`.
const TOOLS: [&str; 3] = ["ip", "unshare", "sh"];

/// Per-process counter making names and addresses unique among parallel tests.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A source and a target "host" (see the module documentation); torn down on drop.
pub struct Hosts {
    /// The source's network namespace.
    pub src_ns: String,
    /// The target's network namespace.
    pub dst_ns: String,
    /// The source's address on the veth link.
    pub src_addr: Ipv4Addr,
    /// The target's address on the veth link.
    pub dst_addr: Ipv4Addr,
    veth: (String, String),
    /// `/tmp/pmig-hosts-XXXX`, hidden on the target.
    hidden: tempfile::TempDir,
    hide: bool,
}

impl Hosts {
    /// Makes the two hosts, or prints why `test` is skipped and returns `None` (not root, a
    /// tool missing, or network namespaces not available here).  Any other failure of the
    /// setup panics.
    pub fn new(test: &str) -> Option<Hosts> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip(test, "it needs root to make network and mount namespaces");
            return None;
        }
        if let Some(tool) = TOOLS.iter().find(|t| find_in_path(t).is_none()) {
            skip(
                test,
                &format!("`{tool}` is not installed (ip: iproute2, unshare: util-linux)"),
            );
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (a, b) = (100 + (pid % 100) as u8, (n % 250 + 1) as u8);
        let hidden = tempfile::Builder::new()
            .prefix("pmig-hosts-")
            .tempdir()
            .expect("create a temporary directory");
        set_mode(hidden.path(), 0o755);
        let hosts = Hosts {
            src_ns: format!("pmig-{pid}-{n}-src"),
            dst_ns: format!("pmig-{pid}-{n}-dst"),
            src_addr: Ipv4Addr::new(10, a, b, 1),
            dst_addr: Ipv4Addr::new(10, a, b, 2),
            veth: (
                format!("pv{}{n}a", pid % 10000),
                format!("pv{}{n}b", pid % 10000),
            ),
            hidden,
            hide: std::env::var(SHARED_FS_ENV).map_or(true, |v| v != "1"),
        };
        // Left over by a killed run of a process with our pid, if any.
        hosts.teardown();
        if let Err(e) = ip(&["netns", "add", &hosts.src_ns]) {
            skip(
                test,
                &format!("network namespaces are not available here ({e})"),
            );
            return None;
        }
        let (va, vb) = (&hosts.veth.0, &hosts.veth.1);
        let (src_cidr, dst_cidr) = (
            format!("{}/24", hosts.src_addr),
            format!("{}/24", hosts.dst_addr),
        );
        let steps: [&[&str]; 10] = [
            &["netns", "add", &hosts.dst_ns],
            &["link", "add", va, "type", "veth", "peer", "name", vb],
            &["link", "set", va, "netns", &hosts.src_ns],
            &["link", "set", vb, "netns", &hosts.dst_ns],
            &["-n", &hosts.src_ns, "addr", "add", &src_cidr, "dev", va],
            &["-n", &hosts.dst_ns, "addr", "add", &dst_cidr, "dev", vb],
            &["-n", &hosts.src_ns, "link", "set", "lo", "up"],
            &["-n", &hosts.dst_ns, "link", "set", "lo", "up"],
            &["-n", &hosts.src_ns, "link", "set", va, "up"],
            &["-n", &hosts.dst_ns, "link", "set", vb, "up"],
        ];
        for args in steps {
            if let Err(e) = ip(args) {
                panic!("setting up the two hosts of {test}: {e}");
            }
        }
        fs::create_dir(hosts.src_dir()).expect("create the source directory");
        set_mode(&hosts.src_dir(), 0o755);
        Some(hosts)
    }

    /// `SRC`: the directory the tests run the source program in and copy it into; missing
    /// on the target unless [`SHARED_FS_ENV`] is set.
    pub fn src_dir(&self) -> PathBuf {
        self.hidden.path().join("src")
    }

    /// The directory hidden on the target (the parent of [`Hosts::src_dir`]).
    pub fn hidden_dir(&self) -> &Path {
        self.hidden.path()
    }

    /// Whether the source's files are hidden on the target (the default).
    pub fn hides_source_files(&self) -> bool {
        self.hide
    }

    /// Copies `program` into [`Hosts::src_dir`] (mode 0755) and returns the copy's path.
    pub fn stage(&self, program: impl AsRef<Path>) -> PathBuf {
        let from = program.as_ref();
        let to = self
            .src_dir()
            .join(from.file_name().expect("program path has a file name"));
        copy_executable(from, &to);
        to
    }

    /// A command running `exe` on the source: `ip netns exec SRC_NS exe`, in `cwd`.
    pub fn on_source(&self, exe: impl AsRef<OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.src_ns])
            .arg(exe)
            .current_dir(cwd);
        cmd
    }

    /// A command running `exe` on the target, in its own mount namespace where
    /// [`Hosts::hidden_dir`] is an empty tmpfs (see the module documentation), in `cwd`
    /// (which must be visible on the target).  Arguments added to the command go to `exe`.
    pub fn on_target(&self, exe: impl AsRef<OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.dst_ns]);
        if self.hide {
            cmd.args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"d="$1"; shift; mount -t tmpfs -o mode=0755 pmig-hidden "$d" && exec "$@""#)
                .arg("sh")
                .arg(self.hidden.path());
        }
        cmd.arg(exe).current_dir(cwd);
        cmd
    }

    /// A command running `exe` in the target's network namespace only (a client, say),
    /// seeing the host's files.
    pub fn in_target_net(&self, exe: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.dst_ns]).arg(exe);
        cmd
    }

    /// A command running `exe` in the source's network namespace only.
    pub fn in_source_net(&self, exe: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.src_ns]).arg(exe);
        cmd
    }

    /// A TCP connection to `addr` made from inside network namespace `ns` (e.g.
    /// [`Hosts::dst_ns`]): a thread of this process enters the namespace, connects and ends;
    /// the socket stays in that namespace.
    pub fn connect_from(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let netns = fs::File::open(Path::new("/run/netns").join(ns))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on an open namespace file; it changes only this thread's
                // network namespace, and the thread ends right after.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            })
            .join()
            .expect("the connecting thread panicked")
        })
    }

    /// `path` as process `pid` sees it (through `/proc/<pid>/root`, which enters its mount
    /// namespace).
    pub fn seen_by(pid: libc::pid_t, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{pid}/root")).join(rel)
    }

    fn teardown(&self) {
        for ns in [&self.src_ns, &self.dst_ns] {
            if Path::new("/run/netns").join(ns).exists() {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    eprintln!("pmig hosts: cannot delete network namespace {ns}: {e}");
                }
            }
        }
        // Only left in the root namespace if the setup stopped before moving it.
        if Path::new("/sys/class/net").join(&self.veth.0).exists() {
            let _ = ip(&["link", "del", &self.veth.0]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Prints the skip message of `test`.
fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}; run the tests as root with iproute2 and util-linux installed to run it");
}

/// Runs `ip ARGS`; the error holds its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `name` in one of `PATH`'s directories, if there.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path: OsString =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
