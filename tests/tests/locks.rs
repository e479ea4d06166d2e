//! File locks held across checkpoints: `flock`, POSIX record locks and OFD locks are held
//! again after each restore (`locks.c` checks them from another process every step), a lock
//! another process holds at restore time makes pmig-resume refuse, naming the file, and
//! sqlite3 keeps its write lock across a checkpoint.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pmig_tests::{fail_with, pmig_env, programs, wait_until, Chain, ChainOpts, Input, Proc, Program, Sandbox, StepCheck, Terminal};

const STEPS: u32 = 60;
const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn locks_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("locks", programs::LOCKS, STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn locks_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("locks-user", programs::LOCKS, STEPS);
}

/// A checkpoint the program survives: `--inspect` lists the locks the image holds; its copy
/// still holds them, so resuming the image is refused, naming the file, and nothing runs;
/// once the original is gone the resume works.
#[test]
fn a_lock_held_elsewhere_refuses_the_restore() {
    let sb = Sandbox::new();
    let image = sb.image("locks.pmig");
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--image").arg(&image).args(["--", programs::LOCKS, "100000"]);
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run locks (goes on)", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, 100000, Input::Idle);
    for _ in 0..3 {
        let l = p.next_line(TIMEOUT).unwrap().expect("a step");
        steps.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    }
    p.signal(libc::SIGUSR2).unwrap();
    wait_until(TIMEOUT, "the checkpoint", || p.stderr_text().contains("checkpoint written").then_some(()))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    // --inspect names the locks the image holds.
    let out = Command::new(&sb.bins().resume).arg("--inspect").arg(&image).output().expect("pmig-resume --inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["Flock write", "Posix write 10-19", "Posix read 100-EOF", "Ofd write 0-4"] {
        assert!(text.contains(want), "--inspect must list the lock {want:?}:\n{text}");
    }
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume"));
    cmd.arg(&image);
    pmig_env(&mut cmd);
    let out = cmd.output().expect("pmig-resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the restore must be refused while the original holds the locks: {err}");
    assert!(err.contains("locks-") && err.contains("is locked"), "the refusal must name the locked file: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "nothing may run: {}", String::from_utf8_lossy(&out.stdout));
    // The original goes on, its locks its own.
    let l = p.next_line(TIMEOUT).unwrap().expect("a step");
    steps.accept(&l).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    p.signal(libc::SIGKILL).unwrap();
    let _ = p.wait_exit(TIMEOUT);
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume-2"));
    cmd.arg(&image);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume locks (original gone)", cmd, Terminal::Pipe);
    for _ in 0..3 {
        let l = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r])).expect("a step after the restore");
        assert!(l.starts_with("step "), "{l}: {}", r.describe());
    }
    r.signal(libc::SIGKILL).unwrap();
    let _ = r.wait_exit(TIMEOUT);
}

/// sqlite3's shell holding a write lock (`BEGIN EXCLUSIVE`) across a checkpoint: after the
/// restore another sqlite3 is still refused ("database is locked"), and gets in once the
/// resumed shell commits; the committed row is there.
#[test]
fn sqlite3_keeps_its_write_lock() {
    if !Path::new(programs::SQLITE3).exists() {
        panic!("sqlite3 is not installed (.ci/run installs it: apt-get install sqlite3)");
    }
    let sb = Sandbox::new();
    let image = sb.image("sqlite.pmig");
    let db = sb.file("locked.db");
    let other = |sql: &str| {
        let out = Command::new(programs::SQLITE3).arg(&db).arg(sql).output().expect("sqlite3");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    assert!(other("create table t (x int); insert into t values (1);").0);
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--exit").arg("--image").arg(&image).arg("--").arg(programs::SQLITE3).arg(&db);
    pmig_env(&mut cmd);
    let mut s = Proc::spawn("pmig-run sqlite3", cmd, Terminal::Pipe);
    s.feed("begin exclusive; insert into t values (2); select 'held';\n").unwrap();
    let l = s.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s])).expect("held");
    assert_eq!(l, "held", "{}", s.describe());
    assert!(other("insert into t values (3);").1.contains("locked"), "another sqlite3 must be refused while the lock is held");
    s.signal(libc::SIGUSR2).unwrap();
    let st = s.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut s]));
    assert!(st.success(), "{}", s.describe());
    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume"));
    cmd.arg(&image);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume sqlite3", cmd, Terminal::Pipe);
    // The resumed shell holds the lock again: wait until it runs, then try.
    r.feed("select 'back';\n").unwrap();
    let l = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r])).expect("back");
    assert_eq!(l, "back", "{}", r.describe());
    let (ok, said) = other("insert into t values (3);");
    assert!(!ok && said.contains("locked"), "the restored shell must still hold the write lock: {said}\n{}", r.describe());
    r.feed("commit; select count(*) from t;\n").unwrap();
    let l = r.next_line(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r])).expect("count");
    assert_eq!(l, "2", "{}", r.describe());
    let (ok, said) = other("insert into t values (3); select count(*) from t;");
    assert!(ok && said.trim() == "3", "once committed another sqlite3 gets in: {said}");
    r.close_stdin();
    let st = r.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(st.success(), "{}", r.describe());
}
