//! `install.sh`: pmig installed under a prefix works from there alone.
//!
//! The build directory's artifacts are installed (`--no-build`, this test's profile) into a
//! temporary prefix; then the installed commands, and only they, checkpoint and resume a
//! program (PMIG_PRELOAD and PMIG_ENGINE unset: pmig-run and pmig-resume must find the
//! library and the engine in `../lib/pmig/`); `--version` answers; the man pages render;
//! the installed libpmig.so carries no debug info, which is in a separate file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use pmig_tests::{programs, Bins, Chain, ChainOpts, Program, Sandbox};

/// Runs `cmd`, fails the test unless it exits 0, and returns its stdout.
fn output(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the ELF file at `path` has a `.debug_info` section (read from its section
/// headers: the bare string is also in std's backtrace code).
fn has_debug_info(path: &Path) -> bool {
    let b = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&b[..5], b"\x7fELF\x02", "{} is not a 64-bit ELF file", path.display());
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let section = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(section(shstrndx) + 0x18);
    (0..shnum).any(|i| {
        let name = strtab + u32_at(section(i));
        b[name..].starts_with(b".debug_info\0") && u32_at(section(i) + 4) != 8 // not SHT_NOBITS
    })
}

#[test]
fn installed_pmig_runs_from_its_prefix() {
    let built = Bins::locate();
    let sb = Sandbox::new();
    let prefix = sb.path().join("prefix");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let profile = built.dir.file_name().expect("the profile directory").to_owned();
    let target = built.dir.parent().expect("the target directory");
    let mut install = Command::new(root.join("install.sh"));
    install
        .arg("--prefix")
        .arg(&prefix)
        .arg("--profile")
        .arg(&profile)
        .arg("--no-build")
        .env("CARGO_TARGET_DIR", target);
    output(install, "install.sh");

    let lib = prefix.join("lib/pmig");
    let installed = Bins {
        dir: prefix.join("bin"),
        run: prefix.join("bin/pmig-run"),
        resume: prefix.join("bin/pmig-resume"),
        preload: lib.join("libpmig.so"),
        engine: lib.join("pmig-restore-engine"),
    };
    for p in [&installed.run, &installed.resume, &installed.preload, &installed.engine] {
        assert!(p.is_file(), "install.sh did not place {}", p.display());
    }
    assert!(!installed.dir.join("libpmig.so").exists(), "libpmig.so belongs in lib/pmig, not bin");

    // Debug info: built with it (else this proves nothing), installed without, kept aside.
    assert!(has_debug_info(&built.preload), "the built libpmig.so has no debug info to strip");
    assert!(!has_debug_info(&installed.preload), "the installed libpmig.so still carries debug info");
    assert!(has_debug_info(&lib.join(".debug/libpmig.so.debug")), "libpmig.so's debug info was not kept aside");

    for (exe, name) in [(&installed.run, "pmig-run"), (&installed.resume, "pmig-resume")] {
        let mut cmd = Command::new(exe);
        cmd.arg("--version");
        let v = output(cmd, &format!("{name} --version"));
        assert_eq!(v.trim(), format!("{name} (pmig) {}", env!("CARGO_PKG_VERSION")));

        let page = prefix.join(format!("share/man/man1/{name}.1"));
        let roff = fs::read_to_string(&page).unwrap_or_else(|e| panic!("read {}: {e}", page.display()));
        assert!(roff.starts_with(&format!(".TH {} 1 ", name.to_uppercase())), "{roff}");
        let mut help = Command::new(exe);
        help.arg("--help");
        let help = output(help, &format!("{name} --help"));
        // Every option --help lists is in the page.
        for opt in help.lines().filter_map(|l| l.strip_prefix("  --")).map(|l| l.split_whitespace().next().unwrap()) {
            assert!(roff.contains(&format!("\\fB\\-\\-{}\\fR", opt.replace('-', "\\-"))), "{name}.1 lacks --{opt}:\n{roff}");
        }
        if Path::new("/usr/bin/man").is_file() {
            let mut man = Command::new("/usr/bin/man");
            man.arg("-l").arg(&page).env("MANPAGER", "cat").env("MANWIDTH", "100").env("LC_ALL", "C.UTF-8");
            let text = output(man, &format!("man -l {name}.1"));
            assert!(text.contains("SYNOPSIS") && text.contains("OPTIONS") && text.contains("--ids") == (name == "pmig-resume"), "{text}");
        }
    }

    // The installed commands alone, in a sandbox that uses them.
    let sb = Sandbox::with_bins(installed);
    let prog = Program::new("counter", programs::COUNTER, 30, &[]);
    let report = Chain::new(&sb, &prog, ChainOpts::default()).run();
    assert_eq!(report.checkpoint_steps.len(), 2);
    let _: PathBuf = report.image;
}
