//! The lock a writer holds around a token store file (DESIGN §6 step 2): a node-local `flock`
//! collapses a node's tasks to one contender, then an OFD lock, `flock` or a lease file on the
//! shared `<store file>.lock`. Every wait is bounded by the caller's timeout; the lock file is
//! created once (0600) and never removed or truncated; a lease is broken only when expired or
//! when its owner is provably dead, and two breakers of one stale lease cannot both win.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Clock difference between nodes that a lease expiry tolerates before it counts as expired.
const CLOCK_SKEW: Duration = Duration::from_secs(2);
/// A lease file larger than this is not one of ours; read no further.
const MAX_LEASE_BYTES: u64 = 64 * 1024;
/// Default lifetime of a lease without renewal.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Default bound on taking the lock (the configuration's `lock_timeout` default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

const TIMEOUT_HINT: &str = "another process may be stuck holding the store lock (the message names \
     the lock file); if the store is only busy, raise `lock_timeout`";

/// Which cross-node lock to use on the shared lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMethod {
    /// OFD locks, falling back to a lease where the filesystem refuses locks.
    Auto,
    /// Open file description (`fcntl(F_OFD_SETLK)`) locks; coherent over NFS, Lustre
    /// (mounted with `flock`) and GPFS.
    Ofd,
    /// `flock(2)`; over NFS the kernel emulates it with POSIX locks (process-wide, so only the
    /// node-local lock keeps threads of one process apart there).
    Flock,
    /// A lease file created with `O_EXCL` and renewed while held: works where locks do not.
    Lease,
}

impl LockMethod {
    const ALL: [LockMethod; 4] = [
        LockMethod::Auto,
        LockMethod::Ofd,
        LockMethod::Flock,
        LockMethod::Lease,
    ];

    fn as_str(self) -> &'static str {
        match self {
            LockMethod::Auto => "auto",
            LockMethod::Ofd => "ofd",
            LockMethod::Flock => "flock",
            LockMethod::Lease => "lease",
        }
    }
}

impl FromStr for LockMethod {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        LockMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown lock method `{s}`: expected one of auto, ofd, flock, lease")
            })
    }
}

impl fmt::Display for LockMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who takes the lock; recorded in a lease so that others can tell a dead owner from a live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockIdentity {
    /// Host name of this node, as `gethostname` reports it.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`); empty if unknown, which
    /// disables the dead-owner check for leases taken by this process.
    pub boot_id: String,
    /// Batch job id, if running inside a job.
    pub job_id: Option<String>,
}

/// How to take the store lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The cross-node lock; `Auto` is OFD, falling back to a lease when the filesystem refuses
    /// locks (`ENOLCK`, `EOPNOTSUPP`/`ENOTSUP`, `ENOSYS`, `EINVAL`). Every process sharing a
    /// store must end up with the same method: an OFD holder and a lease holder do not
    /// exclude each other.
    pub method: LockMethod,
    /// Bound on taking both locks (node-local and shared); past it, `ErrorKind::LockTimeout`.
    pub timeout: Duration,
    /// Directory of node-local lock files, on a local filesystem (e.g.
    /// `$XDG_RUNTIME_DIR/qlam-hpc` or `/tmp/qlam-hpc-<uid>`); created 0700 if missing, refused
    /// if it is a symlink, owned by someone else or writable by others.
    pub node_local_dir: PathBuf,
    /// How long a lease stays valid without renewal; renewed every third of it while held.
    pub lease_ttl: Duration,
    /// Who we are, written into leases.
    pub identity: LockIdentity,
    /// For tests: pretend the OFD lock call failed with this errno.
    pub simulate_ofd_errno: Option<i32>,
}

impl LockOptions {
    /// Method `Auto`, timeout 2 min, lease TTL 30 s.
    pub fn new(identity: LockIdentity, node_local_dir: impl Into<PathBuf>) -> LockOptions {
        LockOptions {
            method: LockMethod::Auto,
            timeout: DEFAULT_TIMEOUT,
            node_local_dir: node_local_dir.into(),
            lease_ttl: DEFAULT_LEASE_TTL,
            identity,
            simulate_ofd_errno: None,
        }
    }
}

/// The held store lock; dropping it releases the shared lock, then the node-local one.
#[derive(Debug)]
pub struct StoreLock {
    method: LockMethod,
    // Declared before `_node_local`: fields drop in order, so the shared lock goes first.
    shared: Shared,
    _node_local: Flock<File>,
}

#[derive(Debug)]
enum Shared {
    /// Closing the file releases the OFD lock.
    Ofd {
        _file: File,
    },
    /// Dropping the guard unlocks.
    Flock {
        _guard: Flock<File>,
    },
    Lease(Lease),
}

impl StoreLock {
    /// The method actually in use: `Ofd`, `Flock` or `Lease`, never `Auto`.
    pub fn method(&self) -> LockMethod {
        self.method
    }

    /// Whether the lock is still ours. Always true for OFD and flock. For a lease, false once
    /// it expired unrenewed or someone else's record replaced it; this re-reads the lease file,
    /// so call it right before committing a write.
    pub fn still_held(&self) -> bool {
        match &self.shared {
            Shared::Ofd { .. } | Shared::Flock { .. } => true,
            Shared::Lease(lease) => lease.still_held(),
        }
    }
}

/// What `probe` found each method does on a lock file's filesystem: `Ok` if it works (a lock
/// held by someone else also counts: the filesystem answered), otherwise the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockProbe {
    /// `fcntl(F_OFD_SETLK)`.
    pub ofd: std::result::Result<(), String>,
    /// `flock(LOCK_EX | LOCK_NB)`.
    pub flock: std::result::Result<(), String>,
    /// `O_EXCL` create, write, fsync, rename and unlink beside the lock file.
    pub lease: std::result::Result<(), String>,
}

/// Take the node-local lock, then the shared lock on `lock_path` (`<store file>.lock`).
pub fn acquire(lock_path: &Path, opts: &LockOptions) -> Result<StoreLock> {
    let deadline = Deadline::start(opts.timeout);
    if opts.lease_ttl.is_zero() {
        return Err(Error::config("the lease TTL must be positive"));
    }
    let node_local = lock_node_local(lock_path, opts, &deadline)?;
    let file = open_lock_file(lock_path)?;
    // `auto` skips OFD locks where the mount makes them silently node-local.
    let requested =
        if opts.method == LockMethod::Auto && super::mounts::auto_prefers_lease(lock_path) {
            LockMethod::Lease
        } else {
            opts.method
        };
    let (method, shared) = match requested {
        LockMethod::Ofd | LockMethod::Auto => match lock_ofd(&file, lock_path, opts, &deadline) {
            Ok(()) => (LockMethod::Ofd, Shared::Ofd { _file: file }),
            Err(OfdError::Refused(_)) if opts.method == LockMethod::Auto => {
                drop(file);
                (
                    LockMethod::Lease,
                    Shared::Lease(Lease::acquire(lock_path, opts, &deadline)?),
                )
            }
            Err(OfdError::Refused(errno)) => return Err(refused(lock_path, "OFD", errno)),
            Err(OfdError::Failed(e)) => return Err(e),
        },
        LockMethod::Flock => (
            LockMethod::Flock,
            Shared::Flock {
                _guard: lock_flock(file, lock_path, &deadline)?,
            },
        ),
        LockMethod::Lease => {
            drop(file);
            (
                LockMethod::Lease,
                Shared::Lease(Lease::acquire(lock_path, opts, &deadline)?),
            )
        }
    };
    Ok(StoreLock {
        method,
        shared,
        _node_local: node_local,
    })
}

/// Used by `doctor`: try OFD, flock and a lease beside `lock_path` without blocking and
/// report what works (and the errno when not). Creates the lock file if missing; never
/// touches a live lease.
pub fn probe(lock_path: &Path) -> LockProbe {
    let file = match open_lock_file(lock_path) {
        Ok(f) => f,
        Err(e) => {
            let msg = format!("cannot open the lock file: {e}");
            return LockProbe {
                ofd: Err(msg.clone()),
                flock: Err(msg.clone()),
                lease: Err(msg),
            };
        }
    };
    let ofd = match ofd_try_lock(&file, None) {
        Ok(true) => {
            let _ = ofd_unlock(&file);
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    drop(file);
    let flock = match open_lock_file(lock_path) {
        Err(e) => Err(format!("cannot open the lock file: {e}")),
        Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                drop(held);
                Ok(())
            }
            Err((_, Errno::EWOULDBLOCK)) => Ok(()),
            Err((_, e)) => Err(e.to_string()),
        },
    };
    LockProbe {
        ofd,
        flock,
        lease: probe_lease(lock_path),
    }
}

// ---------------------------------------------------------------------------------------------
// Deadline and back-off

struct Deadline {
    started: Instant,
    /// None when the timeout is too large to represent: wait for ever.
    at: Option<Instant>,
}

impl Deadline {
    fn start(timeout: Duration) -> Deadline {
        let started = Instant::now();
        Deadline {
            started,
            at: started.checked_add(timeout),
        }
    }

    fn passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    fn waited(&self) -> String {
        format!("{:.1} s", self.started.elapsed().as_secs_f64())
    }

    /// Sleep for `d`, but not past the deadline.
    fn sleep(&self, d: Duration) {
        let d = match self.at {
            Some(at) => d.min(at.saturating_duration_since(Instant::now())),
            None => d,
        };
        std::thread::sleep(d);
    }
}

/// Growing sleeps with jitter, so that a node's pollers do not fall into step.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, max }
    }

    fn sleep(&mut self, deadline: &Deadline) {
        let base = self.next;
        let jitter = rand::rng().random_range(0..=base.as_micros() as u64 / 2);
        deadline.sleep(base + Duration::from_micros(jitter));
        self.next = (base * 3 / 2).min(self.max);
    }
}

fn timeout_error(what: String, deadline: &Deadline) -> Error {
    Error::new(
        ErrorKind::LockTimeout,
        format!("timed out after {} waiting for {what}", deadline.waited()),
    )
    .with_hint(TIMEOUT_HINT)
}

// ---------------------------------------------------------------------------------------------
// Node-local lock

fn lock_node_local(
    lock_path: &Path,
    opts: &LockOptions,
    deadline: &Deadline,
) -> Result<Flock<File>> {
    let dir = &opts.node_local_dir;
    prepare_private_dir(dir)?;
    let key = fnv1a64(absolute_lock_path(lock_path).as_os_str().as_bytes());
    let path = dir.join(format!("store-{key:016x}.lock"));
    let mut file = open_nofollow(&path, true).map_err(|e| {
        Error::store(format!(
            "cannot open the node-local lock file {}: {e}",
            path.display()
        ))
        .with_source(e)
    })?;
    // Local files lock quickly: poll fast so a node's queue drains promptly.
    let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(20));
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(held),
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
            Err((_, e)) => {
                return Err(Error::store(format!(
                    "cannot lock the node-local lock file {}: {e}",
                    path.display()
                ))
                .with_hint("`node_local_dir` must be on a local filesystem")
                .with_source(io::Error::from(e)));
            }
        }
        if deadline.passed() {
            return Err(timeout_error(
                format!(
                    "the store lock {}: another process on this node holds it (node-local lock {})",
                    lock_path.display(),
                    path.display()
                ),
                deadline,
            ));
        }
        backoff.sleep(deadline);
    }
}

/// Create `dir` 0700 if missing and refuse one an attacker could have planted or can write.
fn prepare_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::store(format!(
                "cannot create the node-local lock directory {}: {e}",
                dir.display()
            ))
            .with_source(e)
        })?;
    let meta = fs::symlink_metadata(dir).map_err(|e| {
        Error::store(format!(
            "cannot inspect the node-local lock directory {}: {e}",
            dir.display()
        ))
        .with_source(e)
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        return Err(Error::store(format!(
            "the node-local lock directory {} is not a directory (a symlink?)",
            dir.display()
        ))
        .with_hint(format!("remove {} and retry", dir.display())));
    }
    if meta.uid() != me {
        return Err(Error::store(format!(
            "the node-local lock directory {} belongs to uid {}, not to uid {me}",
            dir.display(),
            meta.uid()
        ))
        .with_hint(format!("remove {} (as its owner) and retry", dir.display())));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::store(format!(
            "the node-local lock directory {} is writable by others",
            dir.display()
        ))
        .with_hint(format!("chmod 700 {}", dir.display())));
    }
    Ok(())
}

/// The lock path with its directory resolved, so two spellings of one store share a
/// node-local lock (the file itself may not exist yet; its directory does).
fn absolute_lock_path(p: &Path) -> PathBuf {
    let plain = || std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            dir.canonicalize()
                .map(|d| d.join(name))
                .unwrap_or_else(|_| plain())
        }
        _ => plain(),
    }
}

/// FNV-1a, 64 bit: stable across builds and Rust versions, unlike std's hashers.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Shared lock: OFD and flock

/// Open (creating 0600 if missing) without following a symlink; never truncates.
fn open_nofollow(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn open_lock_file(lock_path: &Path) -> Result<File> {
    open_nofollow(lock_path, true).map_err(|e| {
        Error::store(format!(
            "cannot open the lock file {}: {e}",
            lock_path.display()
        ))
        .with_source(e)
    })
}

/// The errnos by which a filesystem says it does not do locks at all.
fn refuses_locks(e: Errno) -> bool {
    [
        libc::ENOLCK,
        libc::EOPNOTSUPP,
        libc::ENOTSUP,
        libc::ENOSYS,
        libc::EINVAL,
    ]
    .contains(&(e as i32))
}

fn refused(lock_path: &Path, what: &str, errno: Errno) -> Error {
    Error::store(format!(
        "the filesystem holding {} refuses {what} locks ({errno})",
        lock_path.display()
    ))
    .with_hint("set `lock = \"lease\"` (or `lock = \"auto\"`) in the configuration")
    .with_source(io::Error::from(errno))
}

enum OfdError {
    /// The filesystem does not do OFD locks.
    Refused(Errno),
    Failed(Error),
}

fn lock_ofd(
    file: &File,
    lock_path: &Path,
    opts: &LockOptions,
    deadline: &Deadline,
) -> std::result::Result<(), OfdError> {
    // F_OFD_SETLKW cannot time out, so poll; on a shared filesystem each try is a round trip
    // to the server, hence the longer sleeps than for the node-local lock.
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));
    loop {
        match ofd_try_lock(file, opts.simulate_ofd_errno) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if refuses_locks(e) => return Err(OfdError::Refused(e)),
            Err(e) => {
                return Err(OfdError::Failed(
                    Error::store(format!("cannot lock {}: {e}", lock_path.display()))
                        .with_source(io::Error::from(e)),
                ));
            }
        }
        if deadline.passed() {
            return Err(OfdError::Failed(timeout_error(
                format!(
                    "the store lock {} (held by another process)",
                    lock_path.display()
                ),
                deadline,
            )));
        }
        backoff.sleep(deadline);
    }
}

/// One non-blocking try: Ok(true) taken, Ok(false) held by someone else.
#[cfg(target_os = "linux")]
fn ofd_try_lock(file: &File, simulate: Option<i32>) -> std::result::Result<bool, Errno> {
    let fl = whole_file(libc::F_WRLCK);
    loop {
        let r = match simulate {
            Some(e) => Err(Errno::from_raw(e)),
            None => nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)),
        };
        match r {
            Ok(_) => return Ok(true),
            Err(Errno::EAGAIN | Errno::EACCES) => return Ok(false),
            Err(Errno::EINTR) if simulate.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(target_os = "linux")]
fn ofd_unlock(file: &File) -> std::result::Result<(), Errno> {
    let fl = whole_file(libc::F_UNLCK);
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).map(drop)
}

#[cfg(target_os = "linux")]
fn whole_file(l_type: libc::c_int) -> libc::flock {
    // l_len 0 = to the end of the file, however it grows; l_pid must be 0 for OFD locks.
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

#[cfg(not(target_os = "linux"))]
fn ofd_try_lock(_file: &File, simulate: Option<i32>) -> std::result::Result<bool, Errno> {
    Err(simulate.map_or(Errno::ENOSYS, Errno::from_raw))
}

#[cfg(not(target_os = "linux"))]
fn ofd_unlock(_file: &File) -> std::result::Result<(), Errno> {
    Err(Errno::ENOSYS)
}

fn lock_flock(mut file: File, lock_path: &Path, deadline: &Deadline) -> Result<Flock<File>> {
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(held),
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
            Err((_, e)) if refuses_locks(e) => return Err(refused(lock_path, "flock", e)),
            Err((_, e)) => {
                return Err(
                    Error::store(format!("cannot lock {}: {e}", lock_path.display()))
                        .with_source(io::Error::from(e)),
                );
            }
        }
        if deadline.passed() {
            return Err(timeout_error(
                format!(
                    "the store lock {} (held by another process)",
                    lock_path.display()
                ),
                deadline,
            ));
        }
        backoff.sleep(deadline);
    }
}

// ---------------------------------------------------------------------------------------------
// Shared lock: lease
//
// The lease file `<lock file>.lease` exists exactly while someone holds the lease. It is
// created with O_EXCL (atomic on NFS, Lustre and GPFS), rewritten only by temp file + rename
// (so a reader sees a whole record or none, and every renewal is a new inode), and removed by
// its owner on release. A stale lease is broken by renaming it to a private name, then checking
// that what was renamed is the very file judged stale: if a renewal or a new owner slipped in
// between, the file is linked back (link never replaces, so a newer lease is not clobbered).

/// The owner record inside a lease file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    host: String,
    pid: u32,
    boot_id: String,
    job_id: Option<String>,
    /// Random per acquisition: tells our lease from a later one of the same process.
    token: String,
    expires_at_unix_ms: u64,
}

/// What a reader found in a lease file: its identity on disk and, if it parses, its record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    record: Option<LeaseRecord>,
}

impl Observed {
    /// Whether this is the lease taken with `token`.
    fn carries(&self, token: &str) -> bool {
        self.record.as_ref().is_some_and(|r| r.token == token)
    }
}

#[derive(Debug)]
struct Lease {
    path: PathBuf,
    token: String,
    state: Arc<LeaseState>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct LeaseState {
    lost: AtomicBool,
    /// Expiry of the record we last wrote, in ms since the Unix epoch.
    expires_at_ms: AtomicU64,
}

enum Attempt {
    Taken(u64),
    /// Held by someone else (their record, if readable).
    Busy(Option<LeaseRecord>),
    /// Something changed (stale lease broken, file vanished): try again at once.
    Retry,
}

fn lease_path(lock_path: &Path) -> PathBuf {
    let mut s = lock_path.as_os_str().to_owned();
    s.push(".lease");
    PathBuf::from(s)
}

/// `path` with `.<tag>.<nonce>` appended: a name nobody else will use.
fn private_name(path: &Path, tag: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{tag}.{}", nonce()));
    PathBuf::from(s)
}

fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Lease {
    fn acquire(lock_path: &Path, opts: &LockOptions, deadline: &Deadline) -> Result<Lease> {
        let path = lease_path(lock_path);
        let token = nonce();
        // Each try is a few metadata round trips to the file server: poll more gently than OFD.
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let mut retries_in_a_row = 0;
        // The holder last seen (None inside: a lease file not yet written).
        let mut last_holder: Option<Option<LeaseRecord>> = None;
        loop {
            match try_take(&path, opts, &token)? {
                Attempt::Taken(expires_at_ms) => {
                    return Lease::start(path, token, expires_at_ms, opts);
                }
                Attempt::Retry if retries_in_a_row < 3 && !deadline.passed() => {
                    retries_in_a_row += 1;
                    continue;
                }
                Attempt::Retry => {}
                Attempt::Busy(holder) => last_holder = Some(holder),
            }
            if deadline.passed() {
                let who = match &last_holder {
                    Some(holder) => format!(" ({})", describe_holder(holder.as_ref())),
                    None => String::new(),
                };
                return Err(timeout_error(
                    format!("the lease {}{who}", path.display()),
                    deadline,
                ));
            }
            retries_in_a_row = 0;
            backoff.sleep(deadline);
        }
    }

    fn start(
        path: PathBuf,
        token: String,
        expires_at_ms: u64,
        opts: &LockOptions,
    ) -> Result<Lease> {
        let state = Arc::new(LeaseState {
            lost: AtomicBool::new(false),
            expires_at_ms: AtomicU64::new(expires_at_ms),
        });
        let (stop, stopped) = mpsc::channel();
        let renewer = {
            let (path, token, state) = (path.clone(), token.clone(), Arc::clone(&state));
            let (identity, ttl) = (opts.identity.clone(), opts.lease_ttl);
            std::thread::Builder::new()
                .name("qlam-lease-renewer".into())
                .spawn(move || renew_loop(&path, &token, &identity, ttl, &state, &stopped))
        };
        let mut lease = Lease {
            path,
            token,
            state,
            stop: Some(stop),
            renewer: None,
        };
        match renewer {
            Ok(handle) => {
                lease.renewer = Some(handle);
                Ok(lease)
            }
            Err(e) => {
                let msg = format!(
                    "cannot start the lease renewer for {}: {e}",
                    lease.path.display()
                );
                drop(lease); // releases the lease file
                Err(Error::store(msg).with_source(e))
            }
        }
    }

    fn still_held(&self) -> bool {
        if self.state.lost.load(Ordering::SeqCst) {
            return false;
        }
        if now_ms() >= self.state.expires_at_ms.load(Ordering::SeqCst) {
            return false;
        }
        match read_lease(&self.path) {
            Ok(seen) if seen.carries(&self.token) => true,
            Ok(_) => {
                self.state.lost.store(true, Ordering::SeqCst);
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.state.lost.store(true, Ordering::SeqCst);
                false
            }
            // Cannot tell (I/O error): do not claim it.
            Err(_) => false,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.renewer.take() {
            let _ = handle.join();
        }
        // Remove the lease only if it still carries our token: after a break it is someone else's.
        if read_lease(&self.path).is_ok_and(|seen| seen.carries(&self.token)) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One try at taking the lease.
fn try_take(path: &Path, opts: &LockOptions, token: &str) -> Result<Attempt> {
    let store_err = |what: &str, e: io::Error| {
        Error::store(format!(
            "cannot {what} the lease file {}: {e}",
            path.display()
        ))
        .with_source(e)
    };
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    match created {
        Ok(mut file) => {
            let record = new_record(&opts.identity, token, opts.lease_ttl);
            let written = file
                .write_all(&serde_json::to_vec(&record).unwrap_or_default())
                .and_then(|()| file.sync_all());
            if let Err(e) = written {
                // Remove the file we created, not one that may have replaced it meanwhile.
                let created = file.metadata().map(|m| (m.dev(), m.ino()));
                drop(file);
                let still_there = created
                    .is_ok_and(|c| read_lease(path).is_ok_and(|seen| (seen.dev, seen.ino) == c));
                if still_there {
                    let _ = fs::remove_file(path);
                }
                return Err(store_err("write", e));
            }
            drop(file);
            // Read back: had we stalled past the TTL between create and write, the empty file
            // could have been broken and replaced, and our write gone to a discarded inode.
            return Ok(match read_lease(path) {
                Ok(seen) if seen.carries(token) => Attempt::Taken(record.expires_at_unix_ms),
                _ => Attempt::Retry,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(store_err("create", e)),
    }
    let seen = match read_lease(path) {
        Ok(seen) => seen,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Retry),
        Err(e) => match observe_unreadable(path) {
            Ok(seen) => seen,
            Err(e2) if e2.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Retry),
            Err(_) => return Err(store_err("read", e)),
        },
    };
    let now = now_ms();
    match &seen.record {
        // Ours: a break linked it back after our read-back missed it.
        Some(r) if r.token == token && r.expires_at_unix_ms > now => {
            Ok(Attempt::Taken(r.expires_at_unix_ms))
        }
        Some(r) if is_stale(r, &opts.identity, now) => {
            break_stale(path, &seen).map_err(|e| store_err("break", e))?;
            Ok(Attempt::Retry)
        }
        Some(r) => Ok(Attempt::Busy(Some(r.clone()))),
        None => {
            // Unparseable: a writer died between create and write, or is still writing.
            let age_ns = i128::from(now) * 1_000_000 - seen.mtime_ns;
            if age_ns > i128::from(ms(opts.lease_ttl + CLOCK_SKEW)) * 1_000_000 {
                break_stale(path, &seen).map_err(|e| store_err("break", e))?;
                Ok(Attempt::Retry)
            } else {
                Ok(Attempt::Busy(None))
            }
        }
    }
}

fn new_record(identity: &LockIdentity, token: &str, ttl: Duration) -> LeaseRecord {
    LeaseRecord {
        host: identity.host.clone(),
        pid: identity.pid,
        boot_id: identity.boot_id.clone(),
        job_id: identity.job_id.clone(),
        token: token.to_owned(),
        expires_at_unix_ms: now_ms().saturating_add(ms(ttl)),
    }
}

/// A lease may be broken when it expired (with margin for clock skew), or when its owner ran
/// on this very boot of this node and is gone. A live pid may be a reused one: then we wait for
/// the expiry, which is only slower. (A process in another pid namespace on this node looks
/// dead; such setups must keep one namespace per store, as batch containers normally do.)
fn is_stale(r: &LeaseRecord, me: &LockIdentity, now_ms: u64) -> bool {
    if r.expires_at_unix_ms.saturating_add(ms(CLOCK_SKEW)) < now_ms {
        return true;
    }
    r.host == me.host && !r.boot_id.is_empty() && r.boot_id == me.boot_id && pid_is_gone(r.pid)
}

fn pid_is_gone(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None) == Err(Errno::ESRCH)
        }
        _ => false,
    }
}

/// Break the lease at `path` if it is still the file `judged` describes.
fn break_stale(path: &Path, judged: &Observed) -> io::Result<()> {
    let aside = private_name(path, "stale");
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let moved = read_lease(&aside).or_else(|_| observe_unreadable(&aside));
    if moved.as_ref().is_ok_and(|m| m == judged) {
        return fs::remove_file(&aside).or_else(ignore_not_found);
    }
    // Not what we judged stale: a renewal or a new owner got in between. Put it back unless a
    // lease was created meanwhile (link fails then); if the filesystem has no hard links, the
    // owner finds its lease gone and gives it up.
    let _ = fs::hard_link(&aside, path);
    fs::remove_file(&aside).or_else(ignore_not_found)
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn read_lease(path: &Path) -> io::Result<Observed> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    let mut bytes = Vec::new();
    file.take(MAX_LEASE_BYTES).read_to_end(&mut bytes)?;
    let mut seen = observed(&meta);
    seen.record = serde_json::from_slice(&bytes).ok();
    Ok(seen)
}

/// A lease file we cannot open (a symlink, say): judge it by what `lstat` shows.
fn observe_unreadable(path: &Path) -> io::Result<Observed> {
    fs::symlink_metadata(path).map(|m| observed(&m))
}

fn observed(meta: &fs::Metadata) -> Observed {
    Observed {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        record: None,
    }
}

fn describe_holder(holder: Option<&LeaseRecord>) -> String {
    match holder {
        None => "its owner has not finished writing it".to_owned(),
        Some(r) => {
            let job = r
                .job_id
                .as_deref()
                .map(|j| format!(", job {j}"))
                .unwrap_or_default();
            let left = r.expires_at_unix_ms.saturating_sub(now_ms()) as f64 / 1000.0;
            format!(
                "held by pid {} on {}{job}, valid for another {left:.0} s unless renewed",
                r.pid, r.host
            )
        }
    }
}

fn renew_loop(
    path: &Path,
    token: &str,
    identity: &LockIdentity,
    ttl: Duration,
    state: &LeaseState,
    stopped: &mpsc::Receiver<()>,
) {
    let period = (ttl / 3).max(Duration::from_millis(1));
    loop {
        match stopped.recv_timeout(period) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        match renew_once(path, token, identity, ttl) {
            Ok(Some(expires)) => state.expires_at_ms.store(expires, Ordering::SeqCst),
            Ok(None) => {
                state.lost.store(true, Ordering::SeqCst);
                return;
            }
            // A transient failure: try again next period while the lease is still valid.
            Err(_) => {
                if now_ms() >= state.expires_at_ms.load(Ordering::SeqCst) {
                    state.lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// Rewrite our record with a new expiry; Ok(None) if the lease is no longer ours.
fn renew_once(
    path: &Path,
    token: &str,
    identity: &LockIdentity,
    ttl: Duration,
) -> io::Result<Option<u64>> {
    match read_lease(path) {
        Ok(seen) if seen.carries(token) => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let record = new_record(identity, token, ttl);
    let tmp = private_name(path, "tmp");
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(&record).unwrap_or_default())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    match written {
        Ok(()) => Ok(Some(record.expires_at_unix_ms)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Exercise every step a lease needs on private names beside the lock file.
fn probe_lease(lock_path: &Path) -> std::result::Result<(), String> {
    let first = private_name(&lease_path(lock_path), "probe");
    let second = private_name(&lease_path(lock_path), "probe");
    let run = || -> io::Result<()> {
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&first)
        };
        let mut f = create()?;
        f.write_all(b"{}")?;
        f.sync_all()?;
        drop(f);
        match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Ok(_) => {
                return Err(io::Error::other(
                    "O_EXCL create succeeded on an existing file",
                ));
            }
            Err(e) => return Err(e),
        }
        fs::rename(&first, &second)?;
        if fs::read(&second)? != b"{}" {
            return Err(io::Error::other("a renamed file lost its contents"));
        }
        fs::remove_file(&second)
    };
    let result = run().map_err(|e| e.to_string());
    let _ = fs::remove_file(&first);
    let _ = fs::remove_file(&second);
    result
}

/// One non-blocking OFD lock attempt on `path` (for `doctor`'s cross-process test):
/// `Ok(Some(file))` taken (held until the file is dropped), `Ok(None)` held by someone else,
/// `Err` when the filesystem refuses locks.
pub fn try_ofd_once(path: &Path) -> std::result::Result<Option<File>, String> {
    let file = open_lock_file(path).map_err(|e| e.message().to_string())?;
    match ofd_try_lock(&file, None) {
        Ok(true) => Ok(Some(file)),
        Ok(false) => Ok(None),
        Err(e) => Err(format!("{e} ({})", e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_record(path: &Path, r: &LeaseRecord) {
        fs::write(path, serde_json::to_vec(r).unwrap()).unwrap();
    }

    fn record(token: &str, expires_at_unix_ms: u64) -> LeaseRecord {
        LeaseRecord {
            host: "elsewhere".into(),
            pid: 1,
            boot_id: "b".into(),
            job_id: None,
            token: token.into(),
            expires_at_unix_ms,
        }
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn method_names_round_trip() {
        for m in LockMethod::ALL {
            assert_eq!(m.to_string().parse::<LockMethod>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        let err = "fcntl".parse::<LockMethod>().unwrap_err();
        assert!(err.contains("auto, ofd, flock, lease"), "{err}");
    }

    /// Two breakers judged the same stale record; the first breaks it and takes the lease;
    /// the second must not destroy the new lease.
    #[test]
    fn late_breaker_puts_a_fresh_lease_back() {
        let dir = tempfile::tempdir().unwrap();
        let lease = dir.path().join("s.lock.lease");
        write_record(&lease, &record("old", 1));
        let judged_by_both = read_lease(&lease).unwrap();

        break_stale(&lease, &judged_by_both).unwrap();
        assert!(!lease.exists());
        write_record(&lease, &record("new", u64::MAX));
        let fresh = read_lease(&lease).unwrap();

        break_stale(&lease, &judged_by_both).unwrap();
        let after = read_lease(&lease).unwrap();
        assert_eq!(
            after, fresh,
            "the late breaker must leave the new lease in place"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no leftovers");
    }

    /// A renewal between a breaker's read and its rename makes a new inode: not broken.
    #[test]
    fn renewal_between_read_and_break_survives() {
        let dir = tempfile::tempdir().unwrap();
        let lease = dir.path().join("s.lock.lease");
        write_record(&lease, &record("mine", 1));
        let judged = read_lease(&lease).unwrap();
        let tmp = dir.path().join("tmp");
        write_record(&tmp, &record("mine", u64::MAX));
        fs::rename(&tmp, &lease).unwrap();
        break_stale(&lease, &judged).unwrap();
        assert_eq!(
            read_lease(&lease)
                .unwrap()
                .record
                .unwrap()
                .expires_at_unix_ms,
            u64::MAX
        );
    }

    #[test]
    fn staleness_rules() {
        let me = LockIdentity {
            host: nix::unistd::gethostname()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            pid: std::process::id(),
            boot_id: "this-boot".into(),
            job_id: None,
        };
        let now = now_ms();
        let live_elsewhere = record("t", now + 60_000);
        assert!(!is_stale(&live_elsewhere, &me, now));
        assert!(
            !is_stale(&record("t", now - 1_000), &me, now),
            "within the skew margin"
        );
        assert!(is_stale(&record("t", now - 3_000), &me, now));
        let mut alive_here = live_elsewhere.clone();
        (alive_here.host, alive_here.boot_id, alive_here.pid) =
            (me.host.clone(), me.boot_id.clone(), me.pid);
        assert!(!is_stale(&alive_here, &me, now));
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait_with_output().unwrap();
        let mut dead_here = alive_here.clone();
        dead_here.pid = dead_pid;
        assert!(is_stale(&dead_here, &me, now));
        let mut other_boot = dead_here.clone();
        other_boot.boot_id = "another-boot".into();
        assert!(
            !is_stale(&other_boot, &me, now),
            "a pid from another boot proves nothing"
        );
        let mut other_host = dead_here;
        other_host.host = "elsewhere".into();
        assert!(
            !is_stale(&other_host, &me, now),
            "a pid on another host proves nothing"
        );
    }
}
