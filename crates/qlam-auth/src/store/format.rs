//! QLAM Core's credentials file, byte for byte in structure: the top-level keys exactly
//! `version`, `plugin`, `context`, `created_at`, `updated_at`, `expires_at`, `data`, `extra`;
//! `extra.token_data` with exactly QLAM Core's seven fields; qlam-hpc's own metadata only
//! under `extra.qlam_hpc`, which QLAM Core ignores.

use base64::Engine;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::flows::TokenResponse;
use crate::secret::Secret;

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// Always 1.
    pub version: u32,
    /// `"oauth"`.
    pub plugin: String,
    /// The context name.
    pub context: String,
    /// When the file was first created.
    pub created_at: String,
    /// When it was last written.
    pub updated_at: String,
    /// QLAM Core's expiry: token `created_at` truncated to the minute plus `expires_in`.
    pub expires_at: Option<String>,
    /// Standard base64 of `{"token": "<access token>"}`.
    pub data: String,
    /// `token_data`, `qlam_hpc`, and anything else another writer put there.
    pub extra: Option<Extra>,
}

/// `extra`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extra {
    /// The token, in QLAM Core's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_data: Option<TokenData>,
    /// qlam-hpc's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qlam_hpc: Option<HpcMeta>,
    /// Keys written by others, kept as they are.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `extra.token_data`: exactly QLAM Core's `TokenData` fields (it rejects any other key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenData {
    /// The access token.
    pub access_token: Secret,
    /// Usually `Bearer`.
    pub token_type: String,
    /// Lifetime the IdP gave, seconds.
    pub expires_in: Option<i64>,
    /// The refresh token (absent for M2M and staged copies).
    pub refresh_token: Option<Secret>,
    /// The ID token.
    pub id_token: Option<Secret>,
    /// Granted scope.
    pub scope: Option<String>,
    /// ISO 8601, taken just before the token request was sent.
    pub created_at: Option<String>,
}

/// Who wrote the last refresh.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshedBy {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Batch job id, if any.
    #[serde(default)]
    pub job_id: Option<String>,
}

/// A failure recorded in the store so other processes do not repeat it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastError {
    /// When (ISO 8601).
    pub at: String,
    /// When (unix seconds).
    pub at_unix: f64,
    /// `login_required`, `network`, `idp_server`, `config` or `budget`.
    pub kind: String,
    /// What happened (no secrets).
    pub message: String,
    /// Fingerprint of the refresh token the failure is about.
    #[serde(default)]
    pub refresh_token_fp: Option<String>,
    /// Host, pid and job of the process that saw it.
    #[serde(default)]
    pub by: Option<RefreshedBy>,
}

/// `extra.qlam_hpc`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HpcMeta {
    /// Incremented by every write.
    #[serde(default)]
    pub generation: u64,
    /// When the user logged in (ISO 8601).
    #[serde(default)]
    pub login_at: Option<String>,
    /// When the last refresh or mint happened.
    #[serde(default)]
    pub refreshed_at: Option<String>,
    /// Who did it.
    #[serde(default)]
    pub refreshed_by: Option<RefreshedBy>,
    /// The grant that produced the token.
    #[serde(default)]
    pub grant_type: Option<String>,
    /// The last failure, cleared by the next success.
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Anything newer versions add.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// ISO 8601 in Python's `isoformat()` style (`2026-01-02T03:04:05.123456+00:00`).
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Unix seconds to [`iso`].
pub fn iso_unix(secs: f64) -> String {
    iso(from_unix(secs))
}

/// Unix seconds to a UTC time.
pub fn from_unix(secs: f64) -> DateTime<Utc> {
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9) as u32;
    Utc.timestamp_opt(whole as i64, nanos.min(999_999_999))
        .single()
        .unwrap_or_default()
}

/// Parse what Python writes: `isoformat()` with `T` or `str(datetime)` with a space; naive
/// times are taken as UTC.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let t_form = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&t_form) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&t_form, fmt) {
            return Some(n.and_utc());
        }
    }
    None
}

fn to_unix(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

/// `data`: standard base64 of Python's `json.dumps({"token": ...})`.
pub fn encode_data(access_token: &Secret) -> String {
    let json = format!(
        "{{\"token\": {}}}",
        serde_json::to_string(access_token.expose()).unwrap_or_else(|_| "\"\"".into())
    );
    base64::engine::general_purpose::STANDARD.encode(json)
}

impl TokenData {
    /// Expiry in unix seconds, precisely (`created_at` + `expires_in`).
    pub fn expires_at_unix(&self) -> Option<f64> {
        let created = parse_time(self.created_at.as_deref()?)?;
        Some(to_unix(created) + self.expires_in? as f64)
    }

    /// QLAM Core's expiry: `created_at` truncated to the minute plus `expires_in`.
    pub fn qlam_core_expires_at(&self) -> Option<DateTime<Utc>> {
        let created = parse_time(self.created_at.as_deref()?)?;
        let truncated = created.with_second(0)?.with_nanosecond(0)?;
        Some(truncated + chrono::Duration::seconds(self.expires_in?))
    }
}

impl StoreFile {
    /// The token, if the file holds one.
    pub fn token(&self) -> Option<&TokenData> {
        self.extra.as_ref()?.token_data.as_ref()
    }

    /// qlam-hpc's metadata, if present.
    pub fn meta(&self) -> Option<&HpcMeta> {
        self.extra.as_ref()?.qlam_hpc.as_ref()
    }

    /// Mutable metadata, created if missing.
    pub fn meta_mut(&mut self) -> &mut HpcMeta {
        self.extra
            .get_or_insert_with(Extra::default)
            .qlam_hpc
            .get_or_insert_with(HpcMeta::default)
    }

    /// The write generation (0 when qlam-hpc never wrote the file).
    pub fn generation(&self) -> u64 {
        self.meta().map_or(0, |m| m.generation)
    }

    /// Expiry in unix seconds: precise from `token_data`, else QLAM Core's `expires_at`.
    pub fn expires_at_unix(&self) -> Option<f64> {
        self.token()
            .and_then(TokenData::expires_at_unix)
            .or_else(|| self.expires_at.as_deref().and_then(parse_time).map(to_unix))
    }

    /// A fingerprint of the tokens, which changes whenever anyone (qlam-hpc or QLAM Core)
    /// stores new ones.
    pub fn token_identity(&self) -> String {
        match self.token() {
            Some(t) => format!(
                "{}:{}",
                t.access_token.fingerprint(),
                t.refresh_token
                    .as_ref()
                    .map(Secret::fingerprint)
                    .unwrap_or_default()
            ),
            None => String::new(),
        }
    }

    /// A new file holding `tokens`, requested at `created_at` (unix seconds). Refresh and
    /// ID tokens the IdP did not resend are kept from `previous`, and so is its metadata,
    /// with the generation incremented.
    pub fn from_tokens(
        context: &str,
        tokens: &TokenResponse,
        created_at: f64,
        now: f64,
        previous: Option<&StoreFile>,
    ) -> StoreFile {
        let prev_token = previous.and_then(StoreFile::token);
        let token_data = TokenData {
            access_token: tokens.access_token.clone(),
            token_type: tokens.token_type.clone(),
            expires_in: tokens.expires_in,
            refresh_token: tokens
                .refresh_token
                .clone()
                .or_else(|| prev_token.and_then(|t| t.refresh_token.clone())),
            id_token: tokens
                .id_token
                .clone()
                .or_else(|| prev_token.and_then(|t| t.id_token.clone())),
            scope: tokens
                .scope
                .clone()
                .or_else(|| prev_token.and_then(|t| t.scope.clone())),
            created_at: Some(iso_unix(created_at)),
        };
        let mut meta = previous
            .and_then(StoreFile::meta)
            .cloned()
            .unwrap_or_default();
        meta.generation = previous.map_or(0, StoreFile::generation) + 1;
        let other = previous
            .and_then(|p| p.extra.as_ref())
            .map(|e| e.other.clone())
            .unwrap_or_default();
        let expires_at = token_data.qlam_core_expires_at().map(iso);
        StoreFile {
            version: 1,
            plugin: "oauth".into(),
            context: context.to_string(),
            created_at: previous
                .map(|p| p.created_at.clone())
                .unwrap_or_else(|| iso_unix(now)),
            updated_at: iso_unix(now),
            expires_at,
            data: encode_data(&tokens.access_token),
            extra: Some(Extra {
                token_data: Some(token_data),
                qlam_hpc: Some(meta),
                other,
            }),
        }
    }

    /// Serialize as QLAM Core does (indented JSON).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_python_timestamps() {
        let a = parse_time("2026-11-28T20:17:12.123456+00:00").unwrap();
        let b = parse_time("2026-11-28 20:17:12.123456+00:00").unwrap();
        assert_eq!(a, b);
        assert!(parse_time("2026-11-28T20:17:12").is_some());
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn iso_round_trip() {
        let t = 1_800_000_000.25;
        let s = iso_unix(t);
        assert!(s.ends_with("+00:00"), "{s}");
        let back = to_unix(parse_time(&s).unwrap());
        assert!((back - t).abs() < 1e-3);
    }

    #[test]
    fn data_matches_python_json_dumps() {
        let d = encode_data(&Secret::new("at_x"));
        let raw = base64::engine::general_purpose::STANDARD.decode(d).unwrap();
        assert_eq!(raw, br#"{"token": "at_x"}"#);
    }

    #[test]
    fn qlam_core_expiry_truncates_to_the_minute() {
        let td = TokenData {
            access_token: Secret::new("a"),
            token_type: "Bearer".into(),
            expires_in: Some(60),
            refresh_token: None,
            id_token: None,
            scope: None,
            created_at: Some("2026-11-28T20:17:42.5+00:00".into()),
        };
        assert_eq!(
            iso(td.qlam_core_expires_at().unwrap()),
            "2026-11-28T20:18:00.000000+00:00"
        );
        let precise = td.expires_at_unix().unwrap();
        assert!(
            (precise - to_unix(parse_time("2026-11-28T20:18:42.5+00:00").unwrap())).abs() < 1e-3
        );
    }
}
