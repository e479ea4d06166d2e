//! Process trees: one checkpoint for a program and all of its children, restored with the
//! same pids, parents, pipes between them and zombies.
//!
//! - `tree_chain*`: `tree.c` (a parent, two workers it talks to through pipes, a grandchild
//!   made and reaped every step, a zombie kept until the end) through the chain (run →
//!   checkpoint → resume → checkpoint → resume to the end), as root and unprivileged.
//! - `tree_image_*`: what a tree image holds (`--inspect`), and that a damaged one is refused.

use std::time::Duration;

use pmig_tests::{pmig_env, programs, Chain, ChainOpts, Program, RunAs, Sandbox};

const STEPS: u32 = 60;

#[test]
fn tree_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("tree", programs::TREE, STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn tree_chain_unprivileged() {
    let sb = Sandbox::with_user(RunAs::nobody_if_root());
    let exe = sb.stage(programs::TREE);
    let prog = Program::new("tree-user", exe.to_str().expect("UTF-8 path"), STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

/// `--inspect` lists every process of the tree; `--ids virtual` is refused for a tree; a
/// member's image damaged is refused before anything runs.
#[test]
fn tree_image_is_described_and_checked() {
    let sb = Sandbox::new();
    let prog = Program::new("tree-inspect", programs::TREE, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    chain.start_and_checkpoint();
    let image = chain.image().to_path_buf();
    let out = std::process::Command::new(&sb.bins().resume).arg("--inspect").arg(&image).output().expect("run --inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("tree:") && text.contains("zombie (exit status 7)") && text.matches("running").count() >= 2, "--inspect must show the tree:\n{text}");

    let mut cmd = std::process::Command::new(&sb.bins().resume);
    cmd.args(["--ids", "virtual"]).arg(&image);
    pmig_env(&mut cmd);
    let out = cmd.output().expect("run pmig-resume --ids virtual");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs exact ids"), "a tree with virtual ids must be refused: {err}");

    // Flip one byte in the first member's pages (the file starts with it).
    let mut bytes = std::fs::read(&image).unwrap();
    let at = 8192 + 100;
    bytes[at] ^= 0x55;
    let bad = sb.image("tree-bad.pmig");
    std::fs::write(&bad, &bytes).unwrap();
    let out = std::process::Command::new(&sb.bins().resume).arg(&bad).output().expect("run pmig-resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("corrupted") && err.contains("process"), "a damaged member must be refused: {err}");
    let _ = Duration::ZERO;
}

/// bash running a pipeline (`while …; do echo; sleep; done | cat | cat`), checkpointed while a
/// `sleep` child is alive: the pipeline goes on from the next line after each restore.
#[test]
fn bash_pipeline_chain() {
    let sb = Sandbox::new();
    let script = "i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); echo step $i; sleep 0.05; done | cat | cat";
    let mut prog = Program::new("bash-pipeline", "/bin/bash", STEPS, &[]);
    prog.argv = vec!["/bin/bash".into(), "-c".into(), script.into(), "bash".into(), STEPS.to_string().into()];
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

/// bash inside a command substitution (`x=$(sleep 0.3; echo hi)`), checkpointed while the
/// substitution's subshell runs: `x` gets its value after the restore.
#[test]
fn bash_command_substitution_chain() {
    let sb = Sandbox::new();
    let script = "i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); x=$(sleep 0.03; echo hi); \
                  if [ \"$x\" != hi ]; then echo \"CORRUPT step $i: x is '$x'\"; exit 3; fi; echo step $i; done";
    let mut prog = Program::new("bash-substitution", "/bin/bash", STEPS, &[]);
    prog.argv = vec!["/bin/bash".into(), "-c".into(), script.into(), "bash".into(), STEPS.to_string().into()];
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}
