//! Unmodified, widely used programs from Debian's packages, checkpointed and resumed with
//! what they hold: `redis-server` with data and clients (one kept connected across the
//! checkpoint), and `python3` running an asyncio event loop, a thread and an sqlite3 database;
//! memcached dropping privileges; redis's BGSAVE child; nginx's master and workers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pmig_tests::services::{
    check_redis_dump, free_port, initdb, postgres_argv, postgres_bin, psql_query, redis_slow_save_args, redis_up, Psql, Redis, PSQL, REDIS_SERVER,
};
use pmig_tests::{fail_with, pmig_env, programs, wait_until, Chain, ChainOpts, Input, Program, Proc, Sandbox, Terminal};

const TIMEOUT: Duration = Duration::from_secs(20);

/// python3: an asyncio server and client (its loop has a self-pipe socketpair and an epoll
/// selector), a worker thread, and an sqlite3 database written every step.
const PY_ASYNC: &str = r#"
import asyncio, os, sqlite3, sys, threading, queue

def corrupt(msg):
    print("CORRUPT " + msg, flush=True)
    os._exit(3)

steps, path = int(sys.argv[1]), sys.argv[2]
db = sqlite3.connect(path)
db.execute("create table t(x integer)")
db.commit()
jobs, answers = queue.Queue(), queue.Queue()

def worker():
    while True:
        n = jobs.get()
        answers.put(n * n)

threading.Thread(target=worker, daemon=True).start()

async def handle(reader, writer):
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for s in range(1, steps + 1):
        writer.write(b"step %d\n" % s)
        await writer.drain()
        got = await asyncio.wait_for(reader.readline(), 5)
        if got != b"STEP %d\n" % s:
            corrupt("the asyncio echo gave %r" % got)
        db.execute("insert into t values (?)", (s,))
        db.commit()
        n, total = db.execute("select count(*), sum(x) from t").fetchone()
        if n != s or total != s * (s + 1) // 2:
            corrupt("the database holds %d rows summing to %s" % (n, total))
        jobs.put(s)
        if answers.get(timeout=5) != s * s:
            corrupt("the worker thread answered wrong")
        print("step %d" % s, flush=True)
        await asyncio.sleep(0.03)

asyncio.run(main())
"#;

#[test]
fn python_asyncio_thread_sqlite_chain() {
    let sb = Sandbox::new();
    let db = sb.file("py.db");
    let prog = Program {
        name: "python-asyncio".to_string(),
        argv: vec![programs::PYTHON3.into(), "-c".into(), PY_ASYNC.into(), "60".into(), db.into()],
        steps: 60,
        input: Input::Idle,
    };
    Chain::new(&sb, &prog, ChainOpts::default()).run();
}

fn spawn(sb: &Sandbox, cmd_of: impl FnOnce(&Sandbox) -> Command, label: &str) -> Proc {
    let mut cmd = cmd_of(sb);
    pmig_env(&mut cmd);
    Proc::spawn(label, cmd, Terminal::Pipe)
}

/// Waits for the program behind `r`, asked for a checkpoint with `--exit`, to exit 0.
fn wait_checkpointed(r: &mut Proc, what: &str, within: Duration) {
    let st = r.wait_exit(within).unwrap_or_else(|e| fail_with(&e, &mut [&mut *r]));
    assert!(st.success(), "{what} under pmig must exit 0 after the checkpoint: {}", r.describe());
}

/// `pmig-resume IMAGE` in a fresh working directory `dir`, as the sandbox's user (or, with
/// `as_root`, as the tests' own user).
fn resume(sb: &Sandbox, image: &Path, dir: &str, as_root: bool, label: &str) -> Proc {
    spawn(
        sb,
        |sb| {
            let mut c = if as_root { Command::new(&sb.bins().resume) } else { sb.command(&sb.bins().resume, &sb.workdir(dir)) };
            c.current_dir(sb.workdir(dir)).arg(image);
            c
        },
        label,
    )
}

/// redis-server with data: checkpointed, resumed, checkpointed again, resumed again. A client
/// outside pmig reads every key back after each restore and keeps writing; the listening
/// socket keeps accepting; as root, a client connected before the first checkpoint stays
/// connected through both restores (TCP repair), otherwise it sees the connection reset.
#[test]
fn redis_server_keeps_its_data_and_clients() {
    if !Path::new("/usr/bin/redis-server").exists() {
        panic!("redis-server is not installed (.ci/run installs it: apt-get install redis-server)");
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let sb = Sandbox::new();
    let image = sb.image("redis.pmig");
    let port = free_port();
    let mut r = spawn(
        &sb,
        |sb| {
            let mut c = sb.command(&sb.bins().run, &sb.workdir("run"));
            c.arg("--exit").arg("--image").arg(&image).arg("--").arg(REDIS_SERVER);
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
            c
        },
        "pmig-run (redis-server)",
    );
    let mut kept = wait_until(TIMEOUT, "redis-server answering PING", || redis_up(port)).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let mut written = 0;
    let mut write_keys = |c: &mut Redis, n: usize| {
        for _ in 0..n {
            written += 1;
            assert_eq!(c.cmd(&["SET", &format!("key{written}"), &format!("value{written}")]).unwrap(), "+OK");
        }
        written
    };
    let mut all = write_keys(&mut kept, 200);
    for round in 1..=2 {
        r.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        wait_checkpointed(&mut r, "redis", TIMEOUT);
        r = resume(&sb, &image, &format!("resume-{round}"), false, &format!("pmig-resume #{round} (redis-server)"));
        let mut c = wait_until(TIMEOUT, "the resumed redis answering", || redis_up(port)).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        assert_eq!(c.cmd(&["DBSIZE"]).unwrap(), format!(":{all}"), "{}", r.describe());
        for k in [1, all / 2, all] {
            assert_eq!(c.cmd(&["GET", &format!("key{k}")]).unwrap(), format!("value{k}"));
        }
        all = write_keys(&mut c, 100);
        match kept.cmd(&["GET", "key1"]) {
            Ok(v) if root => assert_eq!(v, "value1", "the kept connection must still work"),
            Ok(v) => panic!("without root the old connection cannot survive, yet it answered {v:?}"),
            Err(e) if root => fail_with(&format!("as root the client's connection must survive the restore: {e}"), &mut [&mut r]),
            Err(_) => kept = c,
        }
    }
    assert_eq!(kept.cmd(&["DBSIZE"]).unwrap(), format!(":{all}"));
    let _ = kept.cmd(&["SHUTDOWN", "NOSAVE"]);
    let _ = r.wait_exit(TIMEOUT);
}

/// A memcached text-protocol exchange: one command, the reply up to `end`.
fn memcached_cmd(port: u16, cmd: &str, end: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(end) {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// memcached started as root with `-u memcache` drops to that user with its worker threads
/// running (set*id in every thread: this hung under pmig before), is checkpointed, resumed
/// twice, and serves its data each time, still as user memcache.
#[test]
fn memcached_as_root_drops_privileges_and_serves() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED memcached_as_root_drops_privileges_and_serves: needs root (memcached -u)");
        return;
    }
    if !Path::new("/usr/bin/memcached").exists() {
        panic!("memcached is not installed (.ci/run installs it: apt-get install memcached)");
    }
    let sb = Sandbox::new();
    let image = sb.image("memcached.pmig");
    // The checkpoint writes as the user memcached runs as.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(image.parent().expect("an image directory"), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let port = free_port();
    let mut r = spawn(
        &sb,
        |sb| {
            let mut c = sb.command(&sb.bins().run, &sb.workdir("run"));
            c.arg("--exit").arg("--image").arg(&image).arg("--").arg("/usr/bin/memcached");
            c.args(["-u", "memcache", "-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-t", "4"]);
            c
        },
        "pmig-run (memcached -u memcache)",
    );
    let set = |k: &str, v: &str| memcached_cmd(port, &format!("set {k} 0 0 {}\r\n{v}\r\n", v.len()), "\r\n");
    let stored = wait_until(TIMEOUT, "memcached storing a key", || set("k0", "v0").filter(|r| r == "STORED\r\n"));
    stored.unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let memcache_uid = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("memcache:").and_then(|r| r.split(':').nth(1)).map(str::to_string))
        .expect("a memcache user");
    for round in 1..=2 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pmig_tests::program_pid(r.pid()))).unwrap_or_default();
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(uids, [memcache_uid.as_str(); 4].join(" "), "memcached must run as memcache ({memcache_uid}): {}", r.describe());
        r.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        wait_checkpointed(&mut r, "memcached", TIMEOUT);
        r = resume(&sb, &image, &format!("resume-{round}"), false, &format!("pmig-resume #{round} (memcached)"));
        let key = format!("k{round}");
        let ok = wait_until(TIMEOUT, "the resumed memcached storing a key", || set(&key, &format!("v{round}")).filter(|r| r == "STORED\r\n"));
        ok.unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        for k in 0..=round {
            let got = memcached_cmd(port, &format!("get k{k}\r\n"), "END\r\n").unwrap_or_default();
            assert_eq!(got, format!("VALUE k{k} 0 2\r\nv{k}\r\nEND\r\n"), "{}", r.describe());
        }
    }
    let _ = r.signal(libc::SIGTERM);
    let _ = r.wait_exit(TIMEOUT);
}

/// redis-server checkpointed while a `BGSAVE` child (a forked process of its tree) is writing
/// the dump: after the resume the child finishes, redis reports the save ok, and the dump holds
/// every key (read back by a second redis-server). The child shares redis's epoll set and
/// sockets: they come back shared.
#[test]
fn redis_bgsave_child_finishes_after_restore() {
    if !Path::new("/usr/bin/redis-server").exists() {
        panic!("redis-server is not installed (.ci/run installs it: apt-get install redis-server)");
    }
    let sb = Sandbox::new();
    let image = sb.image("redis-bgsave.pmig");
    let dir = sb.workdir("data");
    let port = free_port();
    let mut r = spawn(
        &sb,
        |sb| {
            let mut c = sb.command(&sb.bins().run, &sb.workdir("run"));
            c.arg("--exit").arg("--image").arg(&image).arg("--").arg(REDIS_SERVER);
            c.args(redis_slow_save_args(port, "127.0.0.1", &dir));
            c
        },
        "pmig-run (redis-server, BGSAVE)",
    );
    let mut c = wait_until(TIMEOUT, "redis-server answering PING", || redis_up(port)).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let n = 1200;
    c.set_keys(n);
    assert_eq!(c.cmd(&["BGSAVE"]).unwrap(), "+Background saving started");
    let child = wait_until(TIMEOUT, "the BGSAVE child", || {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", r.pid())).ok()?;
        kids.split_whitespace().next().map(str::to_string)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    drop(c);
    r.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let st = r.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(st.success(), "redis and its BGSAVE child (pid {child}) must exit 0 after the checkpoint: {}", r.describe());
    assert!(!dir.join("dump.rdb").exists(), "the save must not have finished before the checkpoint");
    r = resume(&sb, &image, "resume", false, "pmig-resume (redis-server, BGSAVE)");
    let mut c = wait_until(TIMEOUT, "the resumed redis answering", || redis_up(port)).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let done = wait_until(Duration::from_secs(30), "the BGSAVE to finish", || {
        let info = c.info_persistence()?;
        (info.contains("rdb_bgsave_in_progress:0")).then_some(info)
    })
    .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(done.contains("rdb_last_bgsave_status:ok"), "the save finished badly: {done}");
    let _ = c.cmd(&["SHUTDOWN", "NOSAVE"]);
    let _ = r.wait_exit(TIMEOUT);
    check_redis_dump(&sb, &dir, n);
}

/// One HTTP/1.0 GET of `/` on `port`: the body, when the answer is 200.
fn http_get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut got = String::new();
    s.read_to_string(&mut got).ok()?;
    let (head, body) = got.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// One request on a kept-alive HTTP/1.1 connection: the body of a 200 answer.
fn http_again(s: &mut TcpStream) -> Result<String, String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
            if body.len() >= len {
                if !head.starts_with("HTTP/1.1 200") {
                    return Err(format!("answered {head:?}"));
                }
                return Ok(body[..len].to_string());
            }
        }
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection was closed".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The pids (as the program sees them) of the nginx workers that answer `n` requests.
fn nginx_workers(port: u16, n: usize) -> Option<std::collections::BTreeSet<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        seen.insert(http_get(port)?.strip_prefix("worker ")?.trim().to_string());
    }
    Some(seen)
}

/// The children of process `pid` (host pids) and each one's command line.
fn children_of(pid: i32) -> Vec<(i32, String)> {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace()
        .filter_map(|k| k.parse().ok())
        .map(|k: i32| (k, std::fs::read_to_string(format!("/proc/{k}/cmdline")).unwrap_or_default().replace('\0', " ")))
        .collect()
}

/// nginx with its master and two workers (a listening socket all three share, a channel
/// socketpair between the master and each worker, shared memory): requests served before and
/// after each of two restores, by the same two workers, still the master's children; as root,
/// a client's kept-alive connection to a worker (run as nobody) survives both (the master,
/// privileged, takes its repair state for it), and
/// `nginx -s reload` afterwards (the pid file names the master, which keeps its pid outside
/// the restore's namespace too) makes the master start two new workers, which serve.
#[test]
fn nginx_master_and_workers_serve_after_restore() {
    if !Path::new("/usr/sbin/nginx").exists() {
        panic!("nginx is not installed (.ci/run installs it: apt-get install nginx-light)");
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let sb = Sandbox::new();
    let image = sb.image("nginx.pmig");
    let dir = sb.workdir("nginx");
    let port = free_port();
    let conf = programs::nginx_config(&dir, &format!("127.0.0.1:{port}"));
    let nginx = |c: &mut Command| {
        c.arg("/usr/sbin/nginx").arg("-c").arg(&conf).arg("-p").arg(&dir);
    };
    let mut r = spawn(
        &sb,
        |sb| {
            let mut c = sb.command(&sb.bins().run, &sb.workdir("run"));
            c.arg("--exit").arg("--image").arg(&image).arg("--");
            nginx(&mut c);
            c
        },
        "pmig-run (nginx)",
    );
    let workers = wait_until(TIMEOUT, "nginx's two workers answering", || nginx_workers(port, 40).filter(|w| w.len() == 2))
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    // A client connection kept alive across the checkpoints, served by one worker.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    kept.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let first = http_again(&mut kept).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    for round in 1..=2 {
        r.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        wait_checkpointed(&mut r, "nginx", TIMEOUT);
        assert!(http_get(port).is_none(), "nginx must be gone after a checkpoint with --exit");
        r = resume(&sb, &image, &format!("resume-{round}"), false, &format!("pmig-resume #{round} (nginx)"));
        let again = wait_until(TIMEOUT, "the resumed workers answering", || nginx_workers(port, 40).filter(|w| w.len() == 2))
            .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        assert_eq!(again, workers, "the same two workers must serve: {}", r.describe());
        let master = pmig_tests::program_pid(r.pid());
        let kids = children_of(master);
        assert_eq!(kids.len(), 2, "the master must have its two workers as children: {kids:?}\n{}", r.describe());
        assert!(kids.iter().all(|k| k.1.starts_with("nginx: worker process")), "{kids:?}");
        // As root the master puts its workers' connections in repair mode for them (they run
        // as nobody): the kept connection goes on, with the same worker. Otherwise it is reset.
        match http_again(&mut kept) {
            Ok(body) if root => assert_eq!(body, first, "the same worker must answer on the kept connection"),
            Ok(body) => panic!("without root the connection cannot survive, yet it answered {body:?}"),
            Err(e) if root => fail_with(&format!("as root the kept connection must survive the restore: {e}"), &mut [&mut r]),
            Err(_) => {
                kept = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
                kept.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            }
        }
    }
    if root {
        let mut c = Command::new("/usr/sbin/nginx");
        c.arg("-c").arg(&conf).arg("-p").arg(&dir).args(["-s", "reload"]);
        let out = c.output().expect("run nginx -s reload");
        assert!(out.status.success(), "nginx -s reload: {}", String::from_utf8_lossy(&out.stderr));
        let fresh = wait_until(TIMEOUT, "two new workers after the reload", || {
            nginx_workers(port, 40).filter(|w| w.len() == 2 && w.is_disjoint(&workers))
        })
        .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        let master = pmig_tests::program_pid(r.pid());
        let kids = wait_until(TIMEOUT, "the old workers to leave", || Some(children_of(master)).filter(|k| k.len() == 2))
            .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        assert!(kids.iter().all(|k| k.1.starts_with("nginx: worker process")), "{kids:?} (new workers {fresh:?})");
    } else {
        eprintln!("nginx -s reload not tried: without root the restored master has another pid outside its namespace");
    }
    r.signal(libc::SIGQUIT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    let st = r.wait_exit(TIMEOUT).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(st.success(), "nginx must stop cleanly on SIGQUIT after the restores: {}", r.describe());
}

/// PostgreSQL (its postmaster, background processes and a client's backend: shared memory,
/// semaphores, latches, listening sockets they share, SIGUSR2 between them) under pmig:
/// data written before each of two checkpoints is read after the restore, new connections
/// work, a session open across the checkpoints comes back reset (the backend runs as an
/// unprivileged user, whose checkpoint cannot take TCP repair state), and `pg_ctl stop` shuts the restored cluster down cleanly (as root: the
/// postmaster keeps its pid outside the namespace, where `pg_ctl` reads it from its pid file;
/// otherwise a SIGTERM to pmig-resume, passed on, does). The second checkpoint is asked of
/// a child of the postmaster, which passes it on.
#[test]
fn postgres_keeps_its_data_and_stops_cleanly_after_restore() {
    let Some(bin) = postgres_bin() else {
        panic!("PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql-15)");
    };
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // postgres refuses to run as root.
    let sb = Sandbox::with_user(pmig_tests::RunAs::nobody_if_root());
    let image = sb.image("postgres.pmig");
    let data = sb.workdir("pg").join("data");
    let sock = sb.workdir("pgsock");
    initdb(&sb, &bin, &data, &sb.workdir("pg"));
    let port = free_port();
    let mut r = spawn(
        &sb,
        |sb| {
            let mut c = sb.command(&sb.bins().run, &sb.workdir("run"));
            c.arg("--exit").arg("--image").arg(&image).arg("--");
            c.args(postgres_argv(&bin, &data, &sock, port, "127.0.0.1"));
            c
        },
        "pmig-run (postgres)",
    );
    let psql = |sql: &str| psql_query(Command::new(PSQL), "127.0.0.1", port, sql);
    wait_until(TIMEOUT, "postgres accepting connections", || psql("select 1").filter(|o| o == "1")).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(psql("create table t (x int); insert into t select generate_series(1, 1000)").is_some());
    let mut rows = 1000;
    let mut kept = Psql::open(port);
    assert_eq!(kept.query("select count(*) from t").unwrap(), vec![rows.to_string()]);
    for round in 1..=2 {
        if round == 1 {
            r.signal(libc::SIGUSR2).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        } else {
            // Asked through one of its children: the request is passed on to the postmaster,
            // which takes it as one although it has a SIGUSR2 handler of its own.
            let kids = children_of(pmig_tests::program_pid(r.pid()));
            let kid = kids.first().unwrap_or_else(|| fail_with("the postmaster has no children", &mut [&mut r])).0;
            // SAFETY: kill(2) on a pid of the test's own cluster.
            assert_eq!(unsafe { libc::kill(kid, libc::SIGUSR2) }, 0, "kill -USR2 {kid}");
        }
        wait_checkpointed(&mut r, "postgres", Duration::from_secs(60));
        // As root the restore runs as root (it gives every process its saved user).
        r = resume(&sb, &image, &format!("resume-{round}"), root, &format!("pmig-resume #{round} (postgres)"));
        let count = wait_until(TIMEOUT, "the resumed postgres answering", || psql("select count(*) from t"))
            .unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
        assert_eq!(count, rows.to_string(), "{}", r.describe());
        assert!(psql(&format!("insert into t select generate_series(1, {round} * 100)")).is_some(), "{}", r.describe());
        rows += round * 100;
        // The backend runs as an unprivileged user (postgres refuses root): its checkpoint
        // cannot take TCP repair state, so the session comes back reset, which psql sees.
        match kept.query("select count(*) from t") {
            Ok(v) => panic!("a session without TCP repair cannot survive, yet it answered {v:?}"),
            Err(_) => kept = Psql::open(port),
        }
    }
    assert_eq!(kept.query("select count(*) from t").unwrap(), vec![rows.to_string()]);
    drop(kept);
    if root {
        let out = sb.command(&bin.join("pg_ctl"), &sb.workdir("pg")).arg("-D").arg(&data).args(["-m", "fast", "stop"]).output().expect("pg_ctl");
        assert!(out.status.success(), "pg_ctl stop: {}{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), r.describe());
    } else {
        r.signal(libc::SIGTERM).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    }
    let st = r.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| fail_with(&e, &mut [&mut r]));
    assert!(st.success(), "the restored postgres must shut down cleanly: {}", r.describe());
    assert!(r.stderr_text().contains("database system is shut down"), "{}", r.describe());
    assert!(!data.join("postmaster.pid").exists(), "a clean shutdown removes postmaster.pid");
}
