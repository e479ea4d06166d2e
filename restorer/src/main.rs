//! `pmig-resume`: becomes a saved process.
//!
//! Everything a user sees happens here, before the current process is touched: the image is
//! verified end to end (structure, every checksum), the host is checked (CPU features, kernel
//! vdso, the files the process mapped), and a restore *plan* is written to a memfd. Only then
//! does it exec the restore engine, which replaces the address space with the saved one.

/// One line to stderr in a single write: with `--keep-listening` the forked restorers
/// write to the same stderr, and lines written piecewise would interleave.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($t)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod addrs;
mod ns;
mod pager;
mod plan;
mod pty;
mod receive;
mod sysv;
mod vdso;

use anyhow::{bail, Context, Result};
use pmig_image::{verify_file, verify_file_pages, FileKind, RegionKind, VerifiedImage};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

#[path = "../../launcher/src/man.rs"]
mod man;

const USAGE: &str = "usage: pmig-resume [--ids auto|exact|virtual] [--eager] [--allow-unbound] IMAGE|-
       pmig-resume --inspect IMAGE|-
       pmig-resume --listen [ADDR:]PORT --token-file FILE [--keep-listening] [--as-owner] [--root DIR]

Turns this process into the program saved in IMAGE (written by a checkpoint of a program run
under pmig-run), which then goes on where it stopped, with this process's pid, and with this
process's stdin, stdout and stderr in place of the saved terminal, pipe or socket ones.
What pmig says while restoring (fds it could not make again, ...) goes to this process's
stderr.

  -              read the image from standard input (cat app.pmig | ssh host pmig-resume -)
  --inspect      print what the image holds and exit, restoring nothing
  --listen [ADDR:]PORT
                 wait for one program sent by `pmig-run --to` and become it; prints one
                 line when ready. A bare port listens on loopback (127.0.0.1); give an
                 address only on a network you trust.
  --token-file FILE
                 the secret a sender must prove it knows (required with --listen)
  --keep-listening
                 stay, and start one restorer per arriving program (senders are served
                 concurrently in either mode; without it, the first program that
                 arrives whole is restored and the others are refused)
  --as-owner     as root, also take programs of other users (restored as their owner)
  --ssh-receiver (run by `pmig-run --to ssh://HOST` through ssh) take one program on
                 standard input/output, then run it in the background, its output in
                 --log FILE (default ./pmig-PROGRAM.log)
  --log FILE     with --ssh-receiver: where the program's output goes
  --root DIR     put the files a sender carries (those missing or different here) under
                 DIR instead of at their own paths; without it a sender whose files
                 differ here is refused (pmig never replaces a file)
  --ids auto|exact|virtual
                 exact: the program keeps its pid and thread ids for real (a new pid
                 namespace, and a user namespace when not root; this process stays as
                 the program's handle: signals sent to it reach the program, and it
                 exits with the program's status); virtual: the program runs with this
                 process's pid and libc's getpid/gettid answer the saved ids; auto
                 (default): exact where namespaces can be had, else virtual, saying so
  --eager        read all of the program's memory in before it runs. By default, from
                 an image file, with exact ids and where userfaultfd is allowed (as
                 root), the program runs at once and its private memory comes in on
                 first touch and in the background (this process serves it, checking
                 each part against its checksum first, and stays until it is all in)
  --allow-unbound
                 restore even if an address the program listened on is in use here
                 (typically by the original, still running): the program goes on
                 without that socket (closed), with a warning. Without it such a
                 restore is refused, naming the address, before anything is touched
  --received FD  (used by --listen) restore the image a receiver took, in memfd FD
  PMIG_ENGINE=PATH
                 the restore engine to run (default: next to pmig-resume, or in
                 ../lib/pmig/ from it)
  PMIG_DEBUG=1   log each restore phase to stderr";

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    inspect: bool,
    image: Option<String>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
    keep: bool,
    as_owner: bool,
    root: Option<PathBuf>,
    ssh_receiver: bool,
    log: Option<PathBuf>,
    ids: ns::Ids,
    allow_unbound: bool,
    received: Option<i32>,
    eager: bool,
}

/// Reads the command line; options and the one image may come in any order.
fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut a = Args {
        inspect: false,
        image: None,
        listen: None,
        token_file: None,
        keep: false,
        as_owner: false,
        root: None,
        ssh_receiver: false,
        log: None,
        ids: ns::Ids::Auto,
        allow_unbound: false,
        received: None,
        eager: false,
    };
    let value = |p: &mut lexopt::Parser, name: &str| p.value().map_err(|_| format!("{name} needs a value"));
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("help") | Short('h') => {
                println!("{USAGE}");
                exit(0)
            }
            Long("version") | Short('V') => {
                println!("{}", man::version("pmig-resume"));
                exit(0)
            }
            Long("help-man") => {
                print!("{}", man::man_page("pmig-resume", "become a program saved by pmig, here or on another host", USAGE, "pmig-run"));
                exit(0)
            }
            Long("inspect") => a.inspect = true,
            Long("keep-listening") => a.keep = true,
            Long("as-owner") => a.as_owner = true,
            Long("ssh-receiver") => a.ssh_receiver = true,
            Long("allow-unbound") => a.allow_unbound = true,
            Long("eager") => a.eager = true,
            Long("listen") => a.listen = Some(value(&mut p, "--listen")?.string().map_err(|e| e.to_string())?),
            Long("token-file") => a.token_file = Some(value(&mut p, "--token-file")?.into()),
            Long("root") => a.root = Some(value(&mut p, "--root")?.into()),
            Long("log") => a.log = Some(value(&mut p, "--log")?.into()),
            Long("received") => {
                let v = value(&mut p, "--received")?.to_string_lossy().into_owned();
                a.received = Some(v.parse().map_err(|_| format!("--received takes a file descriptor, not {v}"))?);
            }
            Long("ids") => {
                let v = value(&mut p, "--ids")?.to_string_lossy().into_owned();
                a.ids = ns::Ids::parse(&v).ok_or_else(|| format!("--ids takes auto, exact or virtual, not {v}"))?;
            }
            Value(v) if a.image.is_none() => a.image = Some(v.string().map_err(|e| e.to_string())?),
            Value(_) => return Err("more than one image given".into()),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(a)
}

fn main() {
    let Args { inspect, image, listen, token_file, keep, as_owner, root, ssh_receiver, log, ids, allow_unbound, received, eager } =
        parse_args(std::env::args_os().skip(1)).unwrap_or_else(|e| {
            say!("{}", man::usage_error("pmig-resume", USAGE, &e));
            exit(2)
        });
    if ssh_receiver {
        let r = receive::Receiver { token: Vec::new(), as_owner: false, root: root.clone(), check_uid: false, ready: make_ready };
        let result = r.receive(&mut receive::Stdio).and_then(|(s, img)| {
            detach(&img, log.as_deref())?;
            restore(&s.path, &img, false, ids, false, None).map(|_| drop(s.file))
        });
        if let Err(e) = result {
            fail(&format!("{e:#}"));
        }
        return;
    }
    // What a receiver hands on to the `pmig-resume --received` it execs.
    let mut resume_args: Vec<std::ffi::OsString> = Vec::new();
    if ids != ns::Ids::Auto {
        resume_args.extend(["--ids".into(), match ids { ns::Ids::Exact => "exact", ns::Ids::Virtual => "virtual", ns::Ids::Auto => "auto" }.into()]);
    }
    if let Some(r) = &root {
        resume_args.extend(["--root".into(), r.clone().into_os_string()]);
    }
    if as_owner {
        resume_args.push("--as-owner".into());
    }
    if let Some(fd) = received {
        // From a receiver (`Receiver::listen`), which has verified the image (every page:
        // read whole, or by the checksums of its pages as they came) in this memfd, which
        // only it and this process hold, and written its carried files. The pages are not
        // read again (a lazy restore's pager still checks each run it puts in place); the
        // rest is parsed and checked again, and the files are found in place.
        let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        let result = verify_file_pages(&path, pmig_image::Pages::Unread).context("the received image").and_then(|mut img| {
            make_ready(&mut img, root.as_deref())?;
            // (Its memfd is a local file: its memory can come in lazily.)
            // SAFETY: geteuid has no preconditions.
            let lazy = ids != ns::Ids::Virtual && unsafe { libc::geteuid() } == 0;
            restore(&path, &img, as_owner, ids, lazy, None)
        });
        if let Err(e) = result {
            fail(&format!("{e:#}"));
        }
        return;
    }
    let result = match (listen, image) {
        (Some(addr), None) => {
            let Some(tf) = token_file else { fail("--listen needs --token-file FILE: a receiver runs whatever arrives, so it only takes programs from senders that know its secret") };
            let token = std::fs::read(&tf).unwrap_or_else(|e| fail(&format!("cannot read the token file {}: {e}", tf.display())));
            if token.is_empty() {
                fail(&format!("the token file {} is empty", tf.display()));
            }
            let r = receive::Receiver { token, as_owner, root: root.clone(), check_uid: true, ready: make_ready };
            r.listen(&addr, keep, &resume_args).map(|never| match never {})
        }
        (Some(_), Some(_)) => fail("give either an image or --listen, not both"),
        (None, None) => {
            say!("{}", man::usage_error("pmig-resume", USAGE, "no image given"));
            exit(2)
        }
        (None, Some(i)) if i == "-" => receive::from_stdin()
            .and_then(|s| Ok(receive::unpack_file(&s.path, false)?.map_or(s, |(u, _)| u)))
            .and_then(|s| {
                let img = verify_file(&s.path).context("cannot use this image")?;
                if inspect {
                    return print_inspect(&img);
                }
                check_addresses(&img, allow_unbound)?;
                restore(&s.path, &img, false, ids, false, None).map(|_| drop(s.file))
            })
            .with_context(|| "standard input".to_string()),
        (None, Some(i)) => (|| {
            // A lazy restore checks the pages it leaves to the pager as they come in.
            // SAFETY: geteuid has no preconditions.
            let lazy = !eager && !inspect && ids != ns::Ids::Virtual && unsafe { libc::geteuid() } == 0;
            let pages = if lazy { pmig_image::Pages::NotLazy } else { pmig_image::Pages::All };
            // A packed image is unpacked into memory (kept open until the restore is done):
            // for a lazy restore, only what the checks and the engine read now.
            let unpacked = receive::unpack_file(Path::new(&i), lazy).context("cannot use this image")?;
            let path = unpacked.as_ref().map_or_else(|| PathBuf::from(&i), |(s, _)| s.path.clone());
            let img = match &unpacked {
                Some((s, p)) => pmig_image::verify_with(&mut p.reader(&s.file), p.len, pages),
                None => verify_file_pages(&path, pages),
            }
            .context("cannot use this image")?;
            if inspect {
                return print_inspect(&img);
            }
            check_addresses(&img, allow_unbound)?;
            let packed = match &unpacked {
                Some((s, p)) => Some((s.file.try_clone().context("cannot reopen the unpacked image")?, p)),
                None => None,
            };
            let r = restore(&path, &img, false, ids, lazy, packed);
            drop(unpacked);
            r
        })()
        .with_context(|| i.clone()),
    };
    if let Err(e) = result {
        fail(&format!("{e:#}"));
    }
}

/// For a program that arrived through ssh: the session must be able to end while the
/// program goes on. Forks; the parent says where the program runs and exits (ending the ssh
/// session); the child leaves the session, takes /dev/null as stdin and the log file as
/// stdout and stderr, and goes on to restore.
fn detach(img: &VerifiedImage, log: Option<&Path>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let name = Path::new(&img.manifest.process.exe).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or("program".into());
    let log = log.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(format!("pmig-{name}.log")));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let null = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let shown = std::fs::canonicalize(&log).unwrap_or(log);
    // SAFETY: pmig-resume is single-threaded; the child only restores.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {}
        child => {
            say!("pmig-resume: {name} runs on {} as pid {child}; its output goes to {}", host.trim(), shown.display());
            exit(0)
        }
    }
    // SAFETY: setsid and dup2 on fds we own; failures leave the process attached, which only
    // means the program may get SIGHUP when the ssh session ends.
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(out.as_raw_fd(), 2);
    }
    Ok(())
}

/// Refuses to restore a program whose listening addresses another process holds here
/// (the original, still running, typically), naming them; with `--allow-unbound`, warns and
/// goes on. Only for images from a file or stdin: a program sent with `--to` leaves its
/// host once the receiver has it, so its addresses are free by the time it is restored.
fn check_addresses(img: &VerifiedImage, allow_unbound: bool) -> Result<()> {
    // Every process of a tree (an address two of them hold is named once).
    let mut taken: Vec<addrs::Taken> = Vec::new();
    for (_, p) in img.processes() {
        for t in addrs::taken(&p.manifest) {
            if !taken.iter().any(|x| x.proto == t.proto && x.addr == t.addr) {
                taken.push(t);
            }
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    let list = taken
        .iter()
        .map(|t| format!("{} {} (fd {})", t.proto, t.addr, t.fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ");
    let (what, is) = if taken.len() == 1 { ("address", "is") } else { ("addresses", "are") };
    if allow_unbound {
        say!("pmig-resume: warning: the program's {what} {list} {is} in use here (EADDRINUSE): it goes on without {} (--allow-unbound)", if taken.len() == 1 { "that socket" } else { "those sockets" });
        return Ok(());
    }
    bail!(
        "the program listened on {what} {list}, which {is} in use here (EADDRINUSE), probably by the original program, still running; stop it first, or restore without {} with --allow-unbound",
        if taken.len() == 1 { "that socket" } else { "them" }
    )
}

fn fail(msg: &str) -> ! {
    say!("pmig-resume: {msg}");
    exit(2)
}

/// A received image: carried files written, then the host checked (see `Receiver::ready`).
fn make_ready(img: &mut VerifiedImage, root: Option<&Path>) -> Result<()> {
    for what in receive::materialize(img, root)? {
        say!("pmig-resume: {what}");
    }
    // Every process, before the sender is told the image arrived: once told, it exits.
    check_tree_host(img)
}

fn print_inspect(img: &VerifiedImage) -> Result<()> {
    let ptys: Vec<u32> = img
        .processes()
        .flat_map(|(_, i)| i.manifest.files.iter())
        .filter_map(|f| match f.kind {
            pmig_image::FileKind::PtyMaster { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    print!("{}", pmig_image::describe(&img.manifest, img.file_len, &ptys));
    println!("checksums: all {} page runs verified", img.trailer.run_crcs.len());
    for line in restore_here(&img.manifest) {
        println!("{line}");
    }
    // Each other process of a tree, with its own resources.
    for m in &img.members {
        println!();
        match &m.image {
            Some(i) => {
                println!("--- process {} ({}) of the tree, child of {} ---", m.state.pid, m.state.comm, m.state.ppid);
                print!("{}", pmig_image::describe(&i.manifest, i.file_len, &ptys));
                println!("checksums: all {} page runs verified", i.trailer.run_crcs.len());
            }
            None => println!("--- process {} ({}) of the tree, child of {}: a zombie ---", m.state.pid, m.state.comm, m.state.ppid),
        }
    }
    Ok(())
}

/// What a restore of `m` here would do, for `--inspect`: how its memory comes in, whose vdso
/// it calls, whether this CPU has what the saved one had.
fn restore_here(m: &pmig_image::Manifest) -> Vec<String> {
    // SAFETY: geteuid has no preconditions.
    let memory = match (unsafe { libc::geteuid() } == 0, pager::available()) {
        (true, Ok(())) => "lazily, on first touch (as root, with exact ids; --eager reads it all in first)".to_string(),
        (false, _) => "read in before the program runs (a lazy restore needs root)".to_string(),
        (true, Err(why)) => format!("read in before the program runs (no lazy restore here: {why})"),
    };
    let vdso = match vdso::same(m) {
        Ok(true) => "this kernel's, as saved".to_string(),
        Ok(false) => match vdso::proxy(m) {
            Ok(_) => format!("another kernel's ({}): restored as a proxy whose functions jump into this one's", m.host.kernel_release),
            Err(e) => format!("another kernel's ({}), which this one cannot stand in for: {e:#}", m.host.kernel_release),
        },
        Err(e) => format!("unknown ({e:#})"),
    };
    let missing: Vec<&str> = pmig_abi::arch::missing_cpu_features(&m.host.cpu_features, &pmig_abi::arch::cpu_feature_words()).collect();
    let cpu = if missing.is_empty() { "has every extension the saved one offered".to_string() } else { format!("lacks {} (a restore here is refused)", missing.join(", ")) };
    vec![format!("restore here: memory {memory}"), format!("restore here: vdso {vdso}"), format!("restore here: this CPU {cpu}")]
}

/// Sets up the pager of a lazy restore: its socket pair and its view of the image. `None`
/// (every page is read in at once) where userfaultfd cannot serve it, said with `PMIG_DEBUG`.
fn start_pager(image: &Path, img: &VerifiedImage, debug: bool, packed: Option<&(std::fs::File, &receive::Packed)>) -> Result<Option<(std::thread::JoinHandle<()>, i32)>> {
    if let Err(why) = pager::available() {
        if debug {
            say!("pmig-resume: every page is read in before the program runs: no lazy restore here ({why})");
        }
        return Ok(None);
    }
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two fds into the array we own.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0 {
        bail!("cannot make the pager's socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the pager's end, just made, owned from here.
    let mine = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sv[0]) };
    let packed = match packed {
        Some((f, p)) => Some((f.try_clone().context("cannot reopen the unpacked image")?, p.share())),
        None => None,
    };
    Ok(Some((pager::Pager::new(image, img, mine, debug, packed)?.start()?, sv[1])))
}

/// Checks the host, writes the plan and execs the engine: returns only on failure.
/// `lazy`: private anonymous memory comes in on first touch (from a local image file, with
/// exact ids, where userfaultfd allows), else every page is read in before the program runs.
/// `packed`: the memfd of a packed image unpacked only in part (lazy), and what unpacks the
/// rest.
fn restore(image: &Path, img: &VerifiedImage, as_owner: bool, ids: ns::Ids, lazy: bool, packed: Option<(std::fs::File, &receive::Packed)>) -> Result<()> {
    check_tree_host(img)?;
    let tree = !img.members.is_empty();
    let debug = std::env::var_os("PMIG_DEBUG").is_some_and(|v| !v.is_empty() && v != "0");
    let engine = engine_path()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let p = &img.manifest.process;
    // As root only (a user namespace cannot be entered by a process with threads, and
    // userfaultfd's fork events need root's CAP_SYS_PTRACE anyway).
    let pager = if lazy && me == 0 && ids != ns::Ids::Virtual { start_pager(image, img, debug, packed.as_ref())? } else { None };
    let exact = match ids {
        ns::Ids::Virtual if tree => bail!("the image holds a tree of {} processes, which needs exact ids (not --ids virtual)", img.members.len() + 1),
        ns::Ids::Virtual => false,
        _ => match ns::enter(&img.manifest) {
            Ok(()) => true,
            Err(why) if ids == ns::Ids::Exact => bail!("exact ids are not available here: {why}"),
            Err(why) if tree => bail!("the image holds a tree of {} processes, which needs exact ids, and they are not available here: {why}", img.members.len() + 1),
            Err(why) => {
                say!("pmig-resume: {why}: restoring with virtual ids (the program's libc calls see its saved pid and thread ids; raw system calls see new ones)");
                false
            }
        },
    };
    if lazy && (pager.is_none() || !exact) {
        // Its lazy pages were left unchecked (and, packed, unpacked) for a pager that does
        // not run: unpacked and checked now.
        if debug {
            say!("pmig-resume: every page is read in before the program runs (a lazy restore needs exact ids, as root, and userfaultfd)");
        }
        if let Some((f, p)) = &packed {
            p.finish(f)?;
        }
        verify_file(image).context("cannot use this image")?;
    }
    let pager = pager.filter(|_| exact);
    // The last check passed: System V objects are made now, before the credentials change
    // (as root the saved ids can be asked for: no user namespace was entered).
    sysv::make_again(img)?;
    if exact {
        let owner = (me == 0 && as_owner && p.uid != 0).then_some((p.uid, p.gid));
        let engines = pager.as_ref().map_or(-1, |(_, fd)| *fd);
        let prepare = |i: &VerifiedImage, objects: &[pmig_abi::PlanObject]| plan::prepare(image, i, debug, true, objects, engines).map(|p| p.plan_fd);
        let engine = std::ffi::CString::new(engine.as_os_str().as_encoded_bytes()).context("the engine's path has a NUL byte")?;
        let never = ns::run(&ns::Build { img, image, prepare: &prepare, engine, as_owner: owner }, debug, pager)?;
        match never {}
    }
    let prepared = plan::prepare(image, img, debug, false, &pty::make_all(img)?, -1)?;
    if me == 0 && as_owner && p.uid != 0 {
        // SAFETY: plain credential system calls; each result is checked.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(p.gid) != 0 || libc::setuid(p.uid) != 0 {
                bail!("cannot become uid {} gid {}: {}", p.uid, p.gid, std::io::Error::last_os_error());
            }
        }
    }
    if debug {
        say!(
            "pmig-resume: image verified ({} regions, {} page runs); starting the restore engine",
            img.manifest.regions.len(),
            img.trailer.run_crcs.len()
        );
    }
    let err = Command::new(&engine).arg0("pmig-restore-engine").arg(prepared.plan_fd.to_string()).env_clear().exec();
    bail!("cannot start the restore engine {}: {err}", engine.display())
}

fn engine_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PMIG_ENGINE") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("cannot find my own path")?;
    let dir = me.parent().unwrap_or(Path::new("/"));
    // Beside pmig-resume (a build directory), or where install.sh puts it (PREFIX/lib/pmig).
    let places = [dir.join("pmig-restore-engine"), dir.join("../lib/pmig/pmig-restore-engine")];
    match places.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => bail!("the restore engine is missing: expected {} or {}", places[0].display(), places[1].display()),
    }
}

/// The names of the XSAVE state components in `bits` (`XCR0`'s bits, as the SDM names them).
fn xsave_names(bits: u64) -> String {
    const NAMES: [&str; 20] = [
        "x87", "SSE", "AVX", "MPX bound registers", "MPX bound config", "AVX-512 opmask", "AVX-512 upper halves",
        "AVX-512 upper registers", "PT", "PKRU", "PASID", "CET user", "CET supervisor", "HDC", "UINTR", "LBR", "HWP",
        "AMX tile config", "AMX tile data", "APX",
    ];
    let names: Vec<String> =
        (0..64).filter(|b| bits & (1 << b) != 0).map(|b| NAMES.get(b).map_or(format!("XSAVE component {b}"), |n| n.to_string())).collect();
    names.join(", ")
}

/// Refuses, with a reason, to restore where the saved process could not run.
/// [`check_host`] for every process of the image.
fn check_tree_host(img: &VerifiedImage) -> Result<()> {
    check_host(img)?;
    for m in &img.members {
        if let Some(p) = &m.image {
            check_host(p).with_context(|| format!("process {} ({}) of the tree", m.state.pid, m.state.comm))?;
        }
    }
    Ok(())
}

fn check_host(img: &VerifiedImage) -> Result<()> {
    let m = &img.manifest;
    if m.host.machine != "x86_64" {
        bail!("the image is for {}, this pmig restores x86_64 only", m.host.machine);
    }
    let have = pmig_abi::arch::xcr0();
    if m.host.xcr0 & !have != 0 {
        bail!(
            "this CPU lacks {} that the saved process's state holds (XSAVE features {:#x}, here {:#x}); restore it on a CPU that has them",
            xsave_names(m.host.xcr0 & !have),
            m.host.xcr0,
            have
        );
    }
    let mut here = pmig_abi::arch::cpu_feature_words();
    // (A test switch: these features count as missing on this CPU.)
    for name in std::env::var("PMIG_CPU_LACKS").unwrap_or_default().split(',').filter(|n| !n.is_empty()) {
        if let Some(&(i, bit, _)) = pmig_abi::arch::CPU_FEATURES.iter().find(|f| f.2 == name) {
            here[i] &= !(1 << bit);
        }
    }
    let missing: Vec<&str> = pmig_abi::arch::missing_cpu_features(&m.host.cpu_features, &here).collect();
    if !missing.is_empty() {
        bail!(
            "this CPU lacks {} that the saved CPU had (the program, or a library it uses, may have chosen code for {} when it started); restore it on a CPU that has {}",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            if missing.len() == 1 { "it" } else { "them" }
        );
    }
    if !vdso::same(m)? {
        // Another kernel's vdso: its functions become jumps into this one's (checked here,
        // made by the plan).
        vdso::proxy(m).with_context(|| {
            format!(
                "the image was taken under another kernel ({}; this one is {}), whose vdso this one cannot stand in for",
                m.host.kernel_release,
                std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
            )
        })?;
    }
    let (lo, hi) = (pmig_abi::ENGINE_BASE, pmig_abi::ENGINE_BASE + pmig_abi::RESERVE_LEN);
    if let Some(r) = m.regions.iter().find(|r| r.start < hi && r.end > lo) {
        bail!("a saved region ({:#x}-{:#x}) overlaps the restore engine's range; the image was not made by libpmig", r.start, r.end);
    }
    for r in &m.regions {
        if let RegionKind::File { path, ident, .. } = &r.kind {
            let md = std::fs::metadata(path).with_context(|| format!("the mapped file {path} is missing here"))?;
            use std::os::unix::fs::MetadataExt;
            let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
            let same_content = || ident.sha256 != [0; 32] && receive::sha256_file(Path::new(path)).is_ok_and(|h| h == ident.sha256);
            if (md.size() != ident.size || mtime != ident.mtime_ns) && !same_content() {
                bail!("the mapped file {path} changed since the checkpoint (size or modification time differ); the saved process cannot use it");
            }
        }
    }
    check_locks(m)?;
    for f in &m.fds {
        let file = m.files.get(f.file as usize).context("the image's fd table is damaged")?;
        match &file.kind {
            // A /proc file names the program's own processes, which exist only once restored
            // (with their saved pids: the path is right again then).
            FileKind::Regular { path, .. } if !path.starts_with("/proc/") && std::fs::metadata(path).is_err() => {
                bail!("fd {} of the saved process was {path}, which is missing here", f.fd);
            }
            FileKind::Other { link } => {
                say!("pmig-resume: warning: fd {} ({link}) was left out at checkpoint; it will be closed", f.fd)
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a restore whose program held a file lock that another process holds here now
/// (the original, still running, typically), naming the file: the restored program could
/// not take it again. Probed with a description of pmig-resume's own (which holds no lock).
fn check_locks(m: &pmig_image::Manifest) -> Result<()> {
    use pmig_image::LockKind;
    const F_OFD_GETLK: i32 = 36;
    for f in &m.files {
        let FileKind::Regular { path, .. } = &f.kind else { continue };
        if f.locks.is_empty() {
            continue;
        }
        let Ok(file) = std::fs::File::open(path) else { continue };
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        for l in &f.locks {
            let range = match l.end {
                Some(e) => format!("bytes {}-{e}", l.start),
                None => format!("bytes {} to the end", l.start),
            };
            // SAFETY: flock/fcntl on our own fd; `fl` is a local struct flock.
            unsafe {
                match l.kind {
                    LockKind::Flock => {
                        let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH };
                        if libc::flock(fd, op | libc::LOCK_NB) != 0 {
                            bail!("{path} is locked (flock) by another process here; the program held that lock and could not take it again");
                        }
                        libc::flock(fd, libc::LOCK_UN);
                    }
                    // A lease another process holds is broken by the program's open, as it
                    // would be by any open: nothing to refuse.
                    LockKind::Lease => {}
                    LockKind::Posix | LockKind::Ofd => {
                        let mut fl: libc::flock = std::mem::zeroed();
                        fl.l_type = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
                        fl.l_whence = libc::SEEK_SET as i16;
                        fl.l_start = l.start as i64;
                        fl.l_len = l.end.map_or(0, |e| e + 1 - l.start) as i64;
                        if libc::fcntl(fd, F_OFD_GETLK, &mut fl) == 0 && fl.l_type != libc::F_UNLCK as i16 {
                            let who = if fl.l_pid > 0 { format!("process {}", fl.l_pid) } else { "another open file".into() };
                            bail!("{path} ({range}) is locked by {who} here; the program held that lock and could not take it again");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, String> {
        parse_args(a.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn options_and_the_image_come_in_any_order() {
        let a = args(&["img.pmig", "--ids", "exact"]).unwrap();
        assert_eq!((a.image.as_deref(), a.ids), (Some("img.pmig"), ns::Ids::Exact));
        let a = args(&["--inspect", "-"]).unwrap();
        assert!(a.inspect);
        assert_eq!(a.image.as_deref(), Some("-"));
        let a = args(&["--listen=7070", "--token-file", "t", "--keep-listening", "--as-owner", "--root", "/r"]).unwrap();
        assert_eq!((a.listen.as_deref(), a.token_file), (Some("7070"), Some(PathBuf::from("t"))));
        assert!(a.keep && a.as_owner && a.image.is_none());
        assert_eq!(a.root, Some(PathBuf::from("/r")));
        assert!(args(&["--allow-unbound", "i"]).unwrap().allow_unbound);
        let a = args(&["--ssh-receiver", "--log", "l", "--ids=virtual"]).unwrap();
        assert!(a.ssh_receiver);
        assert_eq!((a.log, a.ids), (Some(PathBuf::from("l")), ns::Ids::Virtual));
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert_eq!(args(&["--nope"]).unwrap_err(), "invalid option '--nope'");
        assert_eq!(args(&["a", "b"]).unwrap_err(), "more than one image given");
        assert_eq!(args(&["--ids", "all"]).unwrap_err(), "--ids takes auto, exact or virtual, not all");
        assert_eq!(args(&["--listen"]).unwrap_err(), "--listen needs a value");
    }

    #[test]
    fn the_man_page_lists_every_option() {
        let m = man::man_page("pmig-resume", "x", USAGE, "pmig-run");
        for o in ["allow\\-unbound", "inspect", "listen", "token\\-file", "keep\\-listening", "as\\-owner", "ssh\\-receiver", "log", "root", "ids"] {
            assert!(m.contains(&format!(".TP\n\\fB\\-\\-{o}\\fR")), "{o} missing from\n{m}");
        }
    }
}
