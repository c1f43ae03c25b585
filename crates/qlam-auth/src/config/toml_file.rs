//! The qlam-hpc TOML files (user and site): `[defaults]`, `[providers.NAME]`, `[store]`,
//! and `[hooks]` (site file only). Unknown keys are errors that name the key and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{DurationValue, ProviderFields};
use crate::error::{Error, Result};

/// One qlam-hpc TOML file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TomlFile {
    /// Fields for every provider.
    pub defaults: Option<ProviderFields>,
    /// Fields per provider name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFields>,
    /// Store settings.
    pub store: Option<StoreSection>,
    /// Hook policy (site file only).
    pub hooks: Option<HooksSection>,
}

/// `[store]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `auto` | `ofd` | `flock` | `lease`
    pub lock: Option<String>,
    /// e.g. `2m`
    pub lock_timeout: Option<DurationValue>,
}

/// `[hooks]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    /// Fail jobs when staging fails.
    pub enforce: Option<bool>,
    /// Node-local staging root.
    pub stage_dir: Option<PathBuf>,
    /// A file the root-side hooks append their log lines to.
    pub log_file: Option<PathBuf>,
}

impl TomlFile {
    /// Read `path`; a missing file is `Ok(None)`.
    pub fn load(path: &Path, is_site: bool) -> Result<Option<TomlFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let file: TomlFile = toml::from_str(&text).map_err(|e| {
            Error::config(format!(
                "invalid config file {}: {}",
                path.display(),
                e.message().trim()
            ))
            .with_hint(match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("see line {line} of {}", path.display())
                }
                None => format!("check {}", path.display()),
            })
        })?;
        if !is_site && file.hooks.is_some() {
            return Err(Error::config(format!(
                "[hooks] in {} is only allowed in the site config (/etc/qlam-hpc/config.toml)",
                path.display()
            )));
        }
        Ok(Some(file))
    }
}
