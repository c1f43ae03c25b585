//! `qlam-test-idp`: runs the test IdP until SIGTERM/SIGINT (or stdin closes, with
//! `--exit-on-stdin-close`). Prints exactly one line on stdout, `listening <base URL>`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use qlam_test_idp::{
    ClientKey, ClientSpec, DEFAULT_CLIENT_ID, DiscoveryMode, Idp, IdpConfig, SigningAlg,
};

/// A small OAuth2/OIDC identity provider (Auth0's paths) for tests, benchmarks and demos.
/// Binds to loopback only.
#[derive(Parser, Debug)]
#[command(name = "qlam-test-idp", version)]
struct Args {
    /// Loopback address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    bind: String,
    /// Access-token lifetime (`expires_in`).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    access_ttl: u64,
    /// Refresh-token lifetime, counted from the login.
    #[arg(long, value_name = "SECS", default_value_t = 15 * 24 * 3600)]
    refresh_ttl: u64,
    /// Device-code lifetime.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    device_ttl: u64,
    /// `interval` of device authorization responses; `none` omits it (5 s is enforced).
    #[arg(long, value_name = "SECS|none", default_value = "5", value_parser = parse_interval)]
    device_interval: Interval,
    /// Refresh-token reuse interval; 0: any reuse of a used refresh token revokes the login.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    reuse_interval: u64,
    /// Approve device codes and /authorize requests at once, as demo-user.
    #[arg(long)]
    auto_approve: bool,
    /// Register a client (repeatable): without a secret a public client (device code,
    /// refresh token, authorization code); with one a confidential client that may also use
    /// client credentials. The public client qlam-hpc-test is always registered unless
    /// redefined here.
    #[arg(long = "client", value_name = "ID[:SECRET]")]
    clients: Vec<String>,
    /// Register a private_key_jwt public key (repeatable; several per client for key
    /// rotation): ALG is RS256, RS384, PS256 or ES256, the file holds an SPKI or PKCS#1 PEM
    /// public key, KID is optional. A client not registered with --client becomes one that
    /// authenticates with private_key_jwt only (every grant, client credentials included);
    /// a --client one gains the key (and client credentials).
    #[arg(long = "client-key", value_name = "ID:ALG:PUBKEY_PEM_PATH[:KID]")]
    client_keys: Vec<String>,
    /// Client-credentials tokens allowed in total; then 429 too_many_requests.
    #[arg(long, value_name = "N")]
    m2m_quota: Option<u64>,
    /// Serve only /.well-known/oauth-authorization-server (RFC 8414), not the OpenID one.
    #[arg(long)]
    oauth_only_discovery: bool,
    /// Write the base URL (and a newline) to this file once listening; removed at exit.
    #[arg(long, value_name = "PATH")]
    port_file: Option<PathBuf>,
    /// Exit when standard input reaches end of file (ties the IdP to a parent process).
    #[arg(long)]
    exit_on_stdin_close: bool,
    /// Log one line per request to stderr (never token values or secrets).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug)]
struct Interval(Option<u64>);

fn parse_interval(s: &str) -> Result<Interval, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Interval(None));
    }
    s.parse()
        .map(|n| Interval(Some(n)))
        .map_err(|_| format!("expected seconds or `none`, got {s:?}"))
}

fn clients(specs: &[String], key_specs: &[String]) -> io::Result<Vec<ClientSpec>> {
    let mut clients: Vec<ClientSpec> = specs
        .iter()
        .map(|s| match s.split_once(':') {
            Some((id, secret)) => ClientSpec::confidential(id, secret),
            None => ClientSpec::public(s),
        })
        .collect();
    for spec in key_specs {
        let (id, key) = client_key(spec)?;
        match clients.iter().position(|c| c.client_id == id) {
            Some(i) => clients[i] = clients[i].clone().with_key(key),
            None => clients.push(ClientSpec::private_key_jwt(&id, vec![key])),
        }
    }
    if !clients.iter().any(|c| c.client_id == DEFAULT_CLIENT_ID) {
        clients.insert(0, ClientSpec::public(DEFAULT_CLIENT_ID));
    }
    Ok(clients)
}

/// Parses `ID:ALG:PATH[:KID]` and reads the key file. PATH may itself contain `:` when
/// no KID follows and the whole remainder names an existing file.
fn client_key(spec: &str) -> io::Result<(String, ClientKey)> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let mut parts = spec.splitn(3, ':');
    let (Some(id), Some(alg), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid(format!(
            "--client-key {spec:?}: expected ID:ALG:PUBKEY_PEM_PATH[:KID]"
        )));
    };
    if id.is_empty() || rest.is_empty() {
        return Err(invalid(format!(
            "--client-key {spec:?}: expected ID:ALG:PUBKEY_PEM_PATH[:KID]"
        )));
    }
    let alg: SigningAlg = alg
        .parse()
        .map_err(|e| invalid(format!("--client-key {spec:?}: {e}")))?;
    let (path, kid) = match rest.rsplit_once(':') {
        Some((path, kid)) if !std::path::Path::new(rest).is_file() && !kid.is_empty() => {
            (path, Some(kid))
        }
        _ => (rest, None),
    };
    let pem = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(e.kind(), format!("--client-key: cannot read {path:?}: {e}"))
    })?;
    let mut key = ClientKey::new(alg, pem);
    if let Some(kid) = kid {
        key = key.with_kid(kid);
    }
    Ok((id.to_string(), key))
}

fn write_port_file(path: &PathBuf, base_url: &str) -> io::Result<()> {
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{base_url}\n"))?;
    std::fs::rename(&tmp, path)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "qlam-test-idp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    // Block the stop signals before any thread starts, so that every thread inherits the
    // mask and only the waiting thread below receives them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(io::Error::from)?;

    let logger: Option<qlam_test_idp::RequestLogger> = args.verbose.then(|| {
        Arc::new(|line: &str| {
            let _ = writeln!(io::stderr(), "qlam-test-idp: {line}");
        }) as qlam_test_idp::RequestLogger
    });
    let cfg = IdpConfig {
        bind: args.bind.clone(),
        access_token_ttl: args.access_ttl,
        refresh_token_ttl: args.refresh_ttl,
        device_code_ttl: args.device_ttl,
        device_interval: args.device_interval.0,
        reuse_interval: args.reuse_interval,
        auto_approve: args.auto_approve,
        clients: clients(&args.clients, &args.client_keys)?,
        discovery: if args.oauth_only_discovery {
            DiscoveryMode::OAuthOnly
        } else {
            DiscoveryMode::OpenId
        },
        m2m_quota: args.m2m_quota,
        request_logger: logger,
    };
    let idp = Idp::start(cfg)?;
    let base_url = idp.base_url();
    if let Some(path) = &args.port_file {
        write_port_file(path, &base_url)?;
    }
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening {base_url}")?;
        out.flush()?;
    }

    let (tx, rx) = mpsc::channel::<&'static str>();
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let why = match signals.wait() {
                Ok(Signal::SIGINT) => "SIGINT",
                Ok(Signal::SIGHUP) => "SIGHUP",
                _ => "SIGTERM",
            };
            let _ = tx.send(why);
        });
    }
    if args.exit_on_stdin_close {
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = io::stdin().lock();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send("stdin closed");
        });
    }
    let why = rx.recv().unwrap_or("shutdown");
    if args.verbose {
        let _ = writeln!(io::stderr(), "qlam-test-idp: stopping ({why})");
    }
    drop(idp);
    if let Some(path) = &args.port_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
