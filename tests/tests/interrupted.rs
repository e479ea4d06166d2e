//! End-to-end tests of interrupted system calls: `tests/programs/interrupted.c` waits in one
//! blocking call per step (poll, select, epoll, the sleeps, System V IPC, socket timeouts, ...)
//! and treats `EINTR` as fatal, and a call that returns before its timeout as well. A
//! checkpoint must be invisible to it, in the resumed process ([`Chain`]: checkpoint with
//! `--exit`, resume, checkpoint, resume to the end) and in the one that goes on (no `--exit`).
//! Mode `own_signal` checks the other side: the program's own SIGALRM still interrupts its
//! calls with `EINTR`.
//!
//! Needs the pmig binaries built first, in the same profile:
//! `cargo build --workspace && cargo test -p pmig-tests --test interrupted`.

use std::fs;
use std::time::{Duration, Instant};

use pmig_tests::{
    describe_status, fail_with, programs, Chain, ChainOpts, Input, Program, Sandbox, StepCheck,
    CHECKPOINT_TIMEOUT, STEP_TIMEOUT,
};

/// Steps of a chain: the fewest a [`Chain`] with its default stops accepts (each waits 200 ms,
/// 1 s for `sleep`).
const CHAIN_STEPS: u32 = 18;
/// Steps of a run that goes on after its checkpoint.
const RUN_STEPS: u32 = 13;

fn program(mode: &str, steps: u32) -> Program {
    Program::new(&format!("interrupted-{mode}"), programs::INTERRUPTED, steps, &[mode])
}

/// Checkpoint with `--exit`, resume, checkpoint, resume to the end: the checkpoints land in
/// the call (the program spends nearly all its time there).
fn chain(mode: &str) {
    let sb = Sandbox::new();
    Chain::new(&sb, &program(mode, CHAIN_STEPS), ChainOpts::default()).run();
}

/// A checkpoint without `--exit` after step 3: the program goes on to its last step and
/// exits 0.
fn goes_on(mode: &str) {
    let sb = Sandbox::new();
    let prog = program(mode, RUN_STEPS);
    let chain = Chain::new(&sb, &prog, ChainOpts { first_stop: 3, resume_steps: 0, ..ChainOpts::default() });
    let image = chain.image().to_path_buf();
    let mut p = chain.spawn_run(false, &sb.workdir("run"));
    let mut steps = StepCheck::new(1, RUN_STEPS, Input::Idle);
    let accept = |p: &mut pmig_tests::Proc, steps: &mut StepCheck, line: String| {
        if let Err(e) = steps.accept(&line) {
            fail_with(&e, &mut [p]);
        }
    };
    while steps.last() < 3 {
        match p.next_line(STEP_TIMEOUT) {
            Ok(Some(line)) => accept(&mut p, &mut steps, line),
            Ok(None) => fail_with("the program exited before step 3", &mut [&mut p]),
            Err(e) => fail_with(&e, &mut [&mut p]),
        }
    }
    if let Err(e) = p.signal(libc::SIGUSR2) {
        fail_with(&e, &mut [&mut p]);
    }
    let deadline = Instant::now() + CHECKPOINT_TIMEOUT;
    while !fs::metadata(&image).is_ok_and(|m| m.len() > 0) {
        if Instant::now() >= deadline {
            fail_with("no image within the checkpoint timeout", &mut [&mut p]);
        }
        match p.next_line(Duration::from_millis(20)) {
            Ok(Some(line)) => accept(&mut p, &mut steps, line),
            Ok(None) => fail_with("the program exited before its image appeared", &mut [&mut p]),
            Err(_) => {}
        }
    }
    let (lines, status) = p
        .finish(STEP_TIMEOUT * RUN_STEPS + CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    for line in lines {
        accept(&mut p, &mut steps, line);
    }
    if !status.success() || !steps.complete() {
        let msg = format!(
            "after a checkpoint without --exit the program must run to the end and exit 0; it ended with {} after step {}",
            describe_status(status),
            steps.last()
        );
        fail_with(&msg, &mut [&mut p]);
    }
}

/// One chain test and one goes-on test per mode.
macro_rules! modes {
    ($($mode:ident),* $(,)?) => {
        mod chain {
            $(#[test] fn $mode() { super::chain(stringify!($mode)); })*
        }
        mod goes_on {
            $(#[test] fn $mode() { super::goes_on(stringify!($mode)); })*
        }
    };
}

modes!(
    poll,
    ppoll,
    select,
    pselect,
    epoll_wait,
    epoll_pwait,
    epoll_pwait2,
    nanosleep,
    clock_nanosleep,
    clock_nanosleep_abs,
    usleep,
    sleep,
    sem_timedwait,
    sigtimedwait,
    semtimedop,
    recv,
    accept,
    poll_untimed,
    select_untimed,
    epoll_untimed,
    msgrcv,
    semop,
    own_signal,
);
