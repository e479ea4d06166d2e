//! The vdso across kernels, on one kernel: `PMIG_FOREIGN_VDSO=1` makes pmig-resume treat the
//! saved vdso as another kernel's, so this kernel's vdso moves and the saved one becomes a
//! proxy whose functions jump into it — the trampolines run for real.
//!
//! - `foreign_vdso_chain`: `vdso.c` (clock_gettime, gettimeofday, time in a loop, checked
//!   for sense) through checkpoint → proxied resume → checkpoint (of a process with a proxy)
//!   → proxied resume; the program sees its `[vdso]` move, and goes on.
//! - `same_vdso_chain`: without the switch the vdso goes back where it was (the program
//!   would say it moved).

use pmig_tests::{programs, Chain, ChainOpts, Program, Sandbox};

const STEPS: u32 = 30;

fn chain(name: &str, foreign: bool) -> Vec<String> {
    let sb = Sandbox::new();
    let inspect = |image: &std::path::Path| {
        let mut cmd = std::process::Command::new(&sb.bins().resume);
        cmd.arg("--inspect").arg(image);
        if foreign {
            cmd.env("PMIG_FOREIGN_VDSO", "1");
        }
        String::from_utf8_lossy(&cmd.output().expect("run pmig-resume --inspect").stdout).into_owned()
    };
    let prog = Program::new(name, programs::VDSO, STEPS, &[]);
    let mut env = vec![("PMIG_DEBUG".to_string(), "1".to_string())];
    if foreign {
        env.push(("PMIG_FOREIGN_VDSO".into(), "1".into()));
    }
    let opts = ChainOpts { resume_env: env, ..ChainOpts::default() };
    let report = Chain::new(&sb, &prog, opts).run();
    // --inspect says which vdso a restore here would call.
    let text = inspect(&report.image);
    let want = if foreign { "restored as a proxy" } else { "vdso this kernel's" };
    assert!(text.contains(want), "--inspect does not say \"{want}\":\n{text}");
    report.resume_stderr
}

#[test]
fn foreign_vdso_chain() {
    let errs = chain("vdso-foreign", true);
    for (i, err) in errs.iter().enumerate() {
        assert!(err.contains("made a proxy"), "resume #{}: the vdso was not proxied:\n{err}", i + 1);
        assert!(err.contains("vdso moved"), "resume #{}: the program's [vdso] did not move:\n{err}", i + 1);
    }
}

#[test]
fn same_vdso_chain() {
    for err in chain("vdso-same", false) {
        assert!(!err.contains("vdso moved") && !err.contains("made a proxy"), "the vdso moved on the same kernel:\n{err}");
    }
}
