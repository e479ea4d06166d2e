//! Lazy restore: the program runs again at once and its memory comes in on first touch and
//! in the background (pmig-resume's pager, through userfaultfd; root only).
//!
//! - `lazy_chain_of_1_gib_reads_back_every_byte`: `lazy.c` with 1 GiB through checkpoint →
//!   lazy resume → checkpoint (of a process whose memory may still be coming in) → lazy
//!   resume; every step after a restore forks before its memory is in, drops, moves and
//!   replaces mappings the pager has not filled yet, and reads back every byte; pmig-resume
//!   says the pager served the memory.
//! - `eager_chain`: the same program with `--eager` (the pager is not used).
//! - `checkpoint_while_memory_comes_in`: a checkpoint right after a lazy restore waits for the
//!   pager, and its image holds all of the memory.
//! - `packed_image_lazy_chain`: a packed image is unpacked as the pager needs it.
//! - `damaged_lazy_page_stops_the_program`: a flipped byte in the lazily served memory stops
//!   the program before it can read it, and pmig-resume exits 1 naming the damage.

use std::fs;
use std::process::Command;

use std::time::Duration;

use pmig_tests::{programs, wait_until, Chain, ChainOpts, Input, Proc, Program, Sandbox, StepCheck, Terminal};

const MIB: u64 = 1024 * 1024;

use pmig_tests::is_root;

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {test}: a lazy restore needs root (userfaultfd with fork events); run the tests as root to run it");
    true
}

fn debug_env() -> Vec<(String, String)> {
    vec![("PMIG_DEBUG".into(), "1".into())]
}

#[test]
fn lazy_chain_of_1_gib_reads_back_every_byte() {
    if skip_unless_root("lazy_chain_of_1_gib_reads_back_every_byte") {
        return;
    }
    let sb = Sandbox::new();
    let prog = Program::new("lazy-1g", programs::LAZY, 16, &["1024"]);
    let opts = ChainOpts { first_stop: 2, resume_steps: 2, resume_env: debug_env(), ..ChainOpts::default() };
    let report = Chain::new(&sb, &prog, opts).run();
    assert_eq!(report.resume_stderr.len(), 2);
    for (i, err) in report.resume_stderr.iter().enumerate() {
        // The pager served the big region (most of the 1 GiB) and finished.
        let served = err.lines().find_map(|l| {
            let rest = l.split("pager serves process ").nth(1)?;
            let mib: u64 = rest.split('(').nth(1)?.split(' ').next()?.parse().ok()?;
            Some(mib)
        });
        assert!(
            served.is_some_and(|m| m >= 1000),
            "resume #{}: pmig-resume does not say its pager served the 1 GiB lazily:\n{err}",
            i + 1
        );
        assert!(err.contains("pager done"), "resume #{}: the pager did not finish:\n{err}", i + 1);
    }
    let size = report.image_sizes.iter().copied().max().unwrap_or(0);
    assert!(size >= 1024 * MIB, "the image ({size} bytes) must hold the whole GiB");
}

#[test]
fn eager_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("lazy-eager", programs::LAZY, 16, &["64"]);
    let opts = ChainOpts { first_stop: 2, resume_steps: 2, resume_args: vec!["--eager".into()], resume_env: debug_env(), ..ChainOpts::default() };
    let report = Chain::new(&sb, &prog, opts).run();
    for err in &report.resume_stderr {
        assert!(!err.contains("pager serves"), "--eager must read every page in first, yet the pager served:\n{err}");
    }
}

#[test]
fn damaged_lazy_page_stops_the_program() {
    if skip_unless_root("damaged_lazy_page_stops_the_program") {
        return;
    }
    let sb = Sandbox::new();
    let prog = Program::new("lazy-damaged", programs::LAZY, 40, &["64"]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts { first_stop: 2, ..ChainOpts::default() });
    chain.start_and_checkpoint();
    // A byte in the middle of the image: inside the 64 MiB region's pages, which the lazy
    // restore leaves to the pager (the checks before the restore do not read them).
    let mut bytes = fs::read(chain.image()).expect("read the image");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    let damaged = sb.image("damaged.pmig");
    fs::write(&damaged, &bytes).expect("write the damaged image");
    let mut cmd = Command::new(&sb.bins().resume);
    cmd.arg(&damaged).current_dir(sb.workdir("damaged")).env("PMIG_DEBUG", "1").env_remove("PMIG_PRELOAD");
    let mut p = Proc::spawn("pmig-resume on a damaged image", cmd, Terminal::Pipe);
    let (lines, status) = p.finish(std::time::Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    let err = p.stderr_text();
    assert!(err.contains("pager serves"), "the restore was not lazy, so this test checks nothing:\n{}", p.describe());
    assert_eq!(status.code(), Some(1), "pmig-resume must exit 1 when the pager finds damage:\n{}", p.describe());
    assert!(err.contains("the image is damaged"), "pmig-resume must name the damage:\n{}", p.describe());
    // The program never read the damaged bytes (it would have printed CORRUPT).
    assert!(!lines.iter().any(|l| l.contains("CORRUPT")), "the program saw damaged memory:\n{}", p.describe());
}

/// A checkpoint requested as soon as a lazy restore is done (before most of the memory is
/// in: it comes in while the program runs, from an image file removed meanwhile) waits for
/// the pager, and the new image holds all of the memory: the next resume reads every byte
/// back.
#[test]
fn checkpoint_while_memory_comes_in() {
    if skip_unless_root("checkpoint_while_memory_comes_in") {
        return;
    }
    let sb = Sandbox::new();
    let prog = Program::new("lazy-early", programs::LAZY, 16, &["512"]);
    let opts = ChainOpts { first_stop: 2, resume_env: debug_env(), ..ChainOpts::default() };
    let mut chain = Chain::new(&sb, &prog, opts);
    let last = chain.start_and_checkpoint();
    let mut steps = StepCheck::new(last + 1, prog.steps, Input::Idle);
    let mut p = chain.spawn_resume(&sb.workdir("early"), "pmig-resume (checkpointed at once)");
    let done = wait_until(Duration::from_secs(30), "the restore's end", || p.stderr_text().contains("restore: done").then_some(()));
    if let Err(e) = done {
        panic!("{e}\n{}", p.describe());
    }
    // The image may go while its memory comes in (the pager holds it open).
    std::fs::remove_file(chain.image()).expect("remove the image");
    p.signal(libc::SIGUSR2).expect("signal pmig-resume");
    let (lines, status) = p.finish(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    let err = p.stderr_text();
    assert!(status.success(), "the checkpoint of the lazily restored program failed:\n{}", p.describe());
    assert!(err.contains("pager serves") && err.contains("lazily restored memory all in"), "the checkpoint did not wait for a lazy restore:\n{err}");
    for l in &lines {
        steps.accept(l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    let mut p = chain.spawn_resume(&sb.workdir("last"), "pmig-resume (to the end)");
    let (lines, status) = p.finish(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    for l in &lines {
        steps.accept(l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    assert!(status.success() && steps.complete(), "the last resume did not run to the end:\n{}", p.describe());
}

/// A packed image (`--compress`) restores lazily too: only what the checks and the engine
/// read is unpacked before the program runs, the rest as the pager needs it.
#[test]
fn packed_image_lazy_chain() {
    if skip_unless_root("packed_image_lazy_chain") {
        return;
    }
    let sb = Sandbox::new();
    let prog = Program::new("lazy-packed", programs::LAZY, 16, &["256"]);
    let opts = ChainOpts { first_stop: 2, resume_steps: 2, run_args: vec!["--compress".into()], resume_env: debug_env(), ..ChainOpts::default() };
    let report = Chain::new(&sb, &prog, opts).run();
    for (i, err) in report.resume_stderr.iter().enumerate() {
        assert!(err.contains("pager serves"), "resume #{}: the packed image was not restored lazily:\n{err}", i + 1);
        assert!(!err.contains("unpacked the image"), "resume #{}: the packed image was unpacked whole first:\n{err}", i + 1);
    }
}
