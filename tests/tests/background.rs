//! End-to-end tests of checkpoints the program survives, which are written in the background
//! (a child writes the image from a copy-on-write snapshot while the program goes on): the
//! image is the state at the signal, not a later one; a request made while an image is being
//! written is served after it; memory a child would not see as it is (`MADV_DONTFORK`,
//! `MADV_WIPEONFORK`, `MAP_SHARED`) comes back right; a write that fails leaves the program
//! running and the previous image intact.
//!
//! They run `tests/programs/snapshot.c`, which changes its memory at every iteration, checks
//! its whole state once restored, and prints when it sees a new image and the longest pause
//! it had before it (printed here, never asserted on). Each test also checks that the program
//! ran while the image was written (it saw the image many iterations after the state the
//! image holds): with `PMIG_BACKGROUND=0` (the program stopped for the whole checkpoint) they
//! fail.
//!
//! Needs the pmig binaries built first, in the same profile:
//! `cargo build --workspace && cargo test -p pmig-tests`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pmig_tests::{fail_with, pmig_env, programs, wait_until, Proc, Sandbox, Terminal, CHECKPOINT_TIMEOUT, RESUME_TIMEOUT, STEP_TIMEOUT};

/// Iterations the program must have made between the state an image holds and the moment it
/// saw that image: more than a program stopped for the whole write can make (it looks every
/// 16 iterations: at most 17 after it is released), far fewer than one running meanwhile
/// makes (an iteration takes a microsecond or so; writing and syncing tens of MiB takes
/// tens of milliseconds — one run on a loaded machine still made 699).
const RAN_MEANWHILE: u64 = 64;

/// Starts `snapshot MIB IMAGE` under `pmig-run --image IMAGE` (no `--exit`), with pmig's
/// phase log on (the tests read it), and waits for it to be ready.
fn start(sb: &Sandbox, image: &Path, mib: u32) -> Proc {
    let prog = sb.stage(programs::SNAPSHOT);
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--image").arg(image).arg("--").arg(&prog).arg(mib.to_string()).arg(image);
    pmig_env(&mut cmd);
    cmd.env("PMIG_DEBUG", "1");
    let mut p = Proc::spawn("pmig-run (snapshot)", cmd, Terminal::Pipe);
    next_with(&mut p, "ready", STEP_TIMEOUT);
    p
}

/// Reads lines until one starts with `prefix` (ticks and others are passed over); returns it.
fn next_with(p: &mut Proc, prefix: &str, timeout: Duration) -> String {
    loop {
        match p.next_line(timeout) {
            Ok(Some(l)) if l.starts_with("CORRUPT") => fail_with(&format!("the program says: {l}"), &mut [p]),
            Ok(Some(l)) if l.starts_with(prefix) => return l,
            Ok(Some(_)) => {}
            Ok(None) => fail_with(&format!("the program exited before a line starting with {prefix:?}"), &mut [p]),
            Err(e) => fail_with(&e, &mut [p]),
        }
    }
}

/// The numbers of a line `WORD N [M] [ok]`.
fn numbers(line: &str) -> Vec<u64> {
    line.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect()
}

/// Waits for the program to see a new image: `(iteration, longest pause in µs)`.
fn image_seen(p: &mut Proc) -> (u64, u64) {
    let n = numbers(&next_with(p, "image ", CHECKPOINT_TIMEOUT));
    (n[0], n[1])
}

/// Waits until pmig's log (the program's stderr) has `n` lines containing `what`.
fn wait_log(p: &mut Proc, what: &str, n: usize) -> String {
    wait_until(CHECKPOINT_TIMEOUT, what, || {
        let text = p.stderr_text();
        (text.matches(what).count() >= n).then_some(text)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [p]))
}

/// Resumes `image` and returns the iteration the restored program checked its state at.
fn resume_checked(sb: &Sandbox, image: &Path) -> u64 {
    let (mut r, at) = resume(sb, image);
    kill(&mut r);
    at
}

/// Resumes `image` (pmig's log on): the restored program, and the iteration it checked its
/// state at.
fn resume(sb: &Sandbox, image: &Path) -> (Proc, u64) {
    let mut cmd = Command::new(&sb.bins().resume);
    cmd.arg(image).current_dir(sb.workdir("resume"));
    pmig_env(&mut cmd);
    cmd.env("PMIG_DEBUG", "1");
    let mut r = Proc::spawn("pmig-resume (snapshot)", cmd, Terminal::Pipe);
    let line = next_with(&mut r, "restored ", RESUME_TIMEOUT);
    if !line.ends_with(" ok") {
        fail_with(&format!("unexpected line {line:?}"), &mut [&mut r]);
    }
    (r, numbers(&line)[0])
}

/// Kills `p` (the program) and reaps it.
fn kill(p: &mut Proc) {
    p.signal(libc::SIGKILL).unwrap_or_else(|e| fail_with(&e, &mut [p]));
    let _ = p.wait_exit(CHECKPOINT_TIMEOUT);
}

/// Checks that the program ran on while the image holding iteration `at` was written: it
/// saw it at iteration `seen`.
fn ran_meanwhile(at: u64, seen: u64, what: &str) {
    assert!(at < seen, "{what}: the image holds iteration {at}, later than the one the program saw it at ({seen})");
    assert!(
        seen - at > RAN_MEANWHILE,
        "{what}: the program saw the image at iteration {seen}, only {} after the state it holds ({at}): it did not run while the image was written",
        seen - at
    );
}

#[test]
fn background_checkpoint_restores_the_state_at_the_signal() {
    let sb = Sandbox::new();
    let image = sb.image("snap.pmig");
    let mut p = start(&sb, &image, 128);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let (seen, pause_us) = image_seen(&mut p);
    let log = wait_log(&mut p, "checkpoint written to", 1);
    // The program goes on after the image is written.
    next_with(&mut p, "tick ", STEP_TIMEOUT);
    kill(&mut p);
    let at = resume_checked(&sb, &image);
    eprintln!("128 MiB: image of iteration {at}, seen by the program at {seen}; its longest pause: {:.1} ms", pause_us as f64 / 1000.0);
    eprintln!("pmig's log:\n{log}");
    ran_meanwhile(at, seen, "one checkpoint");
}

#[test]
fn second_request_during_a_background_write_is_served_after_it() {
    let sb = Sandbox::new();
    let image = sb.image("twice.pmig");
    let mut p = start(&sb, &image, 256);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    // The first image is being written: ask again.
    wait_log(&mut p, "image writer", 1);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let (first, _) = image_seen(&mut p);
    let (second, pause_us) = image_seen(&mut p);
    let log = wait_log(&mut p, "checkpoint written to", 2);
    kill(&mut p);
    // In order: the second writer starts once the first image is written.
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("image writer") && l.contains("started") || l.contains("checkpoint written to")).collect();
    let kinds: Vec<bool> = lines.iter().map(|l| l.contains("started")).collect();
    assert_eq!(kinds, [true, false, true, false], "pmig's log, writers started and images written, in order:\n{log}");
    assert!(!log.contains("checkpoint failed"), "{log}");
    let at = resume_checked(&sb, &image);
    eprintln!("256 MiB: first image seen at iteration {first}; second image of {at}, seen at {second}; longest pause {:.1} ms", pause_us as f64 / 1000.0);
    // The second image is the state at its own start, after the first was written.
    assert!(at + 16 >= first, "the second image holds iteration {at}, before the first image was written ({first})");
    ran_meanwhile(at, second, "the second checkpoint");
}

#[test]
fn background_checkpoint_keeps_dontfork_wipeonfork_and_shared_memory() {
    // The program checks, once restored, that its MADV_DONTFORK, MADV_WIPEONFORK and
    // MAP_SHARED regions hold the iteration its buffer says (a writer that read them in its
    // own copy would find them missing, zeros, or later) and still have their flags.
    let sb = Sandbox::new();
    let image = sb.image("flags.pmig");
    let mut p = start(&sb, &image, 64);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let (seen, _) = image_seen(&mut p);
    let log = wait_log(&mut p, "checkpoint written to", 1);
    kill(&mut p);
    let copied = log.lines().find(|l| l.contains("copied aside")).unwrap_or_else(|| panic!("no pages copied aside:\n{log}"));
    assert!(copied.contains("192 KiB"), "three 64 KiB regions copied aside: {copied}");
    let at = resume_checked(&sb, &image);
    ran_meanwhile(at, seen, "with DONTFORK, WIPEONFORK and shared regions");
}

/// Mounts a tmpfs of `mib` MiB on `dir` for the life of the value.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        fs::create_dir_all(dir).expect("make the mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn failed_background_write_leaves_the_program_and_the_previous_image() {
    let sb = Sandbox::new();
    // A file system with room for one image and not two: the second write runs out of space.
    let Some(fs_) = Tmpfs::mount(&sb.path().join("small"), 56) else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let image = fs_.0.join("small.pmig");
    let mut p = start(&sb, &image, 32);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let (seen, _) = image_seen(&mut p);
    wait_log(&mut p, "checkpoint written to", 1);
    let good = fs::read(&image).expect("read the first image");
    let ino = fs::metadata(&image).expect("stat the first image").ino();

    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let log = wait_log(&mut p, "checkpoint failed", 1);
    let started = log.lines().filter(|l| l.contains("image writer") && l.contains("started")).count();
    assert_eq!(started, 2, "the second image was not written in the background:\n{log}");
    let failure: Vec<&str> = log.lines().filter(|l| l.contains("checkpoint failed")).collect();
    assert_eq!(failure.len(), 1, "one line says why:\n{log}");
    assert!(failure[0].contains("No space left on device") || failure[0].contains("ENOSPC"), "{}", failure[0]);
    // The program goes on, and the first image is there, whole.
    next_with(&mut p, "tick ", STEP_TIMEOUT);
    next_with(&mut p, "tick ", STEP_TIMEOUT);
    assert!(fs::read(&image).expect("read the image") == good, "the first image changed");
    assert_eq!(fs::metadata(&image).expect("stat the image").ino(), ino);
    let beside: Vec<String> = fs::read_dir(&fs_.0)
        .expect("list the image directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "small.pmig" && n != "small.pmig.log")
        .collect();
    assert!(beside.is_empty(), "files left beside the image: {beside:?}");
    kill(&mut p);
    eprintln!("pmig's log:\n{log}");
    let at = resume_checked(&sb, &image);
    ran_meanwhile(at, seen, "the first checkpoint");
}

#[test]
fn program_killed_during_a_background_write_takes_the_write_with_it() {
    // As when the program is stopped for the whole checkpoint: the unnamed file is freed
    // with its writer, and no image (or the previous one) is left.
    let sb = Sandbox::new();
    let image = sb.image("killed.pmig");
    let mut p = start(&sb, &image, 256);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let log = wait_log(&mut p, "started", 1);
    let writer: i32 = log
        .lines()
        .find(|l| l.contains("image writer") && l.contains("started"))
        .and_then(|l| l.split_whitespace().rev().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no writer's pid in:\n{log}"));
    kill(&mut p);
    wait_until(CHECKPOINT_TIMEOUT, "the writer to end with the program", || {
        let state = fs::read_to_string(format!("/proc/{writer}/stat")).ok();
        // Gone, or a zombie nobody reaps yet (its parent is dead: init reaps it).
        state.filter(|s| !s.contains(") Z ")).is_none().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!image.exists(), "the image was complete before the kill (heap too small for this machine?): the test proves nothing");
    let left: Vec<String> = fs::read_dir(image.parent().expect("image dir"))
        .expect("list the image directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| n.ends_with(".log")), "files left: {left:?}");
}

#[test]
fn restored_program_in_its_pid_namespace_checkpoints_in_the_background() {
    // After a restore the program runs in a pid namespace of its own (exact ids): its writer
    // is a process of that namespace, and the image it writes restores again.
    let sb = Sandbox::new();
    let image = sb.image("again.pmig");
    let mut p = start(&sb, &image, 64);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    image_seen(&mut p);
    wait_log(&mut p, "checkpoint written to", 1);
    kill(&mut p);
    let (mut r, first) = resume(&sb, &image);
    r.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let (seen, _) = image_seen(&mut r);
    let log = wait_log(&mut r, "checkpoint written to", 1);
    kill(&mut r);
    assert!(log.contains("image writer"), "not written in the background:\n{log}");
    let at = resume_checked(&sb, &image);
    assert!(at > first, "the second image holds iteration {at}, not later than the first restore ({first})");
    ran_meanwhile(at, seen, "a restored program's checkpoint");
}

#[test]
fn child_forked_during_a_background_write_exits_at_once() {
    // The program's own `exit` waits for a write in progress; a child it forks meanwhile
    // has no write of its own to wait for.
    let sb = Sandbox::new();
    let image = sb.image("fork.pmig");
    let mut p = start(&sb, &image, 256);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    wait_log(&mut p, "started", 1);
    p.signal(libc::SIGUSR1).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    next_with(&mut p, "forked", STEP_TIMEOUT);
    let (seen, _) = image_seen(&mut p);
    let log = wait_log(&mut p, "checkpoint written to", 1);
    kill(&mut p);
    assert!(!log.contains("checkpoint failed"), "{log}");
    let at = resume_checked(&sb, &image);
    ran_meanwhile(at, seen, "with a fork during the write");
}
