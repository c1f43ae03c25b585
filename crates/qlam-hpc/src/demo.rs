//! `demo`: the whole story on one machine. Starts the bundled test IdP on loopback with a
//! throwaway store, logs in (auto-approved), then runs storms of array tasks — each a real
//! `qlam-hpc token` process — first with a fresh token, then when a refresh is due, and
//! reports what the IdP saw. Tokens are never printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qlam_auth::config::{self, Overrides};
use qlam_auth::env_vars::EnvVars;
use qlam_auth::flows::device::Quiet;
use qlam_auth::session::{LoginObserver, Session};
use qlam_auth::{Ctx, Error, Secret};
use qlam_test_idp::{Idp, IdpConfig};

use crate::output::Printer;

struct DemoObserver;
impl qlam_auth::flows::device::PollObserver for DemoObserver {}
impl LoginObserver for DemoObserver {
    fn device_authorization(&mut self, _auth: &qlam_auth::flows::device::DeviceAuthorization) {}
}

struct Storm {
    ok: usize,
    failed: BTreeMap<i32, usize>,
    distinct_tokens: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

fn storm(
    exe: &std::path::Path,
    env: &BTreeMap<String, String>,
    tasks: usize,
    min_ttl: &str,
) -> Result<Storm, Error> {
    let start = Instant::now();
    let mut children = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let child = Command::new(exe)
            .args(["token", "--min-ttl", min_ttl])
            .env_clear()
            .envs(env)
            .env(EnvVars::SLURM_JOB_ID, "4242")
            .env(EnvVars::SLURM_ARRAY_TASK_ID, i.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::internal(format!("cannot start task {i}: {e}")))?;
        children.push((Instant::now(), child));
    }
    let mut ok = 0;
    let mut failed = BTreeMap::new();
    let mut tokens = BTreeSet::new();
    let mut latencies = Vec::with_capacity(tasks);
    // Note each task's exit as it happens (spawn to exit, CPU queueing on this machine
    // included), then read its output; a token is far smaller than a pipe's buffer.
    let mut pending: Vec<(Instant, std::process::Child)> = children;
    let mut done = Vec::with_capacity(tasks);
    while !pending.is_empty() {
        let mut i = 0;
        let mut progressed = false;
        while i < pending.len() {
            let finished = pending[i]
                .1
                .try_wait()
                .map_err(|e| Error::internal(format!("waiting for a task: {e}")))?;
            if finished.is_some() {
                let (started, child) = pending.swap_remove(i);
                latencies.push(started.elapsed());
                done.push(child);
                progressed = true;
            } else {
                i += 1;
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for child in done {
        let out = child
            .wait_with_output()
            .map_err(|e| Error::internal(format!("reading a task's output: {e}")))?;
        if out.status.success() {
            ok += 1;
            tokens.insert(Secret::new(String::from_utf8_lossy(&out.stdout).trim()).fingerprint());
        } else {
            *failed.entry(out.status.code().unwrap_or(-1)).or_insert(0) += 1;
        }
    }
    latencies.sort();
    Ok(Storm {
        ok,
        failed,
        distinct_tokens: tokens.len(),
        wall: start.elapsed(),
        latencies,
    })
}

fn pct(l: &[Duration], p: f64) -> String {
    if l.is_empty() {
        return "-".into();
    }
    let i = ((l.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.1} ms", l[i].as_secs_f64() * 1e3)
}

/// Run the demo.
pub(crate) fn run(tasks: usize, dir: Option<PathBuf>, printer: &Printer) -> Result<i32, Error> {
    let tasks = tasks.clamp(1, 5000);
    let (root, _guard) = match dir {
        Some(d) => (d, None),
        None => {
            let t = std::env::temp_dir().join(format!("qlam-hpc-demo-{}", std::process::id()));
            (t.clone(), Some(RemoveOnDrop(t)))
        }
    };
    qlam_auth::store::fsutil::create_private_dir(&root)?;
    let access_ttl = 10;
    let idp = Idp::start(IdpConfig {
        access_token_ttl: access_ttl,
        auto_approve: true,
        device_interval: Some(1),
        ..IdpConfig::default()
    })
    .map_err(|e| Error::internal(format!("cannot start the test IdP: {e}")))?;
    printer.info(&format!(
        "test IdP listening at {} (loopback only)",
        idp.base_url()
    ));

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(path) = std::env::var("PATH") {
        env.insert("PATH".into(), path);
    }
    for (k, v) in [
        ("HOME", root.display().to_string()),
        ("QSH_CONFIG_DIR", root.join("qsh").display().to_string()),
        ("XDG_CONFIG_HOME", root.join("config").display().to_string()),
        (
            "QLAM_HPC_SITE_CONFIG",
            root.join("no-site-config.toml").display().to_string(),
        ),
        (
            "QLAM_HPC_RUNTIME_DIR",
            root.join("run").display().to_string(),
        ),
        ("QLAM_AUTH_BASE_URL", idp.base_url()),
        (
            "QLAM_CLIENT_ID",
            qlam_test_idp::DEFAULT_CLIENT_ID.to_string(),
        ),
        ("QLAM_GRANT_TYPE", "device_code".to_string()),
    ] {
        env.insert(k.into(), v);
    }
    let ctx = Ctx::from_env_map(env.clone());
    let settings = config::load(&ctx, &Overrides::default())?;
    let session = Session::new(ctx, settings);

    let t = Instant::now();
    session.login_device(&mut DemoObserver)?;
    let _ = Quiet;
    printer.info(&format!(
        "logged in with the device flow (auto-approved) in {:.1} s; store: {}",
        t.elapsed().as_secs_f64(),
        session.store.file.display()
    ));
    let exe = std::env::current_exe()
        .map_err(|e| Error::internal(format!("cannot find this program: {e}")))?;

    idp.reset_counters();
    printer.info(&format!(
        "\nstorm 1: {tasks} array tasks run `qlam-hpc token` while the token is fresh"
    ));
    let s1 = storm(&exe, &env, tasks, "2s")?;
    let c1 = idp.counters();
    let mut out = String::new();
    out.push_str(&summary(
        "storm 1 (token fresh)",
        tasks,
        &s1,
        c1.token_requests,
        c1.refresh_requests,
    ));

    // Let the token get close to expiry, then ask for more than it has left.
    let until_due = session
        .store
        .read()?
        .and_then(|f| f.expires_at_unix())
        .map_or(0.0, |e| {
            e - session.ctx.now_unix() - access_ttl as f64 / 2.0 + 0.5
        });
    if until_due > 0.0 {
        printer.info(&format!(
            "\nwaiting {until_due:.0} s until the {access_ttl} s token needs a refresh…"
        ));
        std::thread::sleep(Duration::from_secs_f64(until_due));
    }
    idp.set_access_token_ttl(3600);
    idp.reset_counters();
    printer.info(&format!(
        "storm 2: {tasks} array tasks run `qlam-hpc token --min-ttl 5m` when a refresh is due"
    ));
    let s2 = storm(&exe, &env, tasks, "5m")?;
    let c2 = idp.counters();
    out.push_str(&summary(
        "storm 2 (refresh due)",
        tasks,
        &s2,
        c2.token_requests,
        c2.refresh_requests,
    ));
    let alive = session.ensure(Duration::from_secs(60), true).is_ok();
    out.push_str(&format!(
        "\nlogin still alive at the IdP after the storms: {}\nIdP refresh-token families revoked: {}\n",
        if alive { "yes" } else { "NO" },
        idp.counters().families_revoked
    ));
    printer.result(&out);
    let good = s1.ok == tasks
        && s2.ok == tasks
        && c1.token_requests == 0
        && c2.refresh_requests == 1
        && s2.distinct_tokens == 1
        && alive;
    Ok(if good { 0 } else { 1 })
}

fn summary(title: &str, tasks: usize, s: &Storm, token_requests: u64, refreshes: u64) -> String {
    let failed: Vec<String> = s
        .failed
        .iter()
        .map(|(c, n)| format!("{n} with exit {c}"))
        .collect();
    format!(
        "\n{title}\n  tasks succeeded      {}/{tasks}{}\n  distinct tokens      {}\n  IdP token requests   {token_requests} (refreshes: {refreshes})\n  wall time            {:.2} s\n  task spawn-to-exit   p50 {}, p95 {}, max {}\n",
        s.ok,
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        },
        s.distinct_tokens,
        s.wall.as_secs_f64(),
        pct(&s.latencies, 0.5),
        pct(&s.latencies, 0.95),
        pct(&s.latencies, 1.0),
    )
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
