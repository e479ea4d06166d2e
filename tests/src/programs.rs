//! The helper programs the end-to-end tests checkpoint, and [`Program`], the
//! description of one run of them.
//!
//! The C programs are built from `tests/programs/*.c` by `build.rs`; see the
//! banner of each source for what it exercises.  Every program takes the
//! step count as its first argument, prints `step N` once per step, checks
//! its own memory every step (`CORRUPT ...` and exit 3 on a mismatch) and
//! exits 0 after the last step.  `rust-threads` is this package's binary
//! (its path is only known to integration tests, through
//! `env!("CARGO_BIN_EXE_rust-threads")`); the Python program is
//! [`PYTHON_THREADS`].

use std::ffi::OsString;
use std::path::Path;

/// `counter STEPS`: globals, stack, sbrk, malloc and mmap, allocating every step.
pub const COUNTER: &str = env!("PMIG_TEST_PROG_COUNTER");
/// `pthreads STEPS`: four workers, mutex + condvars, `__thread`, `pthread_kill`.
pub const PTHREADS: &str = env!("PMIG_TEST_PROG_PTHREADS");
/// `signals STEPS`: SIGALRM interval timer, SIGUSR1 handler, SIGHUP blocked.
pub const SIGNALS: &str = env!("PMIG_TEST_PROG_SIGNALS");
/// `files STEPS DATA LOG`: fds 7/12/20 on two regular files.
pub const FILES: &str = env!("PMIG_TEST_PROG_FILES");
/// `sleeper STEPS nanosleep|poll|read`: blocked in a system call.
pub const SLEEPER: &str = env!("PMIG_TEST_PROG_SLEEPER");
/// `sparse STEPS`: 1 GiB NORESERVE mapping with 16 MiB touched.
pub const SPARSE: &str = env!("PMIG_TEST_PROG_SPARSE");
/// `kernel_fds.c`: pipes with queued bytes, dup'd fds, eventfd, timerfd, epoll, signalfd,
/// a deleted file, a memfd, /dev/null, a shared O_APPEND offset.
pub const KERNEL_FDS: &str = env!("PMIG_TEST_PROG_KERNEL_FDS");
/// `holds_pidfd.c`: a counter holding a pidfd (not restorable yet).
pub const HOLDS_PIDFD: &str = env!("PMIG_TEST_PROG_HOLDS_PIDFD");
/// `inotify.c`: an inotify watch that must keep reporting events.
pub const INOTIFY: &str = env!("PMIG_TEST_PROG_INOTIFY");
/// `shm.c`: memfd, deleted-file, anonymous and POSIX shm mappings shared.
pub const SHM: &str = env!("PMIG_TEST_PROG_SHM");
/// `posix_timers.c`: SIGEV_SIGNAL, SIGEV_THREAD and SIGEV_NONE timers.
pub const POSIX_TIMERS: &str = env!("PMIG_TEST_PROG_POSIX_TIMERS");
/// `sysv_shm.c`: a keyed SysV segment and one marked for removal.
pub const SYSV_SHM: &str = env!("PMIG_TEST_PROG_SYSV_SHM");
/// `sockets.c`: listeners, datagram sockets, UNIX sockets, socketpairs, TCP connections.
pub const SOCKETS: &str = env!("PMIG_TEST_PROG_SOCKETS");
/// `ids.c`: getpid/gettid/getppid, kill, tgkill and /proc/<pid> across restores.
pub const IDS: &str = env!("PMIG_TEST_PROG_IDS");
/// `interrupted STEPS MODE`: waits in one blocking call per step (poll, select, epoll, the
/// sleeps, System V IPC, socket timeouts...) and treats EINTR or an early return as fatal.
pub const INTERRUPTED: &str = env!("PMIG_TEST_PROG_INTERRUPTED");

/// `exact_ids.c`: raw ids, mutex owners, CPU clocks, /proc/self/task, SIGEV_THREAD_ID, kcmp,
/// SO_PEERCRED, a forked child, CLOCK_MONOTONIC without jumps.
pub const EXACT_IDS: &str = env!("PMIG_TEST_PROG_EXACT_IDS");
/// `setid.c`: set*id calls in a threaded program; every thread takes the credentials.
pub const SETID: &str = env!("PMIG_TEST_PROG_SETID");
/// `bigheap STEPS MIB`: MIB MiB of heap filled with a pattern, checked every step.
pub const BIGHEAP: &str = env!("PMIG_TEST_PROG_BIGHEAP");
/// `mixedheap STEPS MIB`: MIB MiB of text-like, random and zero stretches that do not line
/// up with a packed image's blocks, every byte checked every step.
pub const MIXEDHEAP: &str = env!("PMIG_TEST_PROG_MIXEDHEAP");
/// `lazy STEPS MIB`: MIB MiB read back whole every step, and a fork, `MADV_DONTNEED`,
/// `mremap` and `munmap`+`mmap` every step, as a lazy restore's pager serves the memory.
pub const LAZY: &str = env!("PMIG_TEST_PROG_LAZY");
/// `live STEPS MIB KIB_PER_STEP`: MIB MiB of which KIB_PER_STEP KiB are written every step,
/// checked every step, with a page dropped, 1 MiB moved and 256 KiB unmapped and mapped again
/// every step: a program a live move copies while it changes.
pub const LIVE: &str = env!("PMIG_TEST_PROG_LIVE");
/// `vdso STEPS`: the vdso's clock functions in a loop, checked for sense; says on stderr
/// when the `[vdso]` is no longer where it was at start.
pub const VDSO: &str = env!("PMIG_TEST_PROG_VDSO");

/// `snapshot MIB IMAGE`: changes a MIB MiB buffer, a `MADV_DONTFORK`, a `MADV_WIPEONFORK`
/// and a `MAP_SHARED` region every iteration, without steps: prints `ready`, `tick C`,
/// `image C GAP_US` when a new IMAGE appears, and `restored C ok` after checking its whole
/// state once restored.
pub const SNAPSHOT: &str = env!("PMIG_TEST_PROG_SNAPSHOT");

/// `badptr STEPS`: wrapped calls given bad pointers must fail with EFAULT.
pub const BADPTR: &str = env!("PMIG_TEST_PROG_BADPTR");

/// `stress STEPS threads N | STEPS forks`: N busy threads, or a thread that forks and execs
/// without pause, to checkpoint again and again.
pub const STRESS: &str = env!("PMIG_TEST_PROG_STRESS");

/// `static_prog`: statically linked (no libc); prints `ran` and exits 0.
pub const STATIC_PROG: &str = env!("PMIG_TEST_PROG_STATIC_PROG");

/// `tree.c`: a parent, two workers on pipes, a grandchild per step, a zombie.
pub const TREE: &str = env!("PMIG_TEST_PROG_TREE");

/// `tree_share.c`: a parent and a child sharing a split socketpair, a seqpacket pair, an
/// eventfd in an epoll set and a TCP listener (checked with kcmp to stay one of each).
pub const TREE_SHARE: &str = env!("PMIG_TEST_PROG_TREE_SHARE");

/// `attrs.c`: process and per-thread attributes (nice, policy, affinity, ioprio, timer
/// slack, pdeathsig, personality, no_new_privs, oom_score_adj, THP, subreaper), checked.
pub const ATTRS: &str = env!("PMIG_TEST_PROG_ATTRS");

/// `fileattrs.c`: deleted files (mode, times, two descriptions of one) and memfds (mode,
/// size, seals), checked.
pub const FILEATTRS: &str = env!("PMIG_TEST_PROG_FILEATTRS");

/// `epoll_stale.c`: two epoll registrations under one fd number, for two files.
pub const EPOLL_STALE: &str = env!("PMIG_TEST_PROG_EPOLL_STALE");

/// `unix_dgram.c`: a UNIX datagram client aimed at an in-program server bound to a chmodded
/// path.
pub const UNIX_DGRAM: &str = env!("PMIG_TEST_PROG_UNIX_DGRAM");

/// `memflags.c`: MAP_NORESERVE, madvise flags and mlock on regions, checked in smaps.
pub const MEMFLAGS: &str = env!("PMIG_TEST_PROG_MEMFLAGS");

/// `locks.c`: flock, POSIX record locks and an OFD lock, checked from another process.
pub const LOCKS: &str = env!("PMIG_TEST_PROG_LOCKS");

/// `sysv_tree.c`: a parent and a child on a System V message queue and semaphore set.
pub const SYSV_TREE: &str = env!("PMIG_TEST_PROG_SYSV_TREE");

/// `pty.c`: a parent typing to its child through a pty the child leads a session on.
pub const PTY: &str = env!("PMIG_TEST_PROG_PTY");

/// `sparsefile.c`: a deleted file and a memfd, large and mostly holes.
pub const SPARSEFILE: &str = env!("PMIG_TEST_PROG_SPARSEFILE");

/// `inet_shutdown.c`: UDP and TCP sockets shut down for reading or writing.
pub const INET_SHUTDOWN: &str = env!("PMIG_TEST_PROG_INET_SHUTDOWN");

/// `mlockall.c`: mlockall(MCL_FUTURE), checked on mappings made later.
pub const MLOCKALL: &str = env!("PMIG_TEST_PROG_MLOCKALL");

/// `rseq_membarrier.c`: the program's own rseq area and a membarrier registration.
pub const RSEQ_MEMBARRIER: &str = env!("PMIG_TEST_PROG_RSEQ_MEMBARRIER");

/// `privmap.c`: a private mapping of a deleted file the program holds open.
pub const PRIVMAP: &str = env!("PMIG_TEST_PROG_PRIVMAP");

/// `deleted.c`: a removed working directory, an fd on a removed directory, a removed FIFO.
pub const DELETED: &str = env!("PMIG_TEST_PROG_DELETED");

/// Debian's perl.
pub const PERL: &str = "/usr/bin/perl";

/// The perl program, run as `perl -e PERL_LOOP STEPS FILE`: a loop over a file (append a
/// line, read the whole file back, check every line) and a growing hash, checked each step.
pub const PERL_LOOP: &str = r#"
$| = 1;
my ($steps, $path) = @ARGV;
open(my $f, "+>", $path) or die "open $path: $!";
my %h;
sub corrupt { print "CORRUPT $_[0]
"; print STDERR "CORRUPT $_[0]
"; exit 3 }
for my $s (1 .. $steps) {
    seek($f, 0, 2);
    print $f "line $s
";
    $h{$s} = "v$s" x 10;
    for my $k (1 .. $s) { corrupt("hash entry $k") unless $h{$k} eq "v$k" x 10 }
    seek($f, 0, 0);
    my @l = <$f>;
    corrupt("file has " . scalar(@l) . " lines at step $s") unless @l == $s;
    for my $i (0 .. $#l) { corrupt("file line $i is $l[$i]") unless $l[$i] eq "line " . ($i + 1) . "
" }
    print "step $s
";
    select(undef, undef, undef, 0.03) if $s < $steps;
}
"#;

/// Debian's sqlite3 command-line shell.
pub const SQLITE3: &str = "/usr/bin/sqlite3";

/// Debian's Python; used by path so no pyenv shim is involved.
pub const PYTHON3: &str = "/usr/bin/python3";

/// The Python program, run as `/usr/bin/python3 -u -c PYTHON_THREADS STEPS`:
/// three `threading.Thread` workers take jobs from a `queue.Queue` and
/// answer on another; the main thread checks every answer and a
/// `bytearray` pattern, prints `step N` and sleeps 30 ms.
pub const PYTHON_THREADS: &str = r#"
import os, queue, sys, threading, time

def corrupt(msg):
    print("CORRUPT " + msg, flush=True)
    sys.stderr.write("CORRUPT " + msg + "\n")
    sys.stderr.flush()
    os._exit(3)

def work(step, k):
    return sum((i * (step * 7 + k + 1)) % 1009 for i in range(3000))

def pattern(step):
    return bytes(((i * 31) ^ step) & 0xFF for i in range(8192))

WORKERS = 3
steps = int(sys.argv[1])
jobs = queue.Queue()
answers = queue.Queue()
local = threading.local()

def worker(wid):
    local.wid = wid
    done = 0
    while True:
        job = jobs.get()
        if job is None:
            answers.put(("done", wid, done))
            return
        if local.wid != wid:
            corrupt("worker %d: thread-local id is %r" % (wid, local.wid))
        step, k = job
        done += 1
        answers.put((step, k, work(step, k)))

threads = [threading.Thread(target=worker, args=(w,), name="worker-%d" % w) for w in range(WORKERS)]
for t in threads:
    t.start()

blob = bytearray(pattern(0))
for step in range(1, steps + 1):
    if blob != pattern(step - 1):
        corrupt("bytearray lost the pattern of step %d" % (step - 1))
    for k in range(WORKERS):
        jobs.put((step, k))
    got = {}
    for _ in range(WORKERS):
        s, k, r = answers.get(timeout=10)
        if s != step or k in got:
            corrupt("step %d: unexpected answer %r" % (step, (s, k)))
        got[k] = r
    for k in range(WORKERS):
        if got[k] != work(step, k):
            corrupt("step %d: wrong answer for job %d" % (step, k))
    blob[:] = pattern(step)
    print("step %d" % step, flush=True)
    if step < steps:
        time.sleep(0.03)

for _ in threads:
    jobs.put(None)
total = 0
for _ in threads:
    tag, wid, done = answers.get(timeout=10)
    if tag != "done":
        corrupt("unexpected final answer %r" % ((tag, wid, done),))
    total += done
for t in threads:
    t.join(timeout=10)
    if t.is_alive():
        corrupt("%s did not finish" % t.name)
if total != steps * WORKERS:
    corrupt("workers did %d jobs, expected %d" % (total, steps * WORKERS))
"#;

/// The bash script of [`Program::bash_pipeline`], run as `bash -c BASH_PIPELINE bash STEPS`.
const BASH_PIPELINE: &str =
    "i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); echo step $i; sleep 0.05; done | cat | cat";

/// The bash script of [`Program::bash_substitution`], run as
/// `bash -c BASH_SUBSTITUTION bash STEPS`.
const BASH_SUBSTITUTION: &str = "i=0; while [ $i -lt \"$1\" ]; do i=$((i+1)); x=$(sleep 0.03; echo hi); \
     if [ \"$x\" != hi ]; then echo \"CORRUPT step $i: x is '$x'\"; exit 3; fi; echo step $i; done";

/// The Python program of [`Program::python_pool`], run as `python3 -c PYTHON_POOL STEPS`.
const PYTHON_POOL: &str = r#"
import multiprocessing as mp, sys, time
def sq(x): return x * x
if __name__ == '__main__':
    n = int(sys.argv[1])
    with mp.Pool(2) as pool:
        for step in range(1, n + 1):
            got = pool.map(sq, range(step % 7 + 3))
            if got != [x * x for x in range(step % 7 + 3)]:
                print('CORRUPT step', step, got, flush=True); sys.exit(3)
            print('step', step, flush=True)
            time.sleep(0.03)
"#;

/// The Python program of [`Program::python_subprocess`], run as
/// `python3 -c PYTHON_SUBPROCESS STEPS`.
const PYTHON_SUBPROCESS: &str = r#"
import subprocess, sys, time
n = int(sys.argv[1])
p = subprocess.Popen(['cat'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
for step in range(1, n + 1):
    p.stdin.write(f'line {step}\n'); p.stdin.flush()
    got = p.stdout.readline()
    if got != f'line {step}\n':
        print('CORRUPT step', step, repr(got), flush=True); sys.exit(3)
    print('step', step, flush=True)
    time.sleep(0.03)
p.stdin.close()
if p.wait() != 0:
    print('CORRUPT cat exited', p.returncode, flush=True); sys.exit(3)
"#;

/// What a program's stdin carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing: stdin is an idle pipe (or terminal) the program never reads.
    Idle,
    /// One line `line-N` per step, fed in lock-step: line N+1 is written
    /// only after `step N line-N` has been read back, and never while a
    /// checkpoint is pending.  For `sleeper STEPS read`.
    Lines,
}

/// One run of a helper program: the command line to give after `pmig-run
/// ... --`, its step count and what its stdin carries.
#[derive(Debug, Clone)]
pub struct Program {
    /// A short name for messages, e.g. `counter` or `sleeper-read-pty`.
    pub name: String,
    /// argv, executable first.
    pub argv: Vec<OsString>,
    /// The step count given to the program.
    pub steps: u32,
    /// What its stdin carries.
    pub input: Input,
}

impl Program {
    /// `exe STEPS extra...`, with an idle stdin.
    pub fn new(name: &str, exe: impl AsRef<Path>, steps: u32, extra: &[&str]) -> Program {
        let mut argv = vec![
            exe.as_ref().as_os_str().to_os_string(),
            steps.to_string().into(),
        ];
        argv.extend(extra.iter().map(OsString::from));
        Program {
            name: name.to_string(),
            argv,
            steps,
            input: Input::Idle,
        }
    }

    /// `/usr/bin/python3 -c PYTHON_THREADS STEPS`. Not `-u`: unbuffered, `print` writes a
    /// line's text and its newline in two writes, which a checkpoint can fall between — the
    /// line then ends in the next process's output, which the step check reads as an empty
    /// line. `flush=True` makes each line one write.
    pub fn python_threads(steps: u32) -> Program {
        Program {
            name: "python-threads".to_string(),
            argv: vec![
                PYTHON3.into(),
                "-c".into(),
                PYTHON_THREADS.into(),
                steps.to_string().into(),
            ],
            steps,
            input: Input::Idle,
        }
    }

    /// `/usr/bin/perl -e PERL_LOOP STEPS FILE`.
    pub fn perl_loop(steps: u32, file: &Path) -> Program {
        Program {
            name: "perl-loop".to_string(),
            argv: vec![PERL.into(), "-e".into(), PERL_LOOP.into(), steps.to_string().into(), file.as_os_str().into()],
            steps,
            input: Input::Idle,
        }
    }

    /// `INTERPRETER -c SCRIPT [ARG0] STEPS`, with an idle stdin (`arg0`: bash's `$0`).
    fn script(name: &str, interpreter: &str, script: &str, arg0: Option<&str>, steps: u32) -> Program {
        let mut argv: Vec<OsString> = vec![interpreter.into(), "-c".into(), script.into()];
        argv.extend(arg0.map(OsString::from));
        argv.push(steps.to_string().into());
        Program { name: name.to_string(), argv, steps, input: Input::Idle }
    }

    /// bash running a pipeline (`while …; do echo step; sleep 0.05; done | cat | cat`): three
    /// processes on two pipes, a `sleep` child alive most of the time.
    pub fn bash_pipeline(steps: u32) -> Program {
        Program::script("bash-pipeline", "/bin/bash", BASH_PIPELINE, Some("bash"), steps)
    }

    /// bash assigning a command substitution every step (`x=$(sleep 0.03; echo hi)`), a
    /// subshell and its `sleep` alive most of the time; `CORRUPT` if `x` is not `hi`.
    pub fn bash_substitution(steps: u32) -> Program {
        Program::script("bash-substitution", "/bin/bash", BASH_SUBSTITUTION, Some("bash"), steps)
    }

    /// python3 `multiprocessing.Pool(2)` mapping in a loop (pipes, a semaphore in shared
    /// memory between the processes, worker processes the pool forked), answers checked.
    pub fn python_pool(steps: u32) -> Program {
        Program::script("python-pool", PYTHON3, PYTHON_POOL, None, steps)
    }

    /// python3 `subprocess.Popen` with pipes: a `cat` child it writes a line to and reads it
    /// back from every step, checked; `cat` must exit 0 at the end.
    pub fn python_subprocess(steps: u32) -> Program {
        Program::script("python-subprocess", PYTHON3, PYTHON_SUBPROCESS, None, steps)
    }

    /// The same program, fed one line per step on stdin.
    pub fn reading_lines(mut self) -> Program {
        self.input = Input::Lines;
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Program {
        self.argv.push(arg.into());
        self
    }
}

/// Writes `DIR/nginx.conf` for Debian's nginx run in the foreground with a master and two
/// workers listening on `listen`, every path under `DIR`, each answer `worker PID`; returns
/// its path.
pub fn nginx_config(dir: &std::path::Path, listen: &str) -> std::path::PathBuf {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
             uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             server {{ listen {listen}; location / {{ return 200 \"worker $pid\\n\"; }} }} }}\n"
        ),
    )
    .expect("write nginx.conf");
    conf
}

/// A small C project for `make -j2` (`f0.c` … `f23.c`, `main.c`, a Makefile building
/// `prog`), each file enough code that its compile takes a moment: a build is long enough to
/// be checkpointed in the middle.
pub struct MakeProject {
    /// Where the sources are (and the objects and `prog` go).
    pub dir: std::path::PathBuf,
}

impl MakeProject {
    /// How many `fN.c` files the project has.
    pub const FILES: usize = 24;

    /// Writes the project's sources and Makefile into `dir`.
    pub fn write(dir: &Path) -> MakeProject {
        let n = MakeProject::FILES;
        let mut main = String::from("#include <stdio.h>\n");
        let mut objs = Vec::new();
        for i in 0..n {
            let mut body = format!("long f{i}(long x) {{ long s = {i};\n");
            for k in 0..300 {
                body.push_str(&format!("  s = s * 31 + (x ^ {k}) % {};\n", k + 7));
            }
            body.push_str("  return s; }\n");
            std::fs::write(dir.join(format!("f{i}.c")), body).expect("write a source file");
            main.push_str(&format!("long f{i}(long);\n"));
            objs.push(format!("f{i}.o"));
        }
        main.push_str("int main(void) { long t = 0;\n");
        for i in 0..n {
            main.push_str(&format!("  t += f{i}({i});\n"));
        }
        main.push_str("  printf(\"%ld\\n\", t); return 0; }\n");
        std::fs::write(dir.join("main.c"), main).expect("write main.c");
        std::fs::write(
            dir.join("Makefile"),
            format!("prog: main.o {}\n\tgcc -o $@ $^\n%.o: %.c\n\tgcc -O2 -c -o $@ $<\n", objs.join(" ")),
        )
        .expect("write the Makefile");
        MakeProject { dir: dir.to_path_buf() }
    }

    /// What `prog` prints after an uninterrupted `make -s -j2` of a copy of the project in
    /// `scratch`.
    pub fn expected_output(&self, scratch: &Path) -> String {
        for e in std::fs::read_dir(&self.dir).expect("list the project") {
            let e = e.expect("list the project");
            std::fs::copy(e.path(), scratch.join(e.file_name())).expect("copy the project");
        }
        let ok = std::process::Command::new("make").args(["-s", "-j2"]).current_dir(scratch).status().expect("run make");
        assert!(ok.success(), "the uninterrupted build failed");
        let out = std::process::Command::new(scratch.join("prog")).output().expect("run the built program");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many of the `fN.o` objects are built.
    pub fn objects_built(&self) -> usize {
        (0..MakeProject::FILES).filter(|i| self.dir.join(format!("f{i}.o")).exists()).count()
    }

    /// Whether `prog` is built.
    pub fn linked(&self) -> bool {
        self.dir.join("prog").exists()
    }

    /// What the built `prog` prints (empty if it cannot run).
    pub fn output(&self) -> String {
        let out = std::process::Command::new(self.dir.join("prog")).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}
