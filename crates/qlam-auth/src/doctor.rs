//! `doctor`: checks a user or admin runs when something is off — configuration, the store's
//! ownership and modes, the filesystem under it and whether its locks are coherent, which
//! lock method `auto` uses and why, IdP reachability through the configured proxy and CA,
//! and clock skew against the IdP's `Date` header. Each check says what to do when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{self, Overrides, Settings};
use crate::context::Ctx;
use crate::http::HttpClient;
use crate::session::Session;
use crate::store::mounts::{self, LockCoherence};
use crate::store::{self, LockMethod};

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but deserves attention.
    Warn,
    /// Broken.
    Fail,
    /// Not run (an earlier check failed).
    Skip,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// Outcome.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do.
    pub advice: Option<String>,
}

/// All checks.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// In the order run.
    pub checks: Vec<Check>,
    /// The method `lock = "auto"` uses for this store.
    pub auto_lock_method: String,
    /// Why.
    pub auto_lock_reason: String,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.level == Level::Fail)
    }
}

fn check(
    name: &'static str,
    level: Level,
    detail: impl Into<String>,
    advice: Option<String>,
) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        advice,
    }
}

/// Options for [`run`].
pub struct DoctorOptions {
    /// The binary, for the cross-process lock test.
    pub exe: PathBuf,
    /// The store directory as a second mount or node sees it (cross-mount lock test).
    pub peer_path: Option<PathBuf>,
    /// Skip network checks.
    pub offline: bool,
}

/// Run every check.
pub fn run(ctx: &Ctx, overrides: &Overrides, opts: &DoctorOptions) -> Report {
    let mut checks = Vec::new();
    let settings = match config::load(ctx, overrides) {
        Ok(s) => {
            let files = if s.files_read.is_empty() {
                "environment only".to_string()
            } else {
                s.files_read
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            checks.push(check(
                "config",
                Level::Ok,
                format!(
                    "context {:?}, provider {:?} ({}), IdP {}; from {files}",
                    s.context,
                    s.provider_name,
                    s.provider
                        .grant_type
                        .map_or("grant not set", |g| g.as_str()),
                    s.provider.auth_base_url
                ),
                None,
            ));
            Some(s)
        }
        Err(e) => {
            checks.push(check(
                "config",
                Level::Fail,
                e.message(),
                e.hint().map(str::to_string),
            ));
            None
        }
    };
    let (auto_method, auto_reason) = match &settings {
        Some(s) => {
            let session = Session::new(ctx.clone(), s.clone());
            store_checks(&session, &mut checks);
            let auto = lock_checks(&session, opts, &mut checks);
            if !opts.offline {
                network_checks(ctx, s, &mut checks);
            }
            auto
        }
        None => (
            "unknown".into(),
            "the configuration could not be loaded".into(),
        ),
    };
    Report {
        checks,
        auto_lock_method: auto_method,
        auto_lock_reason: auto_reason,
    }
}

fn store_checks(session: &Session, checks: &mut Vec<Check>) {
    let st = &session.store;
    if !st.dir.exists() {
        checks.push(check(
            "store",
            Level::Warn,
            format!("{} does not exist yet", st.dir.display()),
            Some(
                "run `qlam-hpc login` (or `qlam-hpc token` for an M2M provider) to create it"
                    .into(),
            ),
        ));
        return;
    }
    match st.read() {
        Ok(Some(f)) => {
            let now = session.ctx.now_unix();
            let left = f.expires_at_unix().map(|e| e - now);
            let (level, detail) = match left {
                Some(l) if l > 0.0 => (
                    Level::Ok,
                    format!(
                        "{} (0600, dir 0700); access token valid for {:.0} s",
                        st.file.display(),
                        l
                    ),
                ),
                Some(_) => (
                    Level::Warn,
                    format!(
                        "{}: the access token has expired; the next `token` refreshes it",
                        st.file.display()
                    ),
                ),
                None => (
                    Level::Ok,
                    format!("{} (no expiry recorded)", st.file.display()),
                ),
            };
            checks.push(check("store", level, detail, None));
        }
        Ok(None) => checks.push(check(
            "store",
            Level::Warn,
            format!("no credentials at {}", st.file.display()),
            Some("run `qlam-hpc login` on a login node".into()),
        )),
        Err(e) => checks.push(check(
            "store",
            Level::Fail,
            e.message(),
            e.hint().map(str::to_string),
        )),
    }
}

fn lock_checks(
    session: &Session,
    opts: &DoctorOptions,
    checks: &mut Vec<Check>,
) -> (String, String) {
    let st = &session.store;
    let dir = if st.dir.exists() {
        st.dir.clone()
    } else {
        session.settings.qsh.config_dir.clone()
    };
    let mount = mounts::current_mount(&dir);
    let coherence = mount.as_ref().map(mounts::coherence);
    let fs_detail = match (&mount, &coherence) {
        (Some(m), Some(c)) => format!(
            "{} on {} ({} from {}): {}",
            dir.display(),
            m.mount_point.display(),
            m.fstype,
            m.source,
            c.reason()
        ),
        _ => format!("{}: mount not found in /proc/self/mountinfo", dir.display()),
    };
    let (level, advice) = match &coherence {
        Some(LockCoherence::Cluster(_)) => (Level::Ok, None),
        Some(LockCoherence::Local(_)) => (
            Level::Warn,
            Some("fine on a single machine; on a cluster keep ~/.qsh on the shared filesystem the compute nodes see".into()),
        ),
        Some(LockCoherence::NodeLocal(_)) => (
            Level::Warn,
            Some("qlam-hpc's `auto` uses lease files here; tell the admins if jobs on many nodes share this store (a mount with coherent locks is faster)".into()),
        ),
        Some(LockCoherence::Refused(_)) => (Level::Warn, Some("`auto` falls back to lease files here".into())),
        _ => (Level::Warn, Some("run `qlam-hpc doctor --nodes` inside a 2-node allocation to test locks across nodes".into())),
    };
    checks.push(check("filesystem", level, fs_detail, advice));

    if !st.dir.exists() {
        return (
            "ofd".into(),
            "the store does not exist yet; `auto` decides when it is created".into(),
        );
    }
    let probe = store::probe(&st.lock_file);
    let show = |r: &std::result::Result<(), String>| match r {
        Ok(()) => "works".to_string(),
        Err(e) => format!("fails: {e}"),
    };
    checks.push(check(
        "lock calls",
        if probe.ofd.is_ok() || probe.lease.is_ok() {
            Level::Ok
        } else {
            Level::Fail
        },
        format!(
            "OFD fcntl {}, flock {}, lease file {}",
            show(&probe.ofd),
            show(&probe.flock),
            show(&probe.lease)
        ),
        (probe.ofd.is_err() && probe.lease.is_err())
            .then(|| "the store directory must be writable".to_string()),
    ));
    if probe.ofd.is_ok() {
        checks.push(cross_process_test(
            &st.lock_file,
            opts,
            session.settings.lock,
        ));
    }
    let (method, reason) = if matches!(coherence, Some(LockCoherence::NodeLocal(_))) {
        (
            LockMethod::Lease,
            format!(
                "the mount makes fcntl locks node-local ({})",
                coherence.as_ref().map(|c| c.reason()).unwrap_or_default()
            ),
        )
    } else if let Err(e) = &probe.ofd {
        (LockMethod::Lease, format!("OFD locks fail here ({e})"))
    } else {
        (
            LockMethod::Ofd,
            "OFD fcntl locks work on this filesystem".into(),
        )
    };
    let configured = session.settings.lock;
    let reason = if configured == LockMethod::Auto {
        reason
    } else {
        format!(
            "{reason}; but the configuration sets lock = \"{configured}\", which is used instead"
        )
    };
    (method.to_string(), reason)
}

/// Hold an OFD lock here and let a second process (optionally through `peer_path`, the same
/// store seen through another mount) try to take it: it must see the conflict.
fn cross_process_test(lock_file: &Path, opts: &DoctorOptions, configured: LockMethod) -> Check {
    let held = match store::lock::try_ofd_once(lock_file) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return check(
                "lock coherence",
                Level::Skip,
                "the store lock is busy right now; try again",
                None,
            );
        }
        Err(e) => {
            return check(
                "lock coherence",
                Level::Warn,
                format!("cannot take an OFD lock: {e}"),
                None,
            );
        }
    };
    let peer_file = match &opts.peer_path {
        Some(p) => p.join(lock_file.file_name().unwrap_or_default()),
        None => lock_file.to_path_buf(),
    };
    let out = Command::new(&opts.exe)
        .args([crate::hooks::INTERNAL_CMD, "lock-probe"])
        .arg(&peer_file)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    drop(held);
    let via = opts
        .peer_path
        .as_ref()
        .map(|p| format!(" through {}", p.display()))
        .unwrap_or_default();
    match out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) {
        Ok(s) if s == "busy" => check("lock coherence", Level::Ok, format!("a second process{via} sees the lock held by this one"), None),
        Ok(s) if s == "taken" && configured == LockMethod::Lease => check(
            "lock coherence",
            Level::Warn,
            format!("a second process{via} took the OFD lock this one holds: fcntl locks are not coherent here"),
            Some("lock = \"lease\" is configured, which does not rely on them; tell the admins".into()),
        ),
        Ok(s) if s == "taken" => check(
            "lock coherence",
            Level::Fail,
            format!("a second process{via} took the lock this one holds: locks are not coherent here"),
            Some("set lock = \"lease\" in [store] of the qlam-hpc config (or QLAM_LOCK=lease), and tell the admins".into()),
        ),
        Ok(s) => check("lock coherence", Level::Warn, format!("the second process could not test the lock: {s}"), None),
        Err(e) => check("lock coherence", Level::Warn, format!("cannot run the second process: {e}"), None),
    }
}

/// The peer side of the cross-process test: "busy", "taken" or an error line.
pub fn lock_probe_peer(path: &Path) -> String {
    match store::lock::try_ofd_once(path) {
        Ok(None) => "busy".into(),
        Ok(Some(_)) => "taken".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn network_checks(ctx: &Ctx, s: &Settings, checks: &mut Vec<Check>) {
    let base = &s.provider.auth_base_url;
    let proxy =
        crate::http::proxy_for(ctx, base).map_or("no proxy".to_string(), |p| format!("proxy {p}"));
    let http = match HttpClient::new(ctx, &s.http, base) {
        Ok(h) => h,
        Err(e) => {
            checks.push(check(
                "idp",
                Level::Fail,
                e.message(),
                e.hint().map(str::to_string),
            ));
            return;
        }
    };
    let t = Instant::now();
    match crate::discovery::fetch(&http, base) {
        Ok(d) => checks.push(check(
            "idp",
            Level::Ok,
            format!(
                "{base} answered discovery in {} ms ({proxy}); issuer {}",
                t.elapsed().as_millis(),
                d.issuer
            ),
            None,
        )),
        Err(f) => {
            let e = f.into_error(&format!("reaching {base} ({proxy})"));
            checks.push(check(
                "idp",
                Level::Fail,
                e.message(),
                e.hint().map(str::to_string),
            ));
            return;
        }
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        base.trim_end_matches('/')
    );
    let now = ctx.now_unix();
    match http.server_date(&url) {
        Ok(Some(date)) => match chrono::DateTime::parse_from_rfc2822(&date) {
            Ok(server) => {
                let skew = now - server.timestamp() as f64;
                let level = if skew.abs() > 300.0 {
                    Level::Fail
                } else if skew.abs() > 30.0 {
                    Level::Warn
                } else {
                    Level::Ok
                };
                checks.push(check(
                    "clock",
                    level,
                    format!("this clock is {skew:+.0} s from the IdP's"),
                    (level != Level::Ok).then(|| "token expiry is computed from this clock: ask the admins to fix time sync (chrony/ntp)".into()),
                ));
            }
            Err(_) => checks.push(check(
                "clock",
                Level::Skip,
                format!("the IdP's Date header {date:?} is not a date"),
                None,
            )),
        },
        Ok(None) => checks.push(check(
            "clock",
            Level::Skip,
            "the IdP sends no Date header",
            None,
        )),
        Err(f) => checks.push(check("clock", Level::Skip, f.describe(), None)),
    }
}

/// One side of `doctor --nodes`: task 0 (`SLURM_PROCID`) holds an OFD lock on `path` for a few
/// seconds and announces it with a marker file; task 1 waits for the marker and tries the
/// lock. Returns the line task 1 reports ("coherent" or "NOT coherent ...").
pub fn node_lock_test(path: &Path, procid: u32) -> std::result::Result<String, String> {
    let mut marker = path.as_os_str().to_owned();
    marker.push(".doctor-held");
    let marker = PathBuf::from(marker);
    if procid == 0 {
        let held = store::lock::try_ofd_once(path)?.ok_or("the store lock is busy; try again")?;
        std::fs::write(&marker, b"held\n").map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_secs(6));
        let _ = std::fs::remove_file(&marker);
        drop(held);
        return Ok(String::new());
    }
    let until = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        if Instant::now() > until {
            return Err(
                "task 0 never announced its lock (is the store on a filesystem both nodes share?)"
                    .into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match store::lock::try_ofd_once(path)? {
        None => Ok("coherent: the lock held on the other node is seen here".into()),
        Some(_) => Ok(
            "NOT coherent: the lock held on the other node is invisible here; use lock = \"lease\""
                .into(),
        ),
    }
}
