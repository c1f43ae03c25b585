//! What the filesystem under the store does with file locks, from `/proc/self/mountinfo`:
//! NFS with `nolock` or `local_lock=…`, Lustre with `localflock` or `noflock`, BeeGFS
//! (node-local locks unless global file locks are enabled) make `fcntl` locks silently
//! node-local, so `lock = "auto"` uses the lease file there instead of OFD locks.

use std::path::{Path, PathBuf};

/// The mount a path lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point.
    pub mount_point: PathBuf,
    /// Filesystem type (`nfs4`, `lustre`, `beegfs`, `gpfs`, `fuse.x`, `ext4`, …).
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Mount options and superblock options together.
    pub options: Vec<String>,
}

/// How coherent `fcntl` locks are across nodes on a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockCoherence {
    /// Locks are seen by every node (NFS with lockd, Lustre `flock`, GPFS).
    Cluster(String),
    /// A local filesystem: locks work, but the store is not shared across nodes.
    Local(String),
    /// Locks work only within one node: use the lease method.
    NodeLocal(String),
    /// Lock calls fail: `auto` falls back to the lease method by itself.
    Refused(String),
    /// Not known.
    Unknown(String),
}

impl LockCoherence {
    /// The explanation.
    pub fn reason(&self) -> &str {
        match self {
            LockCoherence::Cluster(r)
            | LockCoherence::Local(r)
            | LockCoherence::NodeLocal(r)
            | LockCoherence::Refused(r)
            | LockCoherence::Unknown(r) => r,
        }
    }
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as octal.
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Parse mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let mount_point = PathBuf::from(unescape(l.get(4)?));
            let mut options: Vec<String> = l.get(5)?.split(',').map(str::to_string).collect();
            options.extend(
                r.get(2)
                    .unwrap_or(&"")
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string),
            );
            Some(Mount {
                mount_point,
                fstype: r.first()?.to_string(),
                source: unescape(r.get(1).unwrap_or(&"")),
                options,
            })
        })
        .collect()
}

/// The mount holding `path` (the longest mount point that is a prefix of it).
pub fn mount_of(mounts: &[Mount], path: &Path) -> Option<Mount> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .cloned()
}

/// The mount holding `path`, from this process's mountinfo.
pub fn current_mount(path: &Path) -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The path may not exist yet: use its nearest existing ancestor.
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    mount_of(&parse_mountinfo(&text), &p)
}

/// Judge lock coherence on `m` from its type and options.
pub fn coherence(m: &Mount) -> LockCoherence {
    let has = |o: &str| m.options.iter().any(|x| x == o);
    let opt_val = |k: &str| {
        m.options
            .iter()
            .find_map(|x| x.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let fs = m.fstype.as_str();
    match fs {
        "nfs" | "nfs4" => {
            if has("nolock") {
                LockCoherence::NodeLocal(format!(
                    "{fs} mounted with nolock: fcntl locks stay on each node"
                ))
            } else if let Some(v) = opt_val("local_lock").filter(|v| v != "none") {
                LockCoherence::NodeLocal(format!(
                    "{fs} mounted with local_lock={v}: locks stay on each node"
                ))
            } else {
                LockCoherence::Cluster(format!(
                    "{fs}: fcntl locks go through the NFS lock manager and are seen by all nodes"
                ))
            }
        }
        "lustre" => {
            if has("flock") {
                LockCoherence::Cluster(
                    "Lustre mounted with flock: locks are coherent across nodes".into(),
                )
            } else if has("localflock") {
                LockCoherence::NodeLocal(
                    "Lustre mounted with localflock: locks stay on each node".into(),
                )
            } else {
                LockCoherence::Refused(
                    "Lustre without flock (noflock, the default): lock calls fail".into(),
                )
            }
        }
        "beegfs" => LockCoherence::NodeLocal(
            "BeeGFS: fcntl locks are node-local unless the client sets tuneUseGlobalFileLocks"
                .into(),
        ),
        "gpfs" => LockCoherence::Cluster(
            "GPFS (Spectrum Scale): fcntl locks are coherent across nodes".into(),
        ),
        "cifs" | "smb3" => {
            LockCoherence::Unknown(format!("{fs}: lock coherence depends on the server"))
        }
        f if f.starts_with("fuse") => LockCoherence::Unknown(format!(
            "{f}: a FUSE filesystem decides itself what locks mean"
        )),
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "tmpfs" | "overlay" | "zfs" | "f2fs" => {
            LockCoherence::Local(format!(
                "{fs} is a local filesystem: locks work, but only processes on this node share this store"
            ))
        }
        other => {
            LockCoherence::Unknown(format!("{other}: lock coherence across nodes is not known"))
        }
    }
}

/// Whether `auto` should skip OFD locks for a store at `path`.
pub fn auto_prefers_lease(path: &Path) -> bool {
    current_mount(path).is_some_and(|m| matches!(coherence(&m), LockCoherence::NodeLocal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /home rw,relatime shared:2 - nfs4 srv:/home rw,vers=4.2,local_lock=none,addr=10.0.0.1
41 22 0:41 / /scratch rw,relatime shared:3 - lustre 10.0.0.2@tcp:/fs rw,localflock
42 22 0:42 / /old rw shared:4 - nfs srv:/old rw,nolock,vers=3
43 22 0:43 / /proj rw shared:5 - lustre 10.0.0.2@tcp:/fs2 rw,flock
44 22 0:44 / /bee rw shared:6 - beegfs beegfs_nodev rw
45 22 0:45 / /with\\040space rw - fuse.lockfs lockfs rw
";

    #[test]
    fn parses_and_judges() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 7);
        let j = |p: &str| coherence(&mount_of(&m, Path::new(p)).unwrap());
        assert!(matches!(j("/home/u/.qsh"), LockCoherence::Cluster(_)));
        assert!(matches!(j("/scratch/x"), LockCoherence::NodeLocal(_)));
        assert!(matches!(j("/old/x"), LockCoherence::NodeLocal(_)));
        assert!(matches!(j("/proj/x"), LockCoherence::Cluster(_)));
        assert!(matches!(j("/bee/x"), LockCoherence::NodeLocal(_)));
        assert!(matches!(j("/tmp/x"), LockCoherence::Local(_)));
        assert_eq!(
            mount_of(&m, Path::new("/with space/a")).unwrap().fstype,
            "fuse.lockfs"
        );
    }
}
