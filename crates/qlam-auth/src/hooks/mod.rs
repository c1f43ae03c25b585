//! Scheduler integration (DESIGN §7): the root-side hooks (Slurm Prolog/Epilog, PBS
//! prologue/epilogue) look up the job's user and do all user-file work in a child process
//! that has dropped to that user (uid, gid, supplementary groups); the user-side pieces
//! stage an access-token-only copy of the credentials in QLAM Core's layout under a
//! node-local, job-private directory, keep it renewed for long jobs, and remove it.

/// The first argument of qlam-hpc's internal steps (the hooks' user side, the renewer,
/// doctor's lock probes): not part of the documented command line.
pub const INTERNAL_CMD: &str = "__internal";

pub mod pbs;
pub mod privs;
pub mod slurm;
pub mod stage;

use std::ffi::CString;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The job's owner, as the system knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

impl JobUser {
    /// Look up `uid` in the password and group databases.
    pub fn lookup(uid: u32) -> Result<JobUser> {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(|e| Error::config(format!("cannot look up uid {uid}: {e}")))?
            .ok_or_else(|| {
                Error::config(format!("uid {uid} has no password entry on this node"))
            })?;
        let cname = CString::new(user.name.clone())
            .map_err(|_| Error::config("user name with a NUL byte"))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok(JobUser {
            name: user.name,
            uid,
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
            shell: user.shell,
        })
    }
}

/// What a hook did, for the scheduler's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Work done; a line for the log.
    Done(String),
    /// Nothing to do for this job (e.g. the user does not use QLAM); a line for the log.
    Skipped(String),
}
