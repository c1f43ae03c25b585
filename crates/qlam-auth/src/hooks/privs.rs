//! Running a child process as another user: supplementary groups, then gid, then uid, all
//! set in the child before exec, so a root hook never touches a user's files as root (root is
//! squashed on NFS anyway, and a user controls the paths under their own directories).

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::JobUser;

/// Make `cmd` run as `user`. When the current process already is that user, nothing changes;
/// otherwise the process must be root.
#[allow(unsafe_code)]
pub fn run_as(cmd: &mut Command, user: &JobUser) {
    if nix::unistd::geteuid().as_raw() == user.uid {
        return;
    }
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    let gid = nix::unistd::Gid::from_raw(user.gid);
    let uid = nix::unistd::Uid::from_raw(user.uid);
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // setgroups/setgid/setuid system calls on data prepared before the fork; it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
            nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
            // Refuse to go on if root could be regained.
            if nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok() && uid.as_raw() != 0 {
                return Err(std::io::Error::other("privileges were not dropped"));
            }
            Ok(())
        });
    }
}

/// Detach a command from the hook's session (for a background renewer): new session,
/// no inherited terminal.
#[allow(unsafe_code)]
pub fn detach(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}
