//! Pseudo-terminals a tree made for itself: the pair comes back with its index, settings and
//! queued bytes, and a session leader with its slave as controlling terminal has it again.
//!
//! - `pty_chain*`: `pty.c` (a parent typing to its child through a pty the child leads a
//!   session on) through the chain, as root and unprivileged.
//! - `script_runs_a_shell_through_a_pty`: util-linux's `script` running a bash loop that
//!   writes to `/dev/tty`, through the chain.

use pmig_tests::{Chain, ChainOpts, Program, Sandbox};

const STEPS: u32 = 40;
const PTY: &str = env!("PMIG_TEST_PROG_PTY");

#[test]
fn pty_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("pty", PTY, STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn pty_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("pty-user", PTY, STEPS);
}

/// `script -qfec CMD /dev/null`: script holds the pty's master and copies what the shell
/// writes to its own stdout; the shell leads a session on the slave. Each step the shell
/// checks its terminal is still the same `/dev/pts/N`, and writes its line through
/// `/dev/tty` (which needs the controlling terminal).
#[test]
fn script_runs_a_shell_through_a_pty() {
    let sb = Sandbox::new();
    let inner = "t=$(tty); i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); \
                 [ \"$(tty)\" = \"$t\" ] || { echo \"CORRUPT tty $(tty), was $t\"; exit 3; }; \
                 echo step $i > /dev/tty || { echo CORRUPT no controlling terminal; exit 3; }; sleep 0.05; done";
    let cmd = format!("bash -c '{inner}' bash {STEPS}");
    let mut prog = Program::new("script", "/usr/bin/script", STEPS, &[]);
    // (No pmig phase log in the shell: it would land on the terminal, which script copies
    // to its stdout among the steps.)
    prog.argv = vec!["/usr/bin/env".into(), "PMIG_DEBUG=0".into(), "/usr/bin/script".into(), "-qfec".into(), cmd.into(), "/dev/null".into()];
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}
