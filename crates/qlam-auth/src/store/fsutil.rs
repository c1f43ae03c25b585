//! Filesystem primitives for the store: durable atomic writes (temp file in the same
//! directory, fsync, rename, fsync the directory) and ssh-style ownership/mode checks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Create `dir` (and parents) with mode 0700 if missing. An existing directory is left as is.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::store(format!("cannot create directory {}: {e}", dir.display())).with_source(e)
        })
}

/// Refuse a directory or file that is group/world accessible or owned by someone else,
/// as ssh does, with the chmod that fixes it.
pub fn check_private(path: &Path, meta: &fs::Metadata, uid: u32) -> Result<()> {
    let is_dir = meta.is_dir();
    if meta.uid() != uid {
        return Err(Error::store(format!(
            "{} {} is owned by uid {}, not by you (uid {uid})",
            if is_dir { "directory" } else { "file" },
            path.display(),
            meta.uid()
        ))
        .with_hint("a token store must belong to the user whose tokens it holds; remove it or fix its owner"));
    }
    if meta.mode() & 0o077 != 0 {
        let want = if is_dir { "700" } else { "600" };
        return Err(Error::store(format!(
            "{} {} is accessible by others (mode {:o})",
            if is_dir { "directory" } else { "file" },
            path.display(),
            meta.mode() & 0o777
        ))
        .with_hint(format!("run: chmod {want} {}", path.display())));
    }
    Ok(())
}

/// Write `bytes` to `path` atomically and durably with `mode`: a temp file in the same
/// directory, fsync, rename over the old file, fsync the directory. Readers see the old or
/// the new content, never a mix; a crash leaves at most a stray temp file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let err = |what: &str, e: std::io::Error| {
        Error::store(format!("cannot {what} {}: {e}", path.display()))
            .with_hint(format!(
                "check that {} is writable and the filesystem is not full",
                dir.display()
            ))
            .with_source(e)
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| err("write", e))?;
    let result = (|| {
        f.write_all(bytes)?;
        // The umask may have narrowed the mode; make it exact.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)?;
        if sync && let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err("write", e));
    }
    Ok(())
}

/// Remove temp files this module left behind in `dir` (from processes killed mid-write)
/// that are older than `max_age_secs`.
pub fn sweep_temp_files(dir: &Path, stem: &str, max_age_secs: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{stem}.tmp.");
    let now = std::time::SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&prefix) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age.as_secs() > max_age_secs);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}
