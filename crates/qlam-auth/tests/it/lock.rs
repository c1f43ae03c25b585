//! The store lock (DESIGN §6 step 2): mutual exclusion between threads and between processes
//! for each method, bounded waits, the OFD-to-lease fallback, and the lease's break and
//! renewal rules. Each contender gets its own node-local directory unless a test says
//! otherwise, so that the shared lock, not the node-local one, is what keeps them apart.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qlam_auth::store::{LockIdentity, LockMethod, LockOptions, acquire, probe};
use qlam_auth::{Ctx, ErrorKind};

const METHODS: [LockMethod; 3] = [LockMethod::Ofd, LockMethod::Flock, LockMethod::Lease];

/// Environment of a child started by `processes_exclude_each_other_with_every_method`: its
/// lock method.
const CHILD_METHOD: &str = "LOCK_IT_CHILD_METHOD";
/// The directory holding the lock and counter files.
const CHILD_DIR: &str = "LOCK_IT_CHILD_DIR";
/// The child's node-local lock directory.
const CHILD_NODE: &str = "LOCK_IT_CHILD_NODE";
/// How many increments the child makes.
const CHILD_ROUNDS: &str = "LOCK_IT_CHILD_ROUNDS";

/// A store directory; `node(n)` gives the node-local lock directory standing for node `n`.
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("qlam-it-lock-{name}-"))
                .tempdir()
                .unwrap(),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn lock_path(&self) -> PathBuf {
        self.path().join("cache_default.json.lock")
    }

    fn lease_path(&self) -> PathBuf {
        self.path().join("cache_default.json.lock.lease")
    }

    fn node(&self, n: usize) -> PathBuf {
        self.path().join(format!("node-{n}"))
    }
}

/// This process, described as the library's callers describe it.
fn identity() -> LockIdentity {
    let ctx = Ctx::with_vars(Vec::<(String, String)>::new());
    LockIdentity {
        host: ctx.hostname.clone(),
        pid: ctx.pid,
        boot_id: ctx.boot_id(),
        job_id: Some("it-job".into()),
    }
}

fn options(method: LockMethod, node_local_dir: PathBuf) -> LockOptions {
    let mut opts = LockOptions::new(identity(), node_local_dir);
    opts.method = method;
    opts.timeout = Duration::from_secs(10);
    opts.lease_ttl = Duration::from_secs(3);
    opts
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Read-sleep-write: loses updates unless callers are mutually excluded.
fn increment(counter: &Path) {
    let n: u64 = fs::read_to_string(counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(5));
    fs::write(counter, (n + 1).to_string()).unwrap();
}

fn count(counter: &Path) -> u64 {
    fs::read_to_string(counter).unwrap().trim().parse().unwrap()
}

fn write_lease(
    path: &Path,
    host: &str,
    pid: u32,
    boot_id: &str,
    token: &str,
    expires_at_unix_ms: u64,
) {
    let record = serde_json::json!({
        "host": host,
        "pid": pid,
        "boot_id": boot_id,
        "job_id": null,
        "token": token,
        "expires_at_unix_ms": expires_at_unix_ms,
    });
    let tmp = path.with_extension("it-tmp");
    fs::write(&tmp, record.to_string()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn lease_token(path: &Path) -> String {
    let record: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    record["token"].as_str().unwrap().to_owned()
}

fn assert_times_out(lock_path: &Path, opts: &LockOptions) {
    let started = Instant::now();
    let err = acquire(lock_path, opts).expect_err("the lock is held: acquire must time out");
    let waited = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::LockTimeout, "{err:?}");
    assert!(
        err.hint().is_some_and(|h| h.contains("lock_timeout")),
        "{err:?}"
    );
    assert!(
        err.message().contains(&lock_path.display().to_string()),
        "{err:?}"
    );
    assert!(
        waited >= opts.timeout,
        "gave up after {waited:?}, before {:?}",
        opts.timeout
    );
    assert!(
        waited < opts.timeout + Duration::from_secs(2),
        "overran the timeout: {waited:?}"
    );
}

#[test]
fn threads_exclude_each_other_with_every_method() {
    for method in METHODS {
        let dir = TempDir::new("threads");
        let counter = dir.path().join("counter");
        let (threads, rounds) = (5, 3);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (lock_path, counter) = (dir.lock_path(), counter.clone());
                // Two threads share a node-local directory: both locks are exercised.
                let opts = options(method, dir.node(t / 2));
                std::thread::spawn(move || {
                    for _ in 0..rounds {
                        let lock = acquire(&lock_path, &opts).unwrap();
                        assert_eq!(lock.method(), method);
                        increment(&counter);
                        assert!(lock.still_held());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            count(&counter),
            (threads * rounds) as u64,
            "{method}: lost updates"
        );
        assert!(!dir.lease_path().exists(), "{method}: lease left behind");
    }
}

/// The child side of `processes_exclude_each_other_with_every_method`; does nothing in a
/// normal test run.
#[test]
fn child_role() {
    let Ok(method) = std::env::var(CHILD_METHOD) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    let node = PathBuf::from(std::env::var(CHILD_NODE).unwrap());
    let rounds: usize = std::env::var(CHILD_ROUNDS).unwrap().parse().unwrap();
    let opts = options(method.parse().unwrap(), node);
    for _ in 0..rounds {
        let _lock = acquire(&dir.join("cache_default.json.lock"), &opts).unwrap();
        increment(&dir.join("counter"));
    }
}

fn spawn_child(method: LockMethod, dir: &TempDir, node: PathBuf, rounds: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock::child_role", "--test-threads=1", "--quiet"])
        .env(CHILD_METHOD, method.to_string())
        .env(CHILD_DIR, dir.path())
        .env(CHILD_NODE, node)
        .env(CHILD_ROUNDS, rounds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn processes_exclude_each_other_with_every_method() {
    for method in METHODS {
        let dir = TempDir::new("procs");
        let (procs, rounds) = (4, 3);
        // Two processes share a node-local directory: both locks are exercised.
        let children: Vec<_> = (0..procs)
            .map(|p| spawn_child(method, &dir, dir.node(p / 2), rounds))
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{method}: child failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            count(&dir.path().join("counter")),
            (procs * rounds) as u64,
            "{method}: lost updates"
        );
        assert!(!dir.lease_path().exists(), "{method}: lease left behind");
    }
}

#[test]
fn a_held_lock_times_out() {
    for method in METHODS {
        let dir = TempDir::new("timeout");
        let _held = acquire(&dir.lock_path(), &options(method, dir.node(0))).unwrap();
        let mut other_node = options(method, dir.node(1));
        other_node.timeout = Duration::from_millis(200);
        assert_times_out(&dir.lock_path(), &other_node);
        // Same node: the node-local lock is what times out.
        let mut same_node = options(method, dir.node(0));
        same_node.timeout = Duration::from_millis(100);
        assert_times_out(&dir.lock_path(), &same_node);
    }
}

#[test]
fn auto_uses_ofd_where_the_filesystem_has_locks() {
    let dir = TempDir::new("auto");
    let lock = acquire(&dir.lock_path(), &options(LockMethod::Auto, dir.node(0))).unwrap();
    assert_eq!(lock.method(), LockMethod::Ofd);
    assert!(!dir.lease_path().exists());
}

#[test]
fn auto_falls_back_to_a_lease_when_ofd_is_refused() {
    for errno in [libc::ENOLCK, libc::EOPNOTSUPP, libc::ENOSYS, libc::EINVAL] {
        let dir = TempDir::new("fallback");
        let refusing = |node| {
            let mut opts = options(LockMethod::Auto, dir.node(node));
            opts.simulate_ofd_errno = Some(errno);
            opts
        };
        let lock = acquire(&dir.lock_path(), &refusing(0)).unwrap();
        assert_eq!(lock.method(), LockMethod::Lease, "errno {errno}");
        assert!(dir.lease_path().exists());

        let mut waiter = refusing(1);
        waiter.timeout = Duration::from_millis(150);
        assert_times_out(&dir.lock_path(), &waiter);
        let mut lease_waiter = options(LockMethod::Lease, dir.node(2));
        lease_waiter.timeout = Duration::from_millis(150);
        assert_times_out(&dir.lock_path(), &lease_waiter);

        drop(lock);
        assert!(
            !dir.lease_path().exists(),
            "the lease is removed on release"
        );
        assert_eq!(
            acquire(&dir.lock_path(), &refusing(1)).unwrap().method(),
            LockMethod::Lease
        );
    }
}

#[test]
fn auto_fallback_keeps_threads_apart() {
    let dir = TempDir::new("fallback-threads");
    let counter = dir.path().join("counter");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (lock_path, counter) = (dir.lock_path(), counter.clone());
            let mut opts = options(LockMethod::Auto, dir.node(t));
            opts.simulate_ofd_errno = Some(libc::ENOLCK);
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let lock = acquire(&lock_path, &opts).unwrap();
                    assert_eq!(lock.method(), LockMethod::Lease);
                    increment(&counter);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(count(&counter), 12);
}

#[test]
fn ofd_alone_reports_a_refusing_filesystem() {
    let dir = TempDir::new("ofd-refused");
    let mut opts = options(LockMethod::Ofd, dir.node(0));
    opts.simulate_ofd_errno = Some(libc::ENOLCK);
    let err = acquire(&dir.lock_path(), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err:?}");
    assert!(err.message().contains("refuses"), "{err:?}");
    assert!(err.hint().is_some_and(|h| h.contains("lease")), "{err:?}");
}

#[test]
fn a_lease_of_a_dead_process_on_this_node_is_broken_at_once() {
    let dir = TempDir::new("dead-owner");
    let me = identity();
    let child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait_with_output().unwrap();
    // Unexpired for an hour: only the dead pid makes it breakable.
    write_lease(
        &dir.lease_path(),
        &me.host,
        dead_pid,
        &me.boot_id,
        "dead-owner",
        now_ms() + 3_600_000,
    );

    let started = Instant::now();
    let lock = acquire(&dir.lock_path(), &options(LockMethod::Lease, dir.node(0))).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_ne!(lease_token(&dir.lease_path()), "dead-owner");
    assert!(lock.still_held());
}

#[test]
fn an_expired_lease_from_another_node_is_broken() {
    let dir = TempDir::new("expired");
    write_lease(
        &dir.lease_path(),
        "node-elsewhere",
        4242,
        "other-boot",
        "expired",
        now_ms() - 10_000,
    );
    let started = Instant::now();
    let lock = acquire(&dir.lock_path(), &options(LockMethod::Lease, dir.node(0))).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_ne!(lease_token(&dir.lease_path()), "expired");
    drop(lock);
    assert!(!dir.lease_path().exists());
}

#[test]
fn a_live_lease_from_another_node_is_respected() {
    let dir = TempDir::new("live");
    // Same pid as ours, but on another host: proves nothing about liveness.
    write_lease(
        &dir.lease_path(),
        "node-elsewhere",
        std::process::id(),
        "other-boot",
        "live",
        now_ms() + 60_000,
    );
    let before = fs::read(dir.lease_path()).unwrap();
    let mut opts = options(LockMethod::Lease, dir.node(0));
    opts.timeout = Duration::from_millis(300);
    assert_times_out(&dir.lock_path(), &opts);
    let err = acquire(&dir.lock_path(), &opts).unwrap_err();
    assert!(
        err.message().contains("node-elsewhere"),
        "names the holder: {err:?}"
    );
    assert_eq!(
        fs::read(dir.lease_path()).unwrap(),
        before,
        "a live lease is left alone"
    );
}

#[test]
fn an_unwritten_lease_is_broken_only_once_old() {
    let dir = TempDir::new("unwritten");
    // A writer that crashed between create and write leaves an empty file.
    fs::write(dir.lease_path(), "").unwrap();
    let mut opts = options(LockMethod::Lease, dir.node(0));
    opts.timeout = Duration::from_millis(200);
    assert_times_out(&dir.lock_path(), &opts);

    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(dir.lease_path())
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let lock = acquire(&dir.lock_path(), &opts).unwrap();
    assert!(lock.still_held());
}

#[test]
fn the_lock_file_stays_in_place_with_mode_0600() {
    let dir = TempDir::new("lockfile");
    drop(acquire(&dir.lock_path(), &options(LockMethod::Ofd, dir.node(0))).unwrap());
    // Whatever is in it is never truncated.
    fs::write(dir.lock_path(), "keep").unwrap();
    for method in [
        LockMethod::Auto,
        LockMethod::Ofd,
        LockMethod::Flock,
        LockMethod::Lease,
    ] {
        for _ in 0..2 {
            drop(acquire(&dir.lock_path(), &options(method, dir.node(0))).unwrap());
            let meta = fs::symlink_metadata(dir.lock_path()).unwrap();
            assert!(meta.is_file(), "{method}: lock file removed");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{method}");
            assert_eq!(
                fs::read_to_string(dir.lock_path()).unwrap(),
                "keep",
                "{method}"
            );
        }
    }
    let node_dir = fs::metadata(dir.node(0)).unwrap();
    assert_eq!(node_dir.permissions().mode() & 0o777, 0o700);
}

#[test]
fn renewal_keeps_a_lease_alive_past_its_ttl() {
    let dir = TempDir::new("renewal");
    let ttl = Duration::from_millis(300);
    let mut opts = options(LockMethod::Lease, dir.node(0));
    opts.lease_ttl = ttl;
    let lock = acquire(&dir.lock_path(), &opts).unwrap();
    let token = lease_token(&dir.lease_path());

    let mut waiter = options(LockMethod::Lease, dir.node(1));
    (waiter.lease_ttl, waiter.timeout) = (ttl, Duration::from_millis(1000));
    assert_times_out(&dir.lock_path(), &waiter);

    // Held for more than three TTLs: without renewal the lease would have lapsed.
    assert!(lock.still_held());
    assert_eq!(lease_token(&dir.lease_path()), token);
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.lease_path()).unwrap()).unwrap();
    assert!(record["expires_at_unix_ms"].as_u64().unwrap() > now_ms());
    drop(lock);
    assert!(!dir.lease_path().exists());
}

#[test]
fn a_lease_replaced_by_another_owner_is_reported_lost_and_left_alone() {
    let dir = TempDir::new("lost");
    let lock = acquire(&dir.lock_path(), &options(LockMethod::Lease, dir.node(0))).unwrap();
    assert!(lock.still_held());
    write_lease(
        &dir.lease_path(),
        "node-elsewhere",
        4242,
        "other-boot",
        "usurper",
        now_ms() + 60_000,
    );
    assert!(!lock.still_held());
    drop(lock);
    assert_eq!(
        lease_token(&dir.lease_path()),
        "usurper",
        "release must not remove another's lease"
    );
}

#[test]
fn concurrent_breakers_of_one_stale_lease_have_one_winner() {
    for round in 0..3 {
        let dir = TempDir::new("breakers");
        write_lease(
            &dir.lease_path(),
            "node-elsewhere",
            4242,
            "other-boot",
            "stale",
            now_ms() - 60_000,
        );
        let breakers = 8;
        let barrier = Arc::new(Barrier::new(breakers));
        let handles: Vec<_> = (0..breakers)
            .map(|b| {
                let lock_path = dir.lock_path();
                let barrier = Arc::clone(&barrier);
                let mut opts = options(LockMethod::Lease, dir.node(b));
                opts.timeout = Duration::from_millis(300);
                std::thread::spawn(move || {
                    barrier.wait();
                    match acquire(&lock_path, &opts) {
                        Ok(lock) => {
                            // Hold past the others' timeout so a second winner would show.
                            std::thread::sleep(Duration::from_millis(500));
                            assert!(lock.still_held());
                            true
                        }
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::LockTimeout, "{e:?}");
                            false
                        }
                    }
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&won| won)
            .count();
        assert_eq!(winners, 1, "round {round}");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".lease."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn probe_reports_every_method_working_on_a_local_filesystem() {
    let dir = TempDir::new("probe");
    let report = probe(&dir.lock_path());
    assert_eq!(report.ofd, Ok(()));
    assert_eq!(report.flock, Ok(()));
    assert_eq!(report.lease, Ok(()));
    // A held lock still means the method works.
    let _held = acquire(&dir.lock_path(), &options(LockMethod::Ofd, dir.node(0))).unwrap();
    assert_eq!(probe(&dir.lock_path()).ofd, Ok(()));
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "probe leaves only the lock file (and the node dir): {names:?}"
    );
}

#[test]
fn a_foreign_node_local_directory_is_refused() {
    let dir = TempDir::new("nodedir");
    let node = dir.node(0);
    fs::create_dir(&node).unwrap();
    fs::set_permissions(&node, fs::Permissions::from_mode(0o777)).unwrap();
    let err = acquire(&dir.lock_path(), &options(LockMethod::Ofd, node.clone())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err:?}");
    assert!(
        err.hint().is_some_and(|h| h.contains("chmod 700")),
        "{err:?}"
    );

    let link = dir.node(1);
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let err = acquire(&dir.lock_path(), &options(LockMethod::Ofd, link)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err:?}");
}
