//! End-to-end tests of pmig: the real `pmig-run` and `pmig-resume` on the
//! helper programs of `tests/programs/`, `rust-threads` and a Python script.
//!
//! Each `*_chain` test runs the [`Chain`] (run → checkpoint with `--exit` →
//! resume → checkpoint → resume to the end; see `src/chain.rs`).  The others
//! check a checkpoint without `--exit`, image size on a sparse mapping,
//! `--inspect`, and the error paths of both binaries.
//!
//! Needs the pmig binaries built first, in the same profile:
//! `cargo build --workspace && cargo test -p pmig-tests`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pmig_tests::{
    describe_status, fail_with, pmig_env, programs, Chain, ChainOpts, Input, Proc, Program, RunAs,
    Sandbox, StepCheck, Terminal, CHECKPOINT_TIMEOUT, RESUME_TIMEOUT, STEP_TIMEOUT,
};

/// Steps given to the chain programs: enough that the checkpoints land well
/// before the end even if a checkpoint takes a second or two.
const STEPS: u32 = 60;

const MIB: u64 = 1024 * 1024;

fn run_chain(prog: &Program) {
    let sb = Sandbox::new();
    Chain::new(&sb, prog, ChainOpts::default()).run();
}

#[test]
fn counter_chain() {
    run_chain(&Program::new("counter", programs::COUNTER, STEPS, &[]));
}

#[test]
fn pthreads_chain() {
    run_chain(&Program::new("pthreads", programs::PTHREADS, STEPS, &[]));
}

#[test]
fn signals_chain() {
    run_chain(&Program::new("signals", programs::SIGNALS, STEPS, &[]));
}

#[test]
fn kernel_fds_chain() {
    run_chain(&Program::new("kernel-fds", programs::KERNEL_FDS, STEPS, &[]));
}

#[test]
fn shared_memory_chain() {
    run_chain(&Program::new("shm", programs::SHM, STEPS, &[]));
}

#[test]
fn posix_timers_chain() {
    run_chain(&Program::new("posix-timers", programs::POSIX_TIMERS, STEPS, &[]));
}

#[test]
fn inotify_chain() {
    let sb = Sandbox::new();
    let dir = sb.file("watched");
    std::fs::create_dir(&dir).expect("mkdir");
    let prog = Program::new("inotify", programs::INOTIFY, STEPS, &[]).arg(&dir);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn sysv_shm_chain() {
    run_chain(&Program::new("sysv-shm", programs::SYSV_SHM, STEPS, &[]));
}

#[test]
fn ids_chain() {
    run_chain(&Program::new("ids", programs::IDS, STEPS, &[]));
}

#[test]
fn files_chain() {
    let sb = Sandbox::new();
    let data = sb.file("data.txt");
    let log = sb.file("log.txt");
    let prog = Program::new("files", programs::FILES, STEPS, &[])
        .arg(&data)
        .arg(&log);
    Chain::new(&sb, &prog, ChainOpts::default()).run();

    // Each step wrote exactly one record to each file: a step re-executed
    // after a restore would show up as a repeated record in the O_APPEND log.
    for (path, kind) in [(&data, "data"), (&log, "log")] {
        let text =
            fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let records: Vec<&str> = text.lines().collect();
        let expected: Vec<String> = (1..=STEPS).map(|n| format!("{kind} {n:06}")).collect();
        let got: Vec<String> = records
            .iter()
            .map(|r| r.trim_end_matches('.').to_string())
            .collect();
        assert_eq!(
            got,
            expected,
            "{} must hold exactly one record per step, in order",
            path.display()
        );
    }
}

#[test]
fn sleeper_nanosleep_chain() {
    run_chain(&Program::new(
        "sleeper-nanosleep",
        programs::SLEEPER,
        STEPS,
        &["nanosleep"],
    ));
}

#[test]
fn sleeper_poll_chain() {
    run_chain(&Program::new(
        "sleeper-poll",
        programs::SLEEPER,
        STEPS,
        &["poll"],
    ));
}

#[test]
fn sleeper_read_pipe_chain() {
    let prog = Program::new("sleeper-read-pipe", programs::SLEEPER, 30, &["read"]).reading_lines();
    run_chain(&prog);
}

#[test]
fn sleeper_read_pty_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("sleeper-read-pty", programs::SLEEPER, 30, &["read"]).reading_lines();
    let opts = ChainOpts {
        terminal: Terminal::Pty,
        ..ChainOpts::default()
    };
    Chain::new(&sb, &prog, opts).run();
}

#[test]
fn rust_threads_chain() {
    run_chain(&Program::new(
        "rust-threads",
        env!("CARGO_BIN_EXE_rust-threads"),
        STEPS,
        &[],
    ));
}

#[test]
fn python_threads_chain() {
    assert!(
        Path::new(programs::PYTHON3).is_file(),
        "{} is missing (Debian package python3)",
        programs::PYTHON3
    );
    run_chain(&Program::python_threads(STEPS));
}

/// As root, the chain runs as nobody (65534) through `setpriv`; otherwise
/// the current user is already unprivileged.
fn unprivileged_chain(name: &str, exe: &str) {
    let run_as = RunAs::nobody_if_root();
    if run_as.is_none() {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        eprintln!(
            "{name}: not root, running the unprivileged chain as the current user (uid {uid})"
        );
    }
    let sb = Sandbox::with_user(run_as);
    let prog = Program::new(name, sb.stage(exe), STEPS, &[]);
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

#[test]
fn unprivileged_counter_chain() {
    unprivileged_chain("counter-unprivileged", programs::COUNTER);
}

#[test]
fn unprivileged_pthreads_chain() {
    unprivileged_chain("pthreads-unprivileged", programs::PTHREADS);
}

/// A 1 GiB NORESERVE mapping with 16 MiB touched must give an image a bit
/// over 16 MiB: bounded by the size of a plain counter image taken in the
/// same test, plus 8 MiB of slack.
#[test]
fn sparse_image_stays_small() {
    let sb = Sandbox::new();
    let counter = Program::new("counter", programs::COUNTER, STEPS, &[]);
    let mut chain = Chain::new(&sb, &counter, ChainOpts::default());
    chain.start_and_checkpoint();
    let counter_size = chain.report().image_sizes[0];

    let low = 16 * MIB;
    let high = 16 * MIB + counter_size + 8 * MIB;
    let check = move |image: &Path| -> Result<(), String> {
        let size = fs::metadata(image)
            .map_err(|e| format!("stat {}: {e}", image.display()))?
            .len();
        if size > low && size < high {
            Ok(())
        } else {
            Err(format!(
                "sparse image is {size} bytes ({:.1} MiB); expected more than 16 MiB and less than \
                 16 MiB + {counter_size} (a counter image) + 8 MiB = {high} bytes",
                size as f64 / MIB as f64
            ))
        }
    };
    let sparse = Program::new("sparse", programs::SPARSE, STEPS, &[]);
    let opts = ChainOpts {
        check_image: Some(&check),
        ..ChainOpts::default()
    };
    let report = Chain::new(&sb, &sparse, opts).run();
    eprintln!(
        "sparse image sizes {:?}, counter image {counter_size} bytes",
        report.image_sizes
    );
}

/// `pmig-run --compress --image`: the image file is packed (LZ4; `bigheap.c`'s 32 MiB of
/// counting words take well under that), `pmig-resume` unpacks it and the chain goes on;
/// a packed image cut short or damaged is refused before anything runs, saying why.
#[test]
fn packed_image_chain() {
    let sb = Sandbox::new();
    let check = |image: &Path| -> Result<(), String> {
        let bytes = fs::read(image).map_err(|e| format!("read {}: {e}", image.display()))?;
        if !bytes.starts_with(b"PMIGLZ4\n") {
            return Err("the image is not packed".into());
        }
        if bytes.len() as u64 > 24 * MIB {
            return Err(format!("the packed image is {} bytes: 32 MiB of counting words did not shrink", bytes.len()));
        }
        Ok(())
    };
    let prog = Program::new("bigheap-packed", programs::BIGHEAP, STEPS, &["32"]);
    let opts = ChainOpts { check_image: Some(&check), run_args: vec!["--compress".into()], ..ChainOpts::default() };
    let mut chain = Chain::new(&sb, &prog, opts);
    chain.start_and_checkpoint();
    let image = chain.image().to_path_buf();
    let bytes = fs::read(&image).unwrap();
    for (what, bad) in [("cut short", bytes[..bytes.len() / 2].to_vec()), ("damaged", {
        // The first block's checksum (a flipped bit in LZ4 data may decode to the same bytes
        // in memory this regular).
        let mut b = bytes.clone();
        b[8 + 9] ^= 0x40;
        b
    })] {
        let p = sb.image(&format!("bad-{}.pmig", what.replace(' ', "-")));
        fs::write(&p, &bad).unwrap();
        let out = std::process::Command::new(&sb.bins().resume).arg(&p).output().expect("run pmig-resume");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("packed image"), "a packed image {what} must be refused, naming why: {err}");
    }
    chain.resume_and_checkpoint();
    chain.resume_to_end();
}

/// A packed image written by several packer threads (`PMIG_PACKERS=3`: the writer and two
/// raw threads, on any number of CPUs) is the image one thread writes: `mixedheap.c`'s
/// 48 MiB of text, random and zero stretches (12 blocks, stored compressed and raw, through
/// a ring of 6 slots twice over) come back byte for byte, checked by the program every step,
/// after a first checkpoint and after a second one of the resumed process.
#[test]
fn packed_image_by_packer_threads_chain() {
    let sb = Sandbox::new();
    let prog = Program::new("mixedheap-packed", programs::MIXEDHEAP, 20, &["48"]);
    let packed = |image: &Path| -> Result<(), String> {
        let mut head = [0u8; 8];
        fs::File::open(image).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).map_err(|e| format!("read {}: {e}", image.display()))?;
        if &head != b"PMIGLZ4\n" {
            return Err("the image is not packed".into());
        }
        Ok(())
    };
    let opts = ChainOpts {
        check_image: Some(&packed),
        run_args: vec!["--compress".into()],
        run_env: vec![("PMIG_PACKERS".into(), "3".into())],
        ..ChainOpts::default()
    };
    let report = Chain::new(&sb, &prog, opts).run();
    let by_threads = |err: &str| err.lines().any(|l| l.contains("image packed") && l.contains("by 3 packer thread(s)"));
    if pmig_tests::pmig_debug_value() == "1" {
        assert!(by_threads(&report.run_stderr), "the first image was not packed by 3 threads:\n{}", report.run_stderr);
        assert!(by_threads(&report.resume_stderr[0]), "the second image was not packed by 3 threads:\n{}", report.resume_stderr[0]);
    }
}

/// A removed working directory, an fd on a removed directory and a removed FIFO with a line
/// in flight come back (`deleted.c`), as root and unprivileged.
#[test]
fn deleted_directories_and_fifo_chain() {
    run_chain(&Program::new("deleted", programs::DELETED, STEPS, &[]));
}

#[test]
fn deleted_directories_and_fifo_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("deleted-user", programs::DELETED, STEPS);
}

/// `shutdown()` state of UDP and TCP sockets (`inet_shutdown.c`), as root and unprivileged.
#[test]
fn inet_shutdown_chain() {
    run_chain(&Program::new("inet-shutdown", programs::INET_SHUTDOWN, STEPS, &[]));
}

#[test]
fn inet_shutdown_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("inet-shutdown-user", programs::INET_SHUTDOWN, STEPS);
}

/// `mlockall(MCL_FUTURE)` holds after a restore (`mlockall.c`; root: an unprivileged
/// memlock limit is too small for a process that locks everything it maps later).
#[test]
fn mlockall_future_chain() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED mlockall_future_chain: needs root (the memlock limit)");
        return;
    }
    run_chain(&Program::new("mlockall", programs::MLOCKALL, STEPS, &[]));
}

/// The program's own rseq registration (glibc's turned off) and its membarrier registration
/// come back (`rseq_membarrier.c`), as root and unprivileged.
#[test]
fn rseq_and_membarrier_chain() {
    run_chain(&Program::new("rseq-membarrier", programs::RSEQ_MEMBARRIER, STEPS, &[]));
}

#[test]
fn rseq_and_membarrier_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("rseq-membarrier-user", programs::RSEQ_MEMBARRIER, STEPS);
}

/// A private mapping of a deleted file the program holds open stays tied to the file
/// (`privmap.c`), as root and unprivileged.
#[test]
fn private_mapping_of_a_deleted_file_chain() {
    run_chain(&Program::new("privmap", programs::PRIVMAP, STEPS, &[]));
}

#[test]
fn private_mapping_of_a_deleted_file_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("privmap-user", programs::PRIVMAP, STEPS);
}

/// Sparse files the program holds (`sparsefile.c`: a deleted file of 256 MiB and a memfd of
/// 128 MiB, a few bytes of data each) come back with their holes (the program checks their
/// blocks), and the image does not store the holes: it stays under 32 MiB.
#[test]
fn sparse_files_keep_their_holes() {
    let sb = Sandbox::new();
    let check = |image: &Path| -> Result<(), String> {
        let size = fs::metadata(image).map_err(|e| format!("stat {}: {e}", image.display()))?.len();
        if size < 32 * MIB {
            Ok(())
        } else {
            Err(format!("the image of two sparse files is {size} bytes: their holes were stored"))
        }
    };
    let prog = Program::new("sparsefile", programs::SPARSEFILE, STEPS, &[]);
    let opts = ChainOpts { check_image: Some(&check), ..ChainOpts::default() };
    Chain::new(&sb, &prog, opts).run();
}

/// Reads and checks lines until the image at `image` appears with an inode
/// other than `old_ino`. Returns (last step seen before the signal, last
/// step written when the image appeared, the image's inode).
fn checkpoint_while_running(
    p: &mut Proc,
    steps: &mut StepCheck,
    image: &Path,
    old_ino: Option<u64>,
) -> (u32, u32, u64) {
    let accept_all = |p: &mut Proc, steps: &mut StepCheck, lines: Vec<String>| {
        for line in lines {
            if let Err(e) = steps.accept(&line) {
                fail_with(&e, &mut [p]);
            }
        }
    };
    let lines = p.drain_now().unwrap_or_else(|e| fail_with(&e, &mut [p]));
    accept_all(p, steps, lines);
    let before = steps.last();
    if let Err(e) = p.signal(libc::SIGUSR2) {
        fail_with(&e, &mut [p]);
    }
    let deadline = Instant::now() + CHECKPOINT_TIMEOUT;
    loop {
        if let Ok(meta) = fs::metadata(image) {
            if Some(meta.ino()) != old_ino {
                // Everything written before the image appeared is in the
                // pipe by now: drain_now() returns it all.
                let lines = p.drain_now().unwrap_or_else(|e| fail_with(&e, &mut [p]));
                accept_all(p, steps, lines);
                return (before, steps.last(), meta.ino());
            }
        }
        if Instant::now() >= deadline {
            let msg = format!(
                "no new image at {} within {CHECKPOINT_TIMEOUT:?} of SIGUSR2 (sent after step {before})",
                image.display()
            );
            fail_with(&msg, &mut [p]);
        }
        match p.next_line(Duration::from_millis(20)) {
            Ok(Some(line)) => accept_all(p, steps, vec![line]),
            Ok(None) => {
                let msg = format!(
                    "the program exited before the image appeared (SIGUSR2 sent after step {before})"
                );
                fail_with(&msg, &mut [p]);
            }
            Err(_) => {} // no line in this 20 ms slice
        }
    }
}

/// Without `--exit` the program keeps running after each checkpoint and
/// finishes normally; a second checkpoint replaces the image; resuming the
/// image continues from a step between the last one seen before the signal
/// and the last one written when the image appeared.
#[test]
fn checkpoint_without_exit_keeps_running() {
    let sb = Sandbox::new();
    let prog = Program::new("counter-no-exit", programs::COUNTER, STEPS, &[]);
    let chain = Chain::new(&sb, &prog, ChainOpts::default());
    let image = chain.image().to_path_buf();
    let mut p = chain.spawn_run(false, &sb.workdir("run"));
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);

    while steps.last() < 5 {
        match p.next_line(STEP_TIMEOUT) {
            Ok(Some(line)) => {
                if let Err(e) = steps.accept(&line) {
                    fail_with(&e, &mut [&mut p]);
                }
            }
            Ok(None) => fail_with("the program exited before step 5", &mut [&mut p]),
            Err(e) => fail_with(&e, &mut [&mut p]),
        }
    }
    let (_, _, first_ino) = checkpoint_while_running(&mut p, &mut steps, &image, None);
    let (low, high, _) = checkpoint_while_running(&mut p, &mut steps, &image, Some(first_ino));

    let (lines, status) = p
        .finish(Duration::from_secs(u64::from(STEPS)) + CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    for line in lines {
        if let Err(e) = steps.accept(&line) {
            fail_with(&e, &mut [&mut p]);
        }
    }
    if !status.success() || !steps.complete() {
        let msg = format!(
            "without --exit the program must run to the end and exit 0; it ended with {} after step {}",
            describe_status(status),
            steps.last()
        );
        fail_with(&msg, &mut [&mut p]);
    }

    let mut r = chain.spawn_resume(
        &sb.workdir("resume"),
        "pmig-resume (image taken without --exit)",
    );
    let first = match r.next_line(RESUME_TIMEOUT) {
        Ok(Some(line)) => line,
        Ok(None) => fail_with("the resumed process printed nothing", &mut [&mut p, &mut r]),
        Err(e) => fail_with(&e, &mut [&mut p, &mut r]),
    };
    let n: u32 = first
        .strip_prefix("step ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            fail_with(
                &format!("unexpected first line {first:?}"),
                &mut [&mut p, &mut r],
            )
        });
    if n < low + 1 || n > high + 1 {
        let msg = format!(
            "the resumed process started at step {n}; the second checkpoint was requested after \
             step {low} and the image appeared when step {high} had been written, so it must start \
             between step {} and step {}",
            low + 1,
            high + 1
        );
        fail_with(&msg, &mut [&mut p, &mut r]);
    }
    let mut resumed = StepCheck::new(n, STEPS, Input::Idle);
    resumed
        .accept(&first)
        .expect("the first line was parsed above");
    let (lines, status) = r
        .finish(Duration::from_secs(u64::from(STEPS)) + CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p, &mut r]));
    for line in lines {
        if let Err(e) = resumed.accept(&line) {
            fail_with(&e, &mut [&mut p, &mut r]);
        }
    }
    if !status.success() || !resumed.complete() {
        let msg = format!(
            "the resumed process must run to the end and exit 0; it ended with {} after step {}",
            describe_status(status),
            resumed.last()
        );
        fail_with(&msg, &mut [&mut p, &mut r]);
    }
}

/// Whether `text` states a thread count of `n`: a line mentioning threads
/// with `n` as a word, or exactly `n` lines each describing one thread.
fn mentions_thread_count(text: &str, n: usize) -> bool {
    let n_str = n.to_string();
    let stated = text.lines().any(|line| {
        line.to_lowercase().contains("thread")
            && line
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == n_str)
    });
    let listed = text
        .lines()
        .filter(|line| {
            let l = line.trim_start().to_lowercase();
            l.starts_with("thread ") || l.starts_with("tid ") || l.starts_with("tid:")
        })
        .count();
    stated || listed == n
}

#[test]
fn inspect_describes_image() {
    let sb = Sandbox::new();
    let prog = Program::new("pthreads", programs::PTHREADS, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    chain.start_and_checkpoint();

    let mut cmd = Command::new(&sb.bins().resume);
    cmd.arg("--inspect")
        .arg(chain.image())
        .current_dir(sb.workdir("inspect"));
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-resume --inspect", cmd, Terminal::Pipe);
    let (lines, status) = p
        .finish(CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let text = lines.join("\n");
    if !status.success() {
        let msg = format!("--inspect ended with {}", describe_status(status));
        fail_with(&msg, &mut [&mut p]);
    }
    if !text.contains("pthreads") {
        fail_with(
            "--inspect output does not name the program (pthreads)",
            &mut [&mut p],
        );
    }
    // The main thread and four workers.
    if !mentions_thread_count(&text, 5) {
        fail_with(
            "--inspect output does not state the thread count (5)",
            &mut [&mut p],
        );
    }
}

#[test]
fn resume_rejects_bad_images() {
    let sb = Sandbox::new();
    let prog = Program::new("counter", programs::COUNTER, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    chain.start_and_checkpoint();
    let good = fs::read(chain.image()).expect("read the image");
    assert!(good.len() > 2, "the image is too small to damage");

    let truncated = sb.image("truncated.pmig");
    fs::write(&truncated, &good[..good.len() / 2]).expect("write truncated image");
    let flipped = sb.image("flipped.pmig");
    let mut bytes = good.clone();
    bytes[good.len() / 2] ^= 0xFF;
    fs::write(&flipped, &bytes).expect("write flipped image");
    let empty = sb.image("empty.pmig");
    fs::write(&empty, b"").expect("write empty image");
    let missing = sb.image("no-such-image.pmig");

    let cases: [(&str, &Path); 5] = [
        ("truncated to half its length", &truncated),
        ("one byte flipped in the middle", &flipped),
        ("a foreign file (/bin/ls)", Path::new("/bin/ls")),
        ("an empty file", &empty),
        ("a nonexistent path", &missing),
    ];
    let mut failures = Vec::new();
    for (what, path) in cases {
        let mut cmd = Command::new(&sb.bins().resume);
        cmd.arg(path)
            .current_dir(sb.workdir("bad"))
            .env_remove("PMIG_DEBUG")
            .env_remove("PMIG_PRELOAD");
        let mut p = Proc::spawn(&format!("pmig-resume on {what}"), cmd, Terminal::Pipe);
        let problem = match p.finish(CHECKPOINT_TIMEOUT) {
            Err(e) => Some(e),
            Ok((_, status)) => {
                let stderr = p.stderr_text();
                match status.code() {
                    None => Some(format!("crashed: {}", describe_status(status))),
                    Some(0) => Some("exited 0".to_string()),
                    Some(_) if !stderr.trim_start().starts_with("pmig-resume:") => {
                        Some("stderr does not start with `pmig-resume:`".to_string())
                    }
                    Some(_) if stderr.lines().filter(|l| !l.trim().is_empty()).count() != 1 => {
                        Some("stderr is not a single message line".to_string())
                    }
                    Some(_) => None,
                }
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("{what}: {problem}\n{}", p.describe()));
        }
    }
    assert!(
        failures.is_empty(),
        "pmig-resume must reject bad input with a non-zero exit and one `pmig-resume: ...` \
         message:\n{}",
        failures.join("\n")
    );
}

/// A CPU that lacks an instruction-set extension the saved CPU had is refused before anything
/// is touched, naming it (`PMIG_CPU_LACKS` makes this CPU count as lacking it).
#[test]
fn resume_refuses_a_cpu_without_a_saved_feature() {
    let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |f: &str| flags.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == f));
    let Some(feature) = ["sse4_2", "popcnt", "ssse3"].into_iter().find(|f| has(f)) else {
        eprintln!("SKIPPED resume_refuses_a_cpu_without_a_saved_feature: this CPU has none of the features it tries");
        return;
    };
    let sb = Sandbox::new();
    let prog = Program::new("counter-cpu", programs::COUNTER, STEPS, &[]);
    let mut chain = Chain::new(&sb, &prog, ChainOpts::default());
    chain.start_and_checkpoint();
    let out = Command::new(&sb.bins().resume).arg(chain.image()).env("PMIG_CPU_LACKS", feature).env_remove("PMIG_DEBUG").output().expect("run pmig-resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(feature) && err.trim().lines().count() == 1, "a CPU without {feature} must be refused in one line naming it: {err}");
    assert!(out.stdout.is_empty(), "the program ran: {}", String::from_utf8_lossy(&out.stdout));
    // Without the switch the same image resumes.
    chain.resume_to_end();
}

#[test]
fn run_reports_missing_program() {
    let sb = Sandbox::new();
    let name = "pmig-e2e-no-such-program";
    let mut cmd = Command::new(&sb.bins().run);
    cmd.arg("--image")
        .arg(sb.image("x.pmig"))
        .arg("--exit")
        .arg("--")
        .arg(name)
        .current_dir(sb.workdir("run"));
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run with a missing program", cmd, Terminal::Pipe);
    let (_, status) = p
        .finish(CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let stderr = p.stderr_text();
    if status.code().is_none_or(|c| c == 0) || !stderr.contains(name) {
        let msg = format!(
            "pmig-run must fail (non-zero exit, no signal) naming the missing program {name:?}; \
             it ended with {}",
            describe_status(status)
        );
        fail_with(&msg, &mut [&mut p]);
    }
}

#[test]
fn run_without_preload_reports_libpmig() {
    let sb = Sandbox::new();
    let alone = sb.path().join("alone");
    fs::create_dir(&alone).expect("create alone/");
    let run = alone.join("pmig-run");
    fs::copy(&sb.bins().run, &run).expect("copy pmig-run");
    let mut cmd = Command::new(&run);
    cmd.arg("--image")
        .arg(sb.image("x.pmig"))
        .arg("--")
        .arg("/bin/true")
        .current_dir(sb.workdir("run"));
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run without libpmig.so beside it", cmd, Terminal::Pipe);
    let (_, status) = p
        .finish(CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let stderr = p.stderr_text();
    if status.code().is_none_or(|c| c == 0) || !stderr.contains("libpmig.so") {
        let msg = format!(
            "pmig-run alone in a directory (PMIG_PRELOAD unset) must fail (non-zero exit, no \
             signal) mentioning libpmig.so; it ended with {}",
            describe_status(status)
        );
        fail_with(&msg, &mut [&mut p]);
    }
}

/// Reads step lines from `p` until step `n`, checking them.
fn read_until_step(p: &mut Proc, steps: &mut StepCheck, n: u32) {
    while steps.last() < n {
        match p.next_line(STEP_TIMEOUT) {
            Ok(Some(line)) => {
                if let Err(e) = steps.accept(&line) {
                    fail_with(&e, &mut [p]);
                }
            }
            Ok(None) => fail_with(&format!("the program exited before step {n}"), &mut [p]),
            Err(e) => fail_with(&e, &mut [p]),
        }
    }
}

/// Spawns `pmig-run FLAGS --image IMAGE -- holds_pidfd STEPS`.
fn spawn_holds_pidfd(sb: &Sandbox, image: &Path, flags: &[&str]) -> Proc {
    let prog = sb.stage(programs::HOLDS_PIDFD);
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.args(flags).arg("--image").arg(image).arg("--").arg(&prog).arg(STEPS.to_string());
    pmig_env(&mut cmd);
    Proc::spawn("pmig-run (holds_pidfd)", cmd, Terminal::Pipe)
}

/// A checkpoint of a program holding something pmig cannot restore fails, says why naming the
/// fd, writes no image, and the program goes on to its end.
#[test]
fn unsupported_resource_fails_checkpoint_and_program_goes_on() {
    let sb = Sandbox::new();
    let image = sb.image("pidfd");
    let mut p = spawn_holds_pidfd(&sb, &image, &[]);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_until_step(&mut p, &mut steps, 3);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let said = pmig_tests::wait_until(CHECKPOINT_TIMEOUT, "the checkpoint failure message", || {
        let err = p.stderr_text();
        err.lines().find(|l| l.contains("checkpoint failed") && l.contains("pidfd") && l.contains("fd ")).map(String::from)
    });
    if let Err(e) = said {
        fail_with(&e, &mut [&mut p]);
    }
    let after = steps.last();
    read_until_step(&mut p, &mut steps, after + 3);
    let (lines, status) = p
        .finish(Duration::from_secs(u64::from(STEPS)) + CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    for line in lines {
        if let Err(e) = steps.accept(&line) {
            fail_with(&e, &mut [&mut p]);
        }
    }
    assert!(status.success() && steps.complete(), "the program must run to its end: {}", p.describe());
    assert!(!image.exists(), "a failed checkpoint must not leave an image");
}

/// The names in `image`'s directory other than `image` itself: a temporary file left by a
/// checkpoint shows up here.
fn others_beside(image: &Path) -> Vec<String> {
    let dir = image.parent().expect("the image has a directory");
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| Some(n.as_str()) != image.file_name().and_then(|f| f.to_str()))
        .collect();
    names.sort();
    names
}

/// Sends the checkpoint signal to `p` (which holds something pmig cannot save), waits for the
/// failure line, and checks that it says the program goes on and that the program does go on:
/// three more steps.
fn checkpoint_fails_and_program_goes_on(p: &mut Proc, steps: &mut StepCheck) {
    let before = p.stderr_text().lines().filter(|l| l.contains("checkpoint failed")).count();
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [p]));
    let said = pmig_tests::wait_until(CHECKPOINT_TIMEOUT, "the checkpoint failure message", || {
        let err = p.stderr_text();
        err.lines().filter(|l| l.contains("checkpoint failed")).nth(before).map(String::from)
    });
    let line = said.unwrap_or_else(|e| fail_with(&e, &mut [p]));
    if !(line.contains("pidfd") && line.contains("fd ") && line.contains("goes on") && line.contains("untouched")) {
        fail_with(
            &format!("the failure line must name the fd and say the program goes on and the old image is untouched: {line:?}"),
            &mut [p],
        );
    }
    let after = steps.last();
    read_until_step(p, steps, after + 3);
}

/// Reads the rest of `p`'s steps; it must reach its last step and exit 0.
fn runs_to_its_end(p: &mut Proc, steps: &mut StepCheck) {
    let (lines, status) = p
        .finish(Duration::from_secs(u64::from(STEPS)) + CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [p]));
    for line in lines {
        if let Err(e) = steps.accept(&line) {
            fail_with(&e, &mut [p]);
        }
    }
    assert!(status.success() && steps.complete(), "the program must run to its end: {}", p.describe());
}

/// With --exit too, a failed checkpoint leaves the program running (nothing was saved: ending
/// it would lose its work), writes no image and no temporary file, and the program finishes
/// normally; a second request fails the same way.
#[test]
fn unsupported_resource_with_exit_goes_on() {
    let sb = Sandbox::new();
    let image = sb.image("pidfd-exit");
    let mut p = spawn_holds_pidfd(&sb, &image, &["--exit"]);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_until_step(&mut p, &mut steps, 3);
    checkpoint_fails_and_program_goes_on(&mut p, &mut steps);
    checkpoint_fails_and_program_goes_on(&mut p, &mut steps);
    assert!(!image.exists(), "a failed checkpoint must not leave an image");
    assert_eq!(others_beside(&image), Vec::<String>::new(), "a failed checkpoint must leave no file");
    runs_to_its_end(&mut p, &mut steps);
}

/// A good image exists (taken with --exit); the resumed program (still --exit) then opens a
/// pidfd, and its next checkpoint fails: the program goes on to its end and the earlier image
/// is byte for byte what it was.
#[test]
fn failed_exit_checkpoint_keeps_previous_image() {
    let sb = Sandbox::new();
    let image = sb.image("pidfd-later");
    let prog = sb.stage(programs::HOLDS_PIDFD);
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--exit").arg("--image").arg(&image).arg("--").arg(&prog).arg(STEPS.to_string()).arg("12");
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run (holds_pidfd from step 12)", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_until_step(&mut p, &mut steps, 3);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let status = p.wait_exit(CHECKPOINT_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    for line in p.drain_now().unwrap_or_default() {
        if let Err(e) = steps.accept(&line) {
            fail_with(&e, &mut [&mut p]);
        }
    }
    assert!(status.success() && steps.last() < 12, "the first checkpoint must succeed: {}", p.describe());
    let good = fs::read(&image).expect("read the first image");

    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume"));
    cmd.arg(&image);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume (holds_pidfd)", cmd, Terminal::Pipe);
    read_until_step(&mut r, &mut steps, 13);
    checkpoint_fails_and_program_goes_on(&mut r, &mut steps);
    runs_to_its_end(&mut r, &mut steps);
    assert!(fs::read(&image).expect("read the image again") == good, "the earlier image must be unchanged");
    assert_eq!(others_beside(&image), Vec::<String>::new(), "a failed checkpoint must leave no file");
}

/// --drop-unsupported checkpoints anyway (with a warning naming the fd), --signal picks the
/// checkpoint signal, and the resumed program goes on from the next step.
#[test]
fn drop_unsupported_and_signal_option() {
    let sb = Sandbox::new();
    let image = sb.image("pidfd-drop");
    let mut p = spawn_holds_pidfd(&sb, &image, &["--exit", "--drop-unsupported", "--signal", "USR1"]);
    let mut steps = StepCheck::new(1, STEPS, Input::Idle);
    read_until_step(&mut p, &mut steps, 3);
    p.signal(libc::SIGUSR1).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let status = p.wait_exit(CHECKPOINT_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    for line in p.drain_now().unwrap_or_default() {
        if let Err(e) = steps.accept(&line) {
            fail_with(&e, &mut [&mut p]);
        }
    }
    assert!(status.success(), "{}", p.describe());
    let err = p.stderr_text();
    assert!(err.contains("left out of the image"), "no warning about the dropped fd: {err}");
    assert!(image.exists());

    let mut cmd = sb.command(&sb.bins().resume, &sb.workdir("resume"));
    cmd.arg(&image);
    pmig_env(&mut cmd);
    let mut r = Proc::spawn("pmig-resume (holds_pidfd)", cmd, Terminal::Pipe);
    let mut resumed = StepCheck::new(steps.last() + 1, STEPS, Input::Idle);
    let (lines, status) = r
        .finish(Duration::from_secs(u64::from(STEPS)) + CHECKPOINT_TIMEOUT)
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    for line in lines {
        if let Err(e) = resumed.accept(&line) {
            fail_with(&e, &mut [&mut r]);
        }
    }
    assert!(status.success() && resumed.complete(), "{}", r.describe());
}

#[test]
fn perl_loop_chain() {
    let sb = Sandbox::new();
    let file = sb.file("perl-data.txt");
    run_chain(&Program::perl_loop(STEPS, &file));
}

/// The SQL for step `n`: insert `n`, and print `step N` only if the table holds 1..=n.
fn sqlite_step(n: u32) -> String {
    format!(
        "insert into t values({n}); select 'step ' || count(*) from t where (select sum(x) from t) = {};\n",
        n * (n + 1) / 2
    )
}

/// Feeds SQL steps `from..=to` to a sqlite3 process and checks each answer.
fn sqlite_steps(p: &mut Proc, steps: &mut StepCheck, from: u32, to: u32) {
    for n in from..=to {
        if let Err(e) = p.feed(&sqlite_step(n)) {
            fail_with(&e, &mut [p]);
        }
        read_until_step(p, steps, n);
    }
}

/// The sqlite3 shell with an open WAL database (its -shm file mapped shared), fed SQL on
/// stdin: checkpointed, resumed, checkpointed again, resumed to the end; the table holds every
/// row exactly once.
#[test]
fn sqlite3_chain() {
    let sb = Sandbox::new();
    let image = sb.image("sqlite3");
    let db = sb.file("data.db");
    let spawn = |cmd: Command, label: &str| {
        let mut cmd = cmd;
        pmig_env(&mut cmd);
        Proc::spawn(label, cmd, Terminal::Pipe)
    };
    let mut run = sb.command(&sb.bins().run, &sb.workdir("run"));
    run.arg("--exit").arg("--image").arg(&image).arg("--").arg(programs::SQLITE3).arg(&db);
    let mut p = spawn(run, "pmig-run (sqlite3)");
    p.feed("create table t(x integer); pragma journal_mode=wal;\n").unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    match p.next_line(STEP_TIMEOUT) {
        Ok(Some(l)) if l == "wal" => {}
        other => fail_with(&format!("expected \"wal\", got {other:?}"), &mut [&mut p]),
    }
    let mut steps = StepCheck::new(1, 20, Input::Idle);
    sqlite_steps(&mut p, &mut steps, 1, 5);
    p.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    let status = p.wait_exit(CHECKPOINT_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut p]));
    assert!(status.success(), "{}", p.describe());

    let resume = |n: u32| {
        let mut cmd = sb.command(&sb.bins().resume, &sb.workdir(&format!("resume-{n}")));
        cmd.arg(&image);
        spawn(cmd, &format!("pmig-resume #{n} (sqlite3)"))
    };
    let mut r = resume(1);
    sqlite_steps(&mut r, &mut steps, 6, 9);
    r.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let status = r.wait_exit(CHECKPOINT_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(status.success(), "{}", r.describe());

    let mut r = resume(2);
    sqlite_steps(&mut r, &mut steps, 10, 20);
    r.close_stdin();
    let status = r.wait_exit(RESUME_TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(status.success() && steps.complete(), "{}", r.describe());
}

/// Process and thread attributes (`attrs.c`: oom_score_adj, THP disable, child subreaper;
/// per thread nice, policy, affinity, ioprio, timer slack, pdeathsig, personality,
/// no_new_privs) come back as the program set them, as root and unprivileged.
#[test]
fn attributes_chain() {
    run_chain(&Program::new("attrs", programs::ATTRS, STEPS, &[]));
}

#[test]
fn attributes_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("attrs-user", programs::ATTRS, STEPS);
}

/// A seccomp filter the program installed cannot be installed again yet: the checkpoint
/// fails naming it, and the program goes on to its end.
#[test]
fn a_seccomp_filter_fails_the_checkpoint_by_name() {
    let sb = Sandbox::new();
    let image = sb.image("seccomp.pmig");
    let mut cmd = sb.command(&sb.bins().run, &sb.workdir("run"));
    cmd.arg("--exit").arg("--image").arg(&image).args(["--", programs::ATTRS, "40", "seccomp"]);
    pmig_env(&mut cmd);
    let mut p = Proc::spawn("pmig-run attrs seccomp", cmd, Terminal::Pipe);
    let mut steps = StepCheck::new(1, 40, Input::Idle);
    for _ in 0..3 {
        let l = p.next_line(Duration::from_secs(10)).unwrap().expect("a step");
        steps.accept(&l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    p.signal(libc::SIGUSR2).unwrap();
    let (lines, st) = p.finish(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    for l in lines {
        steps.accept(&l).unwrap_or_else(|e| panic!("{e}\n{}", p.describe()));
    }
    assert!(st.success() && steps.complete(), "the program must go on to its end\n{}", p.describe());
    let err = p.stderr_text();
    assert!(err.contains("checkpoint failed") && err.contains("seccomp"), "the refusal must name the seccomp filter: {err}");
    assert!(!image.exists(), "no image after a refused checkpoint");
}

/// Deleted files keep their mode and times, two descriptions of one stay one file with their
/// own access modes, and memfds keep their mode, size and seals (`fileattrs.c`).
#[test]
fn file_attributes_chain() {
    run_chain(&Program::new("fileattrs", programs::FILEATTRS, STEPS, &[]));
}

#[test]
fn file_attributes_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("fileattrs-user", programs::FILEATTRS, STEPS);
}

/// Epoll registrations whose fd number the program closed or reused (`epoll_stale.c`: two
/// registrations under one number, for an eventfd and a pipe) come back and deliver both.
#[test]
fn epoll_registrations_outlive_their_fd_numbers() {
    run_chain(&Program::new("epoll-stale", programs::EPOLL_STALE, STEPS, &[]));
}

/// A UNIX datagram client aimed at the program's own server (`unix_dgram.c`) is aimed at it
/// again once the server is bound, and the server's socket file keeps its mode.
#[test]
fn unix_datagram_client_and_socket_file_chain() {
    run_chain(&Program::new("unix-dgram", programs::UNIX_DGRAM, STEPS, &[]));
}

#[test]
fn unix_datagram_client_and_socket_file_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("unix-dgram-user", programs::UNIX_DGRAM, STEPS);
}

/// Memory flags (`memflags.c`: MAP_NORESERVE only where asked, MADV_DONTFORK, DONTDUMP,
/// NOHUGEPAGE, WIPEONFORK, RANDOM, mlock) come back as smaps shows them.
#[test]
fn memory_flags_chain() {
    run_chain(&Program::new("memflags", programs::MEMFLAGS, STEPS, &[]));
}

#[test]
fn memory_flags_chain_unprivileged() {
    pmig_tests::run_chain_unprivileged("memflags-user", programs::MEMFLAGS, STEPS);
}
