//! [`Sandbox`]: a temporary directory per test, holding the image, the
//! working directories of each process and any data files, optionally set
//! up for an unprivileged user ([`RunAs`]).
//!
//! Layout:
//! ```text
//! <tmp>/            0755
//!   bin/            0755  copies of the pmig binaries and staged programs (RunAs only)
//!   img/            0777  images (pmig writes a temp file here, then renames)
//!   work-<name>/    0777  one working directory per process
//!   files/          0777  data files of the files test
//! ```

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bins::{copy_executable, Bins};

/// An unprivileged identity to run pmig and the program as, through
/// `setpriv --reuid=UID --regid=GID --clear-groups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// Real and effective user id.
    pub uid: u32,
    /// Real and effective group id.
    pub gid: u32,
}

/// Where `setpriv` (util-linux) is expected.
pub const SETPRIV: &str = "/usr/bin/setpriv";

impl RunAs {
    /// `nobody:nogroup` (65534:65534).
    pub fn nobody() -> RunAs {
        RunAs {
            uid: 65534,
            gid: 65534,
        }
    }

    /// `Some(nobody)` when the tests run as root (so they can switch user),
    /// `None` otherwise.
    pub fn nobody_if_root() -> Option<RunAs> {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        (unsafe { libc::geteuid() } == 0).then(RunAs::nobody)
    }

    /// The `setpriv` prefix, ending with `--`.
    pub fn prefix(&self) -> Vec<OsString> {
        vec![
            SETPRIV.into(),
            format!("--reuid={}", self.uid).into(),
            format!("--regid={}", self.gid).into(),
            "--clear-groups".into(),
            "--".into(),
        ]
    }
}

/// A temporary directory for one test (removed on drop), with the pmig
/// binaries it uses.
pub struct Sandbox {
    dir: tempfile::TempDir,
    bins: Bins,
    run_as: Option<RunAs>,
}

impl Sandbox {
    /// A sandbox running everything as the current user, with the binaries
    /// from the build directory ([`Bins::locate`]).
    pub fn new() -> Sandbox {
        Sandbox::with_user(None)
    }

    /// A sandbox running pmig and the programs as `run_as` (when `Some`):
    /// directories are made reachable for that user, and the pmig binaries
    /// are copied into `bin/` so the build directory's permissions do not
    /// matter.
    pub fn with_user(run_as: Option<RunAs>) -> Sandbox {
        let built = Bins::locate();
        let dir = tempfile::Builder::new()
            .prefix("pmig-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        set_mode(dir.path(), 0o755);
        let bins = match run_as {
            Some(user) => {
                if !Path::new(SETPRIV).is_file() {
                    panic!("{SETPRIV} is missing (Debian package util-linux); it is needed to run as uid {}", user.uid);
                }
                let bin = dir.path().join("bin");
                fs::create_dir(&bin).expect("create bin/");
                set_mode(&bin, 0o755);
                built.copy_to(&bin)
            }
            None => built,
        };
        let sandbox = Sandbox { dir, bins, run_as };
        sandbox.shared_dir("img");
        sandbox
    }

    /// A sandbox running everything as the current user with `bins` (e.g. an installed
    /// pmig) instead of the build directory's.
    pub fn with_bins(bins: Bins) -> Sandbox {
        let mut sandbox = Sandbox::new();
        sandbox.bins = bins;
        sandbox
    }

    /// The sandbox's root directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The binaries this sandbox runs.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// The user everything runs as, if not the current one.
    pub fn run_as(&self) -> Option<RunAs> {
        self.run_as
    }

    /// The path of image `name` (not created).
    pub fn image(&self, name: &str) -> PathBuf {
        self.path().join("img").join(name)
    }

    /// A fresh working directory `work-<name>` (created, mode 0777).
    pub fn workdir(&self, name: &str) -> PathBuf {
        self.shared_dir(&format!("work-{name}"))
    }

    /// The path of data file `name` in `files/` (the directory is created,
    /// mode 0777; the file is not).
    pub fn file(&self, name: &str) -> PathBuf {
        self.shared_dir("files").join(name)
    }

    /// `program` as the sandbox's user can run it: unchanged when running
    /// as the current user, else a copy in `bin/`.
    pub fn stage(&self, program: &str) -> PathBuf {
        let from = Path::new(program);
        match self.run_as {
            None => from.to_path_buf(),
            Some(_) => {
                let to = self
                    .path()
                    .join("bin")
                    .join(from.file_name().expect("program path has a file name"));
                if !to.exists() {
                    copy_executable(from, &to);
                }
                to
            }
        }
    }

    /// A `Command` that runs `exe` as the sandbox's user (through `setpriv`
    /// when needed), in `cwd`.
    pub fn command(&self, exe: &Path, cwd: &Path) -> Command {
        let mut cmd = match self.run_as {
            None => Command::new(exe),
            Some(user) => {
                let prefix = user.prefix();
                let mut cmd = Command::new(&prefix[0]);
                cmd.args(&prefix[1..]).arg(exe);
                cmd
            }
        };
        cmd.current_dir(cwd);
        cmd
    }

    fn shared_dir(&self, name: &str) -> PathBuf {
        let dir = self.path().join(name);
        if !dir.is_dir() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            set_mode(&dir, 0o777);
        }
        dir
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
