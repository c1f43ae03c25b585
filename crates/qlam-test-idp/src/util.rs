//! Small helpers: random tokens and codes, form and JSON parameter parsing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;

use crate::http::Request;

/// A random URL-safe token: `prefix` + 43 characters (256 bits).
pub(crate) fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Letters of user codes: consonants only, so no word can be spelled (Auth0's alphabet).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A random user code, `ABCD-EFGH`.
pub(crate) fn random_user_code() -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            s.push('-');
        }
        s.push(USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())] as char);
    }
    s
}

/// Canonical form of a user code as a person may type it (any case, dash or not).
pub(crate) fn normalize_user_code(input: &str) -> String {
    let letters: String = input
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if letters.len() == 8 {
        format!("{}-{}", &letters[..4], &letters[4..])
    } else {
        letters
    }
}

/// Request parameters (form body, JSON object body, or query string), in order.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub(crate) fn from_query(query: &str) -> Params {
        Params {
            pairs: url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    /// Parses a body as JSON when the content type says so, else as a form.
    pub(crate) fn from_body(req: &Request) -> Result<Params, String> {
        let is_json = req
            .header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"));
        if !is_json {
            return Ok(Params {
                pairs: url::form_urlencoded::parse(&req.body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            });
        }
        Params::from_json(&req.body)
    }

    /// Parses a JSON object body; string, number and boolean values are kept as text.
    pub(crate) fn from_json(body: &[u8]) -> Result<Params, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params::default());
        }
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| "body must be a JSON object".to_string())?;
        let mut pairs = Vec::new();
        for (k, v) in obj {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => continue,
                serde_json::Value::Bool(_) | serde_json::Value::Number(_) => v.to_string(),
                _ => return Err(format!("parameter {k} must be a string")),
            };
            pairs.push((k.clone(), v));
        }
        Ok(Params { pairs })
    }

    /// The value of `name`; an empty value counts as absent (RFC 6749 §3.1).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.pairs.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The first parameter sent more than once (RFC 6749 §3.1 forbids it).
    pub(crate) fn duplicate(&self) -> Option<&str> {
        self.pairs.iter().enumerate().find_map(|(i, (k, _))| {
            self.pairs[..i]
                .iter()
                .any(|(k2, _)| k2 == k)
                .then_some(k.as_str())
        })
    }
}

/// Percent-decodes one `application/x-www-form-urlencoded` component (`+` is a space),
/// as RFC 6749 §2.3.1 requires for the parts of HTTP Basic client credentials.
pub(crate) fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('&', "%26")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Minimal HTML escaping for values placed in pages.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether a space-separated scope string contains `scope`.
pub(crate) fn has_scope(scopes: &str, scope: &str) -> bool {
    scopes.split_ascii_whitespace().any(|s| s == scope)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
