//! [`Bins`]: the pmig binaries under test, found next to the test executable.
//!
//! A test executable lives at `target/<profile>/deps/<test>-<hash>`; the
//! workspace's binaries are in `target/<profile>/`.  `cargo test -p
//! pmig-tests` does not build the other crates' binaries, so the tests
//! require a prior `cargo build --workspace` (same profile) and say so when
//! anything is missing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Paths of the four pmig artifacts, all in one directory.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The directory holding all four.
    pub dir: PathBuf,
    /// `pmig-run`, the launcher.
    pub run: PathBuf,
    /// `pmig-resume`, the restorer front end.
    pub resume: PathBuf,
    /// `libpmig.so`, the preloaded library.
    pub preload: PathBuf,
    /// `pmig-restore-engine`, exec'd by `pmig-resume`.
    pub engine: PathBuf,
}

/// File names of the artifacts, in [`Bins`] field order.
pub const ARTIFACTS: [&str; 4] = [
    "pmig-run",
    "pmig-resume",
    "libpmig.so",
    "pmig-restore-engine",
];

impl Bins {
    /// The artifacts in `dir`, without checking that they exist.
    pub fn in_dir(dir: &Path) -> Bins {
        Bins {
            dir: dir.to_path_buf(),
            run: dir.join(ARTIFACTS[0]),
            resume: dir.join(ARTIFACTS[1]),
            preload: dir.join(ARTIFACTS[2]),
            engine: dir.join(ARTIFACTS[3]),
        }
    }

    /// Finds the artifacts of the profile this test executable was built
    /// with; panics, saying to run `cargo build --workspace` first, if any
    /// is missing.
    pub fn locate() -> Bins {
        let exe = std::env::current_exe().expect("current_exe() of the test executable");
        // .../target/<profile>/deps/<test> → .../target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|deps| {
                if deps.file_name().is_some_and(|n| n == "deps") {
                    deps.parent()
                } else {
                    Some(deps)
                }
            })
            .expect("the test executable has a parent directory")
            .to_path_buf();
        let bins = Bins::in_dir(&profile_dir);
        let missing: Vec<&str> = ARTIFACTS
            .iter()
            .copied()
            .filter(|name| !profile_dir.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            panic!(
                "pmig binaries missing from {}: {}; run `cargo build --workspace` first \
                 (with the same profile as the tests, e.g. add --release to both)",
                profile_dir.display(),
                missing.join(", ")
            );
        }
        bins
    }

    /// Copies all four artifacts into `dir` (mode 0755) and returns the
    /// copies: used to give an unprivileged user binaries it can reach
    /// whatever the permissions of the build directory.
    pub fn copy_to(&self, dir: &Path) -> Bins {
        let copy = Bins::in_dir(dir);
        for (from, to) in [
            (&self.run, &copy.run),
            (&self.resume, &copy.resume),
            (&self.preload, &copy.preload),
            (&self.engine, &copy.engine),
        ] {
            copy_executable(from, to);
        }
        copy
    }
}

/// Copies `from` to `to` and makes the copy mode 0755.
pub fn copy_executable(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", to.display()));
}
