//! The process context: environment, home, host, ids and clock, captured once by the binary
//! and passed down. Library code reads the environment only through a [`Ctx`], so tests build
//! one from a map instead of mutating the real environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::env_vars::EnvVars;

/// What the library knows about the process it runs in.
#[derive(Clone, Debug)]
pub struct Ctx {
    env: BTreeMap<String, String>,
    /// The user's home directory.
    pub home: PathBuf,
    /// This host's name.
    pub hostname: String,
    /// This process's id.
    pub pid: u32,
    /// The real user id.
    pub uid: u32,
    /// Added to the system clock (tests use it to move time forward).
    pub clock_offset_secs: i64,
}

impl Ctx {
    /// Capture the real process context. Called once, by the binary.
    pub fn from_process() -> Ctx {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::from_env_map(env)
    }

    /// A context with the given environment; home from `HOME`, host and ids from the system.
    pub fn from_env_map(env: BTreeMap<String, String>) -> Ctx {
        let uid = nix::unistd::getuid().as_raw();
        let home = env
            .get(EnvVars::HOME)
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.dir)
            })
            .unwrap_or_else(|| PathBuf::from("/"));
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        Ctx {
            env,
            home,
            hostname,
            pid: std::process::id(),
            uid,
            clock_offset_secs: 0,
        }
    }

    /// A context from `(name, value)` pairs (for tests and child processes).
    pub fn with_vars<I, K, V>(vars: I) -> Ctx
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_env_map(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// An environment variable, treating empty values as unset.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The whole environment (for child processes).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Set a variable in this context (not in the process).
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.env.insert(name.to_string(), value.to_string());
    }

    /// Remove a variable from this context (not from the process).
    pub fn remove_var(&mut self, name: &str) {
        self.env.remove(name);
    }

    /// Now, by this context's clock.
    pub fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        if self.clock_offset_secs >= 0 {
            now + Duration::from_secs(self.clock_offset_secs as u64)
        } else {
            now - Duration::from_secs(self.clock_offset_secs.unsigned_abs())
        }
    }

    /// Now as fractional unix seconds.
    pub fn now_unix(&self) -> f64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    /// The batch job this process runs in, if any (`SLURM_JOB_ID` or `PBS_JOBID`).
    pub fn job_id(&self) -> Option<String> {
        let slurm =
            self.var(EnvVars::SLURM_JOB_ID)
                .map(|j| match self.var(EnvVars::SLURM_ARRAY_TASK_ID) {
                    Some(t) => format!("{j}_{t}"),
                    None => j.to_string(),
                });
        slurm.or_else(|| self.var(EnvVars::PBS_JOBID).map(str::to_string))
    }

    /// This boot's id (Linux), used to tell a dead lease owner from a live one.
    pub fn boot_id(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The node-local directory for lock files: `$QLAM_HPC_RUNTIME_DIR`, else
    /// `$XDG_RUNTIME_DIR/qlam-hpc`, else `/tmp/qlam-hpc-<uid>`.
    pub fn runtime_dir(&self) -> PathBuf {
        if let Some(d) = self.var(EnvVars::QLAM_HPC_RUNTIME_DIR) {
            return PathBuf::from(d);
        }
        if let Some(d) = self.var(EnvVars::XDG_RUNTIME_DIR) {
            return PathBuf::from(d).join("qlam-hpc");
        }
        PathBuf::from(format!("/tmp/qlam-hpc-{}", self.uid))
    }
}
