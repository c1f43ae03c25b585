//! The token store: one QLAM Core-compatible file per (context, provider) in
//! `$QSH_CONFIG_DIR/credentials`, 0600 in a 0700 directory. Readers never lock; writers
//! replace the file atomically under the shared lock (see [`single_flight`]). A file is
//! never deleted except by `logout`.

pub mod format;
pub mod fsutil;
pub mod ledger;
pub mod lock;
pub mod mounts;
pub mod single_flight;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

pub use format::{HpcMeta, LastError, RefreshedBy, StoreFile, TokenData};
pub use lock::{LockIdentity, LockMethod, LockOptions, LockProbe, StoreLock, acquire, probe};

use crate::error::{Error, Result};

/// QLAM Core's cache key for a context and provider.
pub fn cache_key(context: &str, provider: &str) -> String {
    format!("oauth_{context}_{provider}")
}

/// QLAM Core's file name for a cache key: `cache_<prefix>_<sha256hex(key)>.json`.
pub fn file_name(key: &str) -> String {
    let mut prefix = String::new();
    let mut in_run = false;
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            prefix.push(c);
            in_run = false;
        } else if !in_run {
            prefix.push('_');
            in_run = true;
        }
    }
    let prefix = prefix.trim_matches(|c| c == '.' || c == '_');
    let prefix: String = if prefix.is_empty() {
        "default".into()
    } else {
        prefix.chars().take(64).collect()
    };
    format!(
        "cache_{prefix}_{}.json",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

/// The store of one (context, provider).
#[derive(Debug, Clone)]
pub struct Store {
    /// The credentials directory.
    pub dir: PathBuf,
    /// The credentials file.
    pub file: PathBuf,
    /// The shared lock file beside it.
    pub lock_file: PathBuf,
    /// The context name written into the file.
    pub context: String,
    uid: u32,
}

impl Store {
    /// The store for `context`/`provider` in `credentials_dir`, checked against `uid`.
    pub fn new(credentials_dir: &Path, context: &str, provider: &str, uid: u32) -> Store {
        let file = credentials_dir.join(file_name(&cache_key(context, provider)));
        let mut lock = file.clone().into_os_string();
        lock.push(".lock");
        Store {
            dir: credentials_dir.to_path_buf(),
            file,
            lock_file: PathBuf::from(lock),
            context: context.into(),
            uid,
        }
    }

    /// Read the file without locking. `Ok(None)` when there is no file; an insecure or
    /// unreadable file is an error (exit 60), never silently ignored.
    pub fn read(&self) -> Result<Option<StoreFile>> {
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.file)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(
                    Error::store(format!("cannot read {}: {e}", self.file.display()))
                        .with_hint("check the file's owner and permissions (chmod 600)"),
                );
            }
        };
        let dir_meta = std::fs::metadata(&self.dir)
            .map_err(|e| Error::store(format!("cannot stat {}: {e}", self.dir.display())))?;
        fsutil::check_private(&self.dir, &dir_meta, self.uid)?;
        let meta = f
            .metadata()
            .map_err(|e| Error::store(format!("cannot stat {}: {e}", self.file.display())))?;
        fsutil::check_private(&self.file, &meta, self.uid)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
        (&f).take(4 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::store(format!("cannot read {}: {e}", self.file.display())))?;
        Self::parse(&bytes, &self.file).map(Some)
    }

    /// Parse store bytes; corrupt content is a store error that leaves the file in place.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<StoreFile> {
        let file: StoreFile = serde_json::from_slice(bytes).map_err(|e| {
            Error::store(format!(
                "the credentials file {} is corrupt: {e}",
                path.display()
            ))
            .with_hint("run `qlam-hpc login` to replace it (the broken file is kept until then)")
        })?;
        if file.version != 1 {
            return Err(Error::store(format!(
                "the credentials file {} has format version {}, which this qlam-hpc does not know",
                path.display(),
                file.version
            ))
            .with_hint("upgrade qlam-hpc"));
        }
        Ok(file)
    }

    /// Create the credentials directory (0700) if missing and check it is private.
    pub fn ensure_dir(&self) -> Result<()> {
        fsutil::create_private_dir(&self.dir)?;
        let meta = std::fs::metadata(&self.dir)
            .map_err(|e| Error::store(format!("cannot stat {}: {e}", self.dir.display())))?;
        fsutil::check_private(&self.dir, &meta, self.uid)
    }

    /// Replace the file atomically and durably (call with the store lock held).
    pub fn write(&self, file: &StoreFile) -> Result<()> {
        self.ensure_dir()?;
        let name = self
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("cache");
        fsutil::sweep_temp_files(&self.dir, name, 3600);
        fsutil::write_atomic(&self.file, &file.to_json(), 0o600, true)
    }

    /// Remove the credentials (logout). The lock file stays.
    pub fn remove(&self) -> Result<bool> {
        match std::fs::remove_file(&self.file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::store(format!(
                "cannot remove {}: {e}",
                self.file.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_match_qlam_core() {
        // Values computed with QLAM Core's CredentialsCache._get_cache_file_path.
        assert_eq!(
            file_name("oauth_default_qlam"),
            format!(
                "cache_oauth_default_qlam_{}.json",
                hex::encode(sha2::Sha256::digest(b"oauth_default_qlam"))
            )
        );
        assert!(file_name("oauth_dev/us main").starts_with("cache_oauth_dev_us_main_"));
        assert!(file_name("..//..").starts_with("cache_default_"));
        let long = format!("oauth_{}_x", "a".repeat(100));
        let name = file_name(&long);
        let prefix = name
            .trim_start_matches("cache_")
            .rsplit_once('_')
            .unwrap()
            .0;
        assert_eq!(prefix.len(), 64);
    }
}
