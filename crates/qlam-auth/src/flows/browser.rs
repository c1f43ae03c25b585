//! Authorization code + PKCE (S256) for workstations: a random `state` and code verifier,
//! the authorization URL, a redirect listener bound to 127.0.0.1 only on QLAM Shell's
//! redirect URI (`http://localhost:<port>/auth/callback`), and the code exchange. A
//! callback whose `state` does not match is answered with an error page and ignored.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use sha2::Digest;

use crate::config::Provider;
use crate::discovery::Discovery;
use crate::error::{Error, ErrorKind, Result};
use crate::flows::TokenResponse;
use crate::http::{HttpClient, with_retries};
use crate::secret::Secret;

/// A prepared authorization request.
#[derive(Debug)]
pub struct AuthRequest {
    /// Where the user's browser goes.
    pub url: String,
    /// QLAM Shell's redirect URI.
    pub redirect_uri: String,
    state: String,
    verifier: Secret,
}

fn random_urlsafe(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The PKCE S256 challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Build the authorization URL with a fresh state and verifier.
pub fn prepare(disc: &Discovery, provider: &Provider) -> Result<AuthRequest> {
    let endpoint = disc.authorization_endpoint.as_deref().ok_or_else(|| {
        Error::config("the IdP has no authorization_endpoint, so the browser login cannot work")
            .with_hint("use `qlam-hpc login --device`")
    })?;
    let redirect_uri = format!("http://localhost:{}/auth/callback", provider.redirect_port);
    let state = random_urlsafe(24);
    let verifier = Secret::new(random_urlsafe(48));
    let mut url = url::Url::parse(endpoint)
        .map_err(|e| Error::config(format!("bad authorization_endpoint: {e}")))?;
    {
        let scope = provider.user_scope();
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge(verifier.expose()))
            .append_pair("code_challenge_method", "S256");
        if let Some(a) = &provider.audience {
            q.append_pair("audience", a);
        }
        if let Some(t) = &provider.tenant {
            q.append_pair("organization", t);
        }
    }
    Ok(AuthRequest {
        url: url.to_string(),
        redirect_uri,
        state,
        verifier,
    })
}

/// Bind the redirect listener on 127.0.0.1 (never on other interfaces).
pub fn listen(port: u16) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        Error::config(format!(
            "cannot listen on 127.0.0.1:{port} for the login redirect: {e}"
        ))
        .with_hint(
            "another login may be running; set redirect_port, or use `qlam-hpc login --device`",
        )
    })
}

const PAGE_OK: &str = "<!doctype html><title>qlam-hpc</title><h1>Logged in</h1><p>You can close this window and return to the terminal.</p>";

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Wait for the browser's redirect carrying the code. Callbacks with the wrong `state` are
/// refused and waiting goes on; an `error` from the IdP with the right state ends the login.
/// The stream is returned open so the page shown to the user can report how the code
/// exchange went (see [`finish`]).
pub fn wait_for_code(
    listener: &TcpListener,
    req: &AuthRequest,
    timeout: Duration,
) -> Result<(Secret, TcpStream)> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::internal(format!("listener: {e}")))?;
    loop {
        if Instant::now() >= deadline {
            return Err(
                Error::auth(format!("no login arrived within {} s", timeout.as_secs())).with_hint(
                    "run `qlam-hpc login --browser` again, or use `qlam-hpc login --device`",
                ),
            );
        }
        let (mut stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                return Err(Error::internal(format!(
                    "accepting the login redirect: {e}"
                )));
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let Ok(url) = url::Url::parse(&format!("http://localhost{target}")) else {
            respond(&mut stream, "400 Bad Request", "bad request");
            continue;
        };
        if url.path() != "/auth/callback" {
            respond(&mut stream, "404 Not Found", "not found");
            continue;
        }
        let get = |k: &str| {
            url.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string())
        };
        if get("state").as_deref() != Some(req.state.as_str()) {
            respond(
                &mut stream,
                "400 Bad Request",
                "<!doctype html><title>qlam-hpc</title><h1>Login refused</h1><p>The request did not come from this login (state mismatch).</p>",
            );
            continue;
        }
        if let Some(err) = get("error") {
            let desc = get("error_description").unwrap_or_default();
            respond(
                &mut stream,
                "400 Bad Request",
                &format!(
                    "<!doctype html><title>qlam-hpc</title><h1>Login failed</h1><p>{}</p>",
                    html_escape(&format!("{err} {desc}"))
                ),
            );
            return Err(Error::auth(
                format!("the IdP refused the login: {err} {desc}")
                    .trim()
                    .to_string(),
            )
            .with_hint("run `qlam-hpc login` again"));
        }
        match get("code") {
            Some(code) if !code.is_empty() => return Ok((Secret::new(code), stream)),
            _ => respond(&mut stream, "400 Bad Request", "missing code"),
        }
    }
}

/// Tell the browser how the login ended.
pub fn finish(mut stream: TcpStream, outcome: std::result::Result<(), &str>) {
    match outcome {
        Ok(()) => respond(&mut stream, "200 OK", PAGE_OK),
        Err(why) => respond(
            &mut stream,
            "500 Internal Server Error",
            &format!(
                "<!doctype html><title>qlam-hpc</title><h1>Login failed</h1><p>{}</p><p>See the terminal.</p>",
                html_escape(why)
            ),
        ),
    }
}

/// Exchange the code for tokens. Returns them and the time the request was sent.
pub fn exchange(
    http: &HttpClient,
    disc: &Discovery,
    provider: &Provider,
    req: &AuthRequest,
    code: &Secret,
    client_secret: Option<&Secret>,
) -> Result<(TokenResponse, SystemTime)> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code.expose()),
        ("redirect_uri", req.redirect_uri.as_str()),
        ("client_id", provider.client_id.as_str()),
        ("code_verifier", req.verifier.expose()),
    ];
    if let Some(s) = client_secret {
        form.push(("client_secret", s.expose()));
    }
    let mut sent = SystemTime::now();
    let v = with_retries(Instant::now() + Duration::from_secs(30), 3, || {
        sent = SystemTime::now();
        http.post_form(&disc.token_endpoint, &form, None)
    })
    .map_err(|f| f.into_error("finishing the browser login"))?;
    let tokens =
        TokenResponse::from_json(&v).map_err(|f| f.into_error("finishing the browser login"))?;
    if tokens.access_token.is_empty() {
        return Err(Error::new(
            ErrorKind::IdpServer,
            "the IdP returned an empty access token",
        ));
    }
    Ok((tokens, sent))
}

#[cfg(test)]
mod tests {
    use super::challenge;

    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
