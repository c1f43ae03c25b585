//! Configuration (DESIGN §3) through `config::load`: the precedence flags > environment >
//! user TOML > qsh `config.json` > site TOML for every provider field, `[providers.NAME]`
//! over `[defaults]`, context and provider selection, the qsh paths, and the loud errors a
//! broken configuration must produce.

use std::path::PathBuf;
use std::time::Duration;

use qlam_auth::ErrorKind;
use qlam_auth::config::{GrantType, Overrides, Settings, Verify};
use qlam_auth::store::LockMethod;
use serde_json::{Value, json};

use crate::support::Sandbox;

/// A qsh context in QLAM Core's schema.
fn qsh_context(name: &str, auth_provider: Option<&str>, providers: Vec<Value>) -> Value {
    let mut ctx = json!({"name": name, "qpu": "qpu-foo", "auth_providers": providers});
    if let Some(p) = auth_provider {
        ctx["defaults"] = json!({"auth_provider": p});
    }
    ctx
}

fn oauth(name: &str, base: &str) -> Value {
    json!({
        "name": name,
        "provider": "oauth",
        "auth_base_url": base,
        "client_id": format!("{name}-client"),
    })
}

fn basic(name: &str) -> Value {
    json!({"name": name, "provider": "basic", "username": "u", "password": "env:PW"})
}

fn qsh(current: Option<&str>, contexts: Vec<Value>) -> Value {
    let mut doc = json!({"contexts": contexts});
    if let Some(c) = current {
        doc["current_context"] = json!(c);
    }
    doc
}

#[track_caller]
fn config_error(sb: &Sandbox, extra: &[(&str, &str)], overrides: &Overrides) -> qlam_auth::Error {
    let err = sb
        .load(extra, overrides)
        .expect_err("the configuration must be rejected");
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert_eq!(err.exit_code(), 40);
    err
}

/// Message and hint, for `contains` checks.
fn text(err: &qlam_auth::Error) -> String {
    format!("{} {}", err.message(), err.hint().unwrap_or(""))
}

// ---------------------------------------------------------------------------------------------
// Precedence, field by field

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Int,
}

/// One provider field: where it can be set, a distinct value per source
/// (site, qsh, user, env), and how to read it back from `Settings`.
struct Field {
    key: &'static str,
    env: Option<&'static str>,
    in_qsh: bool,
    kind: Kind,
    values: [&'static str; 4],
    get: fn(&Settings) -> String,
}

const SITE: usize = 0;
const QSH: usize = 1;
const USER: usize = 2;
const ENV: usize = 3;

fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

fn opt(o: &Option<String>) -> String {
    o.clone().unwrap_or_default()
}

fn path(o: &Option<PathBuf>) -> String {
    o.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn fields() -> Vec<Field> {
    vec![
        Field {
            key: "auth_base_url",
            env: Some("QLAM_AUTH_BASE_URL"),
            in_qsh: true,
            kind: Kind::Str,
            values: [
                "https://site.example",
                "https://qsh.example",
                "https://user.example",
                "https://env.example",
            ],
            get: |s| s.provider.auth_base_url.clone(),
        },
        Field {
            key: "client_id",
            env: Some("QLAM_CLIENT_ID"),
            in_qsh: true,
            kind: Kind::Str,
            values: ["site-id", "qsh-id", "user-id", "env-id"],
            get: |s| s.provider.client_id.clone(),
        },
        Field {
            key: "client_secret",
            env: Some("QLAM_CLIENT_SECRET"),
            in_qsh: true,
            kind: Kind::Str,
            values: ["site-s", "qsh-s", "user-s", "env-s"],
            get: |s| {
                s.provider
                    .client_secret
                    .as_ref()
                    .map(|x| x.expose().to_string())
                    .unwrap_or_default()
            },
        },
        Field {
            key: "grant_type",
            env: Some("QLAM_GRANT_TYPE"),
            in_qsh: true,
            kind: Kind::Str,
            values: [
                "token_exchange",
                "authorization_code",
                "client_credentials",
                "device_code",
            ],
            get: |s| {
                s.provider
                    .grant_type
                    .map(|g| g.as_str().to_string())
                    .unwrap_or_default()
            },
        },
        Field {
            key: "scope",
            env: Some("QLAM_SCOPE"),
            in_qsh: true,
            kind: Kind::Str,
            values: ["openid site", "openid qsh", "openid user", "openid env"],
            get: |s| s.provider.scope.clone().unwrap_or_default(),
        },
        Field {
            key: "audience",
            env: Some("QLAM_AUDIENCE"),
            in_qsh: true,
            kind: Kind::Str,
            values: ["aud-site", "aud-qsh", "aud-user", "aud-env"],
            get: |s| s.provider.audience.clone().unwrap_or_default(),
        },
        Field {
            key: "tenant",
            env: Some("QLAM_TENANT"),
            in_qsh: true,
            kind: Kind::Str,
            values: ["org-site", "org-qsh", "org-user", "org-env"],
            get: |s| s.provider.tenant.clone().unwrap_or_default(),
        },
        Field {
            key: "client_secret_file",
            env: Some("QLAM_CLIENT_SECRET_FILE"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["/site/secret", "", "/user/secret", "/env/secret"],
            get: |s| path(&s.provider.client_secret_file),
        },
        Field {
            key: "private_key_file",
            env: Some("QLAM_PRIVATE_KEY_FILE"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["/site/key.pem", "", "/user/key.pem", "/env/key.pem"],
            get: |s| path(&s.provider.private_key_file),
        },
        Field {
            key: "private_key_alg",
            env: Some("QLAM_PRIVATE_KEY_ALG"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["RS256", "", "PS256", "ES256"],
            get: |s| opt(&s.provider.private_key_alg),
        },
        Field {
            key: "key_id",
            env: Some("QLAM_KEY_ID"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["kid-site", "", "kid-user", "kid-env"],
            get: |s| opt(&s.provider.key_id),
        },
        Field {
            key: "assertion_audience",
            env: None,
            in_qsh: false,
            kind: Kind::Str,
            values: ["https://site.aud/", "", "https://user.aud/", ""],
            get: |s| opt(&s.provider.assertion_audience),
        },
        Field {
            key: "m2m_monthly_budget",
            env: Some("QLAM_M2M_MONTHLY_BUDGET"),
            in_qsh: false,
            kind: Kind::Int,
            values: ["100", "", "200", "300"],
            get: |s| {
                s.provider
                    .m2m_monthly_budget
                    .map(|b| b.to_string())
                    .unwrap_or_default()
            },
        },
        Field {
            key: "min_ttl",
            env: Some("QLAM_MIN_TTL"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["11m", "", "12m", "13m"],
            get: |s| s.min_ttl.map(secs).unwrap_or_default(),
        },
        Field {
            key: "lock",
            env: Some("QLAM_LOCK"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["flock", "", "lease", "ofd"],
            get: |s| s.lock.to_string(),
        },
        Field {
            key: "lock_timeout",
            env: Some("QLAM_LOCK_TIMEOUT"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["21s", "", "22s", "23s"],
            get: |s| secs(s.lock_timeout),
        },
        Field {
            key: "refresh_deadline",
            env: Some("QLAM_REFRESH_DEADLINE"),
            in_qsh: false,
            kind: Kind::Str,
            values: ["31s", "", "32s", "33s"],
            get: |s| secs(s.refresh_deadline),
        },
        Field {
            key: "redirect_port",
            env: None,
            in_qsh: false,
            kind: Kind::Int,
            values: ["18081", "", "18082", ""],
            get: |s| s.provider.redirect_port.to_string(),
        },
        Field {
            key: "refresh_token_lifetime",
            env: None,
            in_qsh: false,
            kind: Kind::Str,
            values: ["1d", "", "2d", ""],
            get: |s| secs(s.provider.refresh_token_lifetime),
        },
    ]
}

/// What `get` returns for a source's raw value (durations come back as seconds).
fn expected(f: &Field, raw: &str) -> String {
    match f.key {
        "min_ttl" | "lock_timeout" | "refresh_deadline" | "refresh_token_lifetime" => {
            qlam_auth::duration::parse_duration(raw)
                .unwrap()
                .as_secs()
                .to_string()
        }
        _ => raw.to_string(),
    }
}

fn toml_line(f: &Field, v: &str) -> String {
    match f.kind {
        Kind::Str => format!("{} = {}", f.key, toml::Value::String(v.into())),
        Kind::Int => format!("{} = {v}", f.key),
    }
}

/// Build the sandbox with `f` set in each source of `present`, load, and return what won.
fn resolve(f: &Field, present: &[usize]) -> String {
    let sb = Sandbox::new("cfg-prec");
    // Required fields come from the site file unless they are the field under test.
    let mut site = String::from("[defaults]\n");
    for (k, v) in [
        ("auth_base_url", "https://base.example"),
        ("client_id", "base-id"),
    ] {
        if k != f.key {
            site.push_str(&format!("{k} = \"{v}\"\n"));
        }
    }
    if present.contains(&SITE) {
        site.push_str(&toml_line(f, f.values[SITE]));
        site.push('\n');
    }
    sb.write_site(&site);
    if present.contains(&QSH) {
        let mut p = json!({"name": "qlam", "provider": "oauth", "client_id": "qsh-base-id"});
        if f.key == "client_id" {
            p["client_id"] = json!(f.values[QSH]);
        } else {
            p[f.key] = json!(f.values[QSH]);
        }
        sb.write_qsh(&qsh(
            Some("default"),
            vec![qsh_context("default", None, vec![p])],
        ));
    }
    if present.contains(&USER) {
        sb.write_user(&format!("[defaults]\n{}\n", toml_line(f, f.values[USER])));
    }
    let env_value;
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if present.contains(&ENV) {
        env_value = f.values[ENV].to_string();
        extra.push((f.env.unwrap(), env_value.as_str()));
    }
    let settings = sb
        .load(&extra, &Overrides::default())
        .unwrap_or_else(|e| panic!("{} with sources {present:?}: {e:?}", f.key));
    (f.get)(&settings)
}

#[test]
fn each_provider_field_follows_env_over_user_over_qsh_over_site() {
    let subsets: &[&[usize]] = &[
        &[SITE, QSH, USER, ENV],
        &[SITE, QSH, USER],
        &[SITE, QSH],
        &[SITE],
        &[SITE, USER],
        &[SITE, ENV],
        &[SITE, QSH, ENV],
        &[QSH],
        &[USER, QSH],
    ];
    let mut checked = 0;
    for f in fields() {
        for present in subsets {
            let available: Vec<usize> = present
                .iter()
                .copied()
                .filter(|s| match *s {
                    QSH => f.in_qsh,
                    ENV => f.env.is_some(),
                    _ => true,
                })
                .collect();
            if available.len() != present.len() {
                continue;
            }
            // The required fields must come from somewhere when the site file lacks them.
            if !available.contains(&SITE) && !["auth_base_url", "client_id"].contains(&f.key) {
                continue;
            }
            let winner = *available.iter().max().unwrap();
            let got = resolve(&f, &available);
            assert_eq!(
                got,
                expected(&f, f.values[winner]),
                "{}: with sources {available:?} the value of source {winner} must win",
                f.key
            );
            checked += 1;
        }
    }
    assert!(checked > 80, "only {checked} combinations checked");
}

#[test]
fn defaults_when_nothing_but_the_provider_is_set() {
    let sb = Sandbox::new("cfg-defaults");
    let s = sb.settings(&[
        ("QLAM_AUTH_BASE_URL", "https://idp.example/"),
        ("QLAM_CLIENT_ID", "cid"),
    ]);
    assert_eq!(s.context, "default");
    assert_eq!(s.provider_name, "qlam");
    assert_eq!(
        s.provider.auth_base_url, "https://idp.example",
        "trailing slash trimmed"
    );
    assert_eq!(s.provider.grant_type, None);
    assert_eq!(s.provider.redirect_port, 18080);
    assert_eq!(
        s.provider.refresh_token_lifetime,
        Duration::from_secs(15 * 86_400)
    );
    assert_eq!(s.lock, LockMethod::Auto);
    assert_eq!(s.lock_timeout, Duration::from_secs(120));
    assert_eq!(s.refresh_deadline, Duration::from_secs(60));
    assert_eq!(s.min_ttl, None);
    assert_eq!(s.http.verify, Verify::Default);
    assert!(!s.qsh_config_exists);
    assert!(s.files_read.is_empty(), "{:?}", s.files_read);
    assert!(!s.hooks.enforce);
    assert_eq!(s.hooks.stage_dir, PathBuf::from("/run/qlam-hpc"));
    assert_eq!(
        s.provider.user_scope(),
        "openid profile email offline_access"
    );
}

#[test]
fn a_named_provider_section_beats_defaults_within_a_file_but_not_a_higher_file() {
    let sb = Sandbox::new("cfg-named");
    sb.write_site(
        r#"
[defaults]
auth_base_url = "https://site-defaults.example"
client_id = "site-defaults"
audience = "site-defaults"
tenant = "site-defaults"

[providers.qlam]
auth_base_url = "https://site-named.example"
audience = "site-named"
tenant = "site-named"

[providers.other]
client_id = "other-only"
"#,
    );
    sb.write_user(
        r#"
[defaults]
audience = "user-defaults"
scope = "user-defaults"

[providers.qlam]
scope = "user-named"
"#,
    );
    let s = sb.settings(&[]);
    assert_eq!(s.provider.auth_base_url, "https://site-named.example");
    assert_eq!(
        s.provider.client_id, "site-defaults",
        "[providers.other] does not apply"
    );
    assert_eq!(s.provider.tenant.as_deref(), Some("site-named"));
    // The user file is above the site file: its [defaults] beat the site's named section.
    assert_eq!(s.provider.audience.as_deref(), Some("user-defaults"));
    assert_eq!(s.provider.scope.as_deref(), Some("user-named"));
    assert_eq!(s.files_read, vec![sb.site_file(), sb.user_file()]);

    let other = sb
        .load(
            &[],
            &Overrides {
                provider: Some("other".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
    assert_eq!(other.provider_name, "other");
    assert_eq!(other.provider.client_id, "other-only");
    assert_eq!(
        other.provider.auth_base_url,
        "https://site-defaults.example"
    );
}

#[test]
fn the_user_file_can_be_moved_with_qlam_hpc_config() {
    let sb = Sandbox::new("cfg-userpath");
    sb.write_site("[defaults]\nauth_base_url = \"https://site.example\"\nclient_id = \"site\"\n");
    sb.write_user("[defaults]\nclient_id = \"xdg\"\n");
    let moved = sb.path().join("elsewhere.toml");
    std::fs::write(&moved, "[defaults]\nclient_id = \"moved\"\n").unwrap();
    assert_eq!(sb.settings(&[]).provider.client_id, "xdg");
    let s = sb.settings(&[("QLAM_HPC_CONFIG", moved.to_str().unwrap())]);
    assert_eq!(
        s.provider.client_id, "moved",
        "QLAM_HPC_CONFIG replaces the XDG path"
    );
    // Without XDG_CONFIG_HOME the user file is ~/.config/qlam-hpc/config.toml.
    sb.write(
        &sb.home().join(".config/qlam-hpc/config.toml"),
        "[defaults]\nclient_id = \"home\"\n",
    );
    let s = sb.settings(&[("XDG_CONFIG_HOME", "")]);
    assert_eq!(s.provider.client_id, "home");
}

#[test]
fn store_section_sets_the_lock_and_the_user_file_wins() {
    let sb = Sandbox::new("cfg-store");
    sb.write_site(
        "[defaults]\nauth_base_url = \"https://s.example\"\nclient_id = \"c\"\n\n[store]\nlock = \"flock\"\nlock_timeout = \"5m\"\n",
    );
    let s = sb.settings(&[]);
    assert_eq!(s.lock, LockMethod::Flock);
    assert_eq!(s.lock_timeout, Duration::from_secs(300));
    sb.write_user("[store]\nlock = \"lease\"\nlock_timeout = 7\n");
    let s = sb.settings(&[]);
    assert_eq!(s.lock, LockMethod::Lease);
    assert_eq!(s.lock_timeout, Duration::from_secs(7));
    let s = sb.settings(&[("QLAM_LOCK", "ofd"), ("QLAM_LOCK_TIMEOUT", "9s")]);
    assert_eq!(s.lock, LockMethod::Ofd);
    assert_eq!(s.lock_timeout, Duration::from_secs(9));
}

#[test]
fn user_store_section_beats_a_lock_set_in_site_defaults() {
    let sb = Sandbox::new("cfg-store-mix");
    sb.write_site(
        "[defaults]\nauth_base_url = \"https://s.example\"\nclient_id = \"c\"\nlock = \"flock\"\nlock_timeout = \"5m\"\n",
    );
    sb.write_user("[store]\nlock = \"lease\"\nlock_timeout = \"7s\"\n");
    let s = sb.settings(&[]);
    // User file > site file (DESIGN §3), whichever section of it names the lock.
    assert_eq!(s.lock, LockMethod::Lease);
    assert_eq!(s.lock_timeout, Duration::from_secs(7));
}

// ---------------------------------------------------------------------------------------------
// Context and provider selection

fn two_contexts(sb: &Sandbox, current: Option<&str>) {
    sb.write_qsh(&qsh(
        current,
        vec![
            qsh_context("alpha", None, vec![oauth("qlam", "https://alpha.example")]),
            qsh_context("beta", None, vec![oauth("qlam", "https://beta.example")]),
            qsh_context(
                "default",
                None,
                vec![oauth("qlam", "https://default.example")],
            ),
        ],
    ));
}

#[test]
fn context_is_flag_then_env_then_current_context_then_default() {
    let sb = Sandbox::new("cfg-context");
    two_contexts(&sb, Some("beta"));
    let flag = |c: &str| Overrides {
        context: Some(c.into()),
        provider: None,
    };

    let s = sb.settings(&[]);
    assert_eq!(
        (s.context.as_str(), s.provider.auth_base_url.as_str()),
        ("beta", "https://beta.example")
    );
    let s = sb.settings(&[("QLAM_CONTEXT", "alpha")]);
    assert_eq!(
        (s.context.as_str(), s.provider.auth_base_url.as_str()),
        ("alpha", "https://alpha.example")
    );
    let s = sb
        .load(&[("QLAM_CONTEXT", "alpha")], &flag("default"))
        .unwrap();
    assert_eq!(
        (s.context.as_str(), s.provider.auth_base_url.as_str()),
        ("default", "https://default.example")
    );
    assert_eq!(s.provider.client_id, "qlam-client");

    two_contexts(&sb, None);
    let s = sb.settings(&[]);
    assert_eq!(
        s.context, "default",
        "no current_context: the context named default"
    );
    assert_eq!(s.provider.auth_base_url, "https://default.example");
    assert!(s.qsh_config_exists);
    assert_eq!(s.files_read, vec![sb.qsh_file()]);
}

#[test]
fn an_unknown_context_is_a_config_error_listing_the_known_ones() {
    let sb = Sandbox::new("cfg-context-unknown");
    two_contexts(&sb, Some("beta"));
    let err = config_error(&sb, &[("QLAM_CONTEXT", "gamma")], &Overrides::default());
    let t = text(&err);
    assert!(
        t.contains("gamma") && t.contains("alpha") && t.contains("beta"),
        "{t}"
    );
    assert!(t.contains(&sb.qsh_file().display().to_string()), "{t}");

    sb.write_qsh(&qsh(
        Some("nowhere"),
        vec![qsh_context(
            "alpha",
            None,
            vec![oauth("qlam", "https://a.example")],
        )],
    ));
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(text(&err).contains("nowhere"), "{err:?}");
}

fn three_providers(sb: &Sandbox, auth_provider: Option<&str>) {
    sb.write_qsh(&qsh(
        Some("default"),
        vec![qsh_context(
            "default",
            auth_provider,
            vec![
                oauth("p1", "https://p1.example"),
                oauth("p2", "https://p2.example"),
                basic("b"),
            ],
        )],
    ));
}

#[test]
fn provider_is_flag_then_env_then_auth_provider() {
    let sb = Sandbox::new("cfg-provider");
    three_providers(&sb, Some("p2"));
    let flag = |p: &str| Overrides {
        context: None,
        provider: Some(p.into()),
    };

    let s = sb.settings(&[]);
    assert_eq!(
        (s.provider_name.as_str(), s.provider.auth_base_url.as_str()),
        ("p2", "https://p2.example")
    );
    assert_eq!(s.provider.client_id, "p2-client");
    let s = sb.settings(&[("QLAM_PROVIDER", "p1")]);
    assert_eq!(
        (s.provider_name.as_str(), s.provider.auth_base_url.as_str()),
        ("p1", "https://p1.example")
    );
    let s = sb.load(&[("QLAM_PROVIDER", "p1")], &flag("p2")).unwrap();
    assert_eq!(s.provider_name, "p2");
}

#[test]
fn without_auth_provider_the_only_oauth_provider_else_qlam() {
    let sb = Sandbox::new("cfg-provider-only");
    sb.write_qsh(&qsh(
        Some("default"),
        vec![qsh_context(
            "default",
            None,
            vec![basic("b"), oauth("solo", "https://solo.example")],
        )],
    ));
    let s = sb.settings(&[]);
    assert_eq!(
        s.provider_name, "solo",
        "the context's only OAuth provider (basic ones do not count)"
    );
    assert_eq!(s.provider.auth_base_url, "https://solo.example");

    // Two OAuth providers and no auth_provider: "qlam", which here comes from the site file.
    three_providers(&sb, None);
    sb.write_site(
        "[providers.qlam]\nauth_base_url = \"https://site-qlam.example\"\nclient_id = \"site\"\n",
    );
    let s = sb.settings(&[]);
    assert_eq!(s.provider_name, "qlam");
    assert_eq!(s.provider.auth_base_url, "https://site-qlam.example");
}

#[test]
fn selecting_a_basic_provider_is_a_config_error() {
    let sb = Sandbox::new("cfg-basic");
    three_providers(&sb, Some("b"));
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(
        err.message().contains("\"b\"") && err.message().contains("not an OAuth provider"),
        "{err:?}"
    );
    three_providers(&sb, Some("p1"));
    let err = config_error(&sb, &[("QLAM_PROVIDER", "b")], &Overrides::default());
    assert!(err.message().contains("not an OAuth provider"), "{err:?}");
    let err = config_error(
        &sb,
        &[],
        &Overrides {
            context: None,
            provider: Some("b".into()),
        },
    );
    assert!(err.message().contains("not an OAuth provider"), "{err:?}");
}

#[test]
fn an_explicit_unknown_provider_is_a_config_error() {
    let sb = Sandbox::new("cfg-unknown-provider");
    three_providers(&sb, Some("p1"));
    sb.write_site("[defaults]\nauth_base_url = \"https://d.example\"\nclient_id = \"d\"\n");
    let err = config_error(&sb, &[("QLAM_PROVIDER", "nope")], &Overrides::default());
    let t = text(&err);
    assert!(
        t.contains("nope") && t.contains("p1") && t.contains("p2"),
        "{t}"
    );
    // A provider defined only in a TOML [providers.NAME] section is known.
    sb.write_user("[providers.nope]\nclient_id = \"from-user\"\n");
    let s = sb.settings(&[("QLAM_PROVIDER", "nope")]);
    assert_eq!(s.provider.client_id, "from-user");
}

#[test]
fn an_auth_provider_that_names_nothing_is_a_config_error() {
    let sb = Sandbox::new("cfg-dangling-provider");
    three_providers(&sb, Some("missing"));
    sb.write_site("[defaults]\nauth_base_url = \"https://d.example\"\nclient_id = \"d\"\n");
    // QLAM Core answers "Unknown auth provider: missing"; DESIGN §3: never a silent fallback.
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(err.message().contains("missing"), "{err:?}");
}

#[test]
fn the_environment_alone_defines_a_provider() {
    let sb = Sandbox::new("cfg-env-only");
    let s = sb.settings(&[
        ("QLAM_AUTH_BASE_URL", "http://127.0.0.1:9"),
        ("QLAM_CLIENT_ID", "env-client"),
        ("QLAM_CONTEXT", "lab"),
        ("QLAM_PROVIDER", "m2m"),
        ("QLAM_GRANT_TYPE", "client_credentials"),
    ]);
    assert_eq!(
        (s.context.as_str(), s.provider_name.as_str()),
        ("lab", "m2m")
    );
    assert!(s.provider.is_m2m());
    assert_eq!(s.provider.grant_type, Some(GrantType::ClientCredentials));
}

#[test]
fn missing_base_url_or_client_id_is_a_config_error_naming_the_variable() {
    let sb = Sandbox::new("cfg-missing");
    let err = config_error(&sb, &[("QLAM_CLIENT_ID", "c")], &Overrides::default());
    assert!(
        text(&err).contains("auth_base_url") && text(&err).contains("QLAM_AUTH_BASE_URL"),
        "{err:?}"
    );
    let err = config_error(
        &sb,
        &[("QLAM_AUTH_BASE_URL", "https://x.example")],
        &Overrides::default(),
    );
    assert!(
        text(&err).contains("client_id") && text(&err).contains("QLAM_CLIENT_ID"),
        "{err:?}"
    );
    let err = config_error(
        &sb,
        &[
            ("QLAM_AUTH_BASE_URL", "ftp://x.example"),
            ("QLAM_CLIENT_ID", "c"),
        ],
        &Overrides::default(),
    );
    assert!(err.message().contains("ftp://x.example"), "{err:?}");
    let err = config_error(
        &sb,
        &[("QLAM_AUTH_BASE_URL", "not a url"), ("QLAM_CLIENT_ID", "c")],
        &Overrides::default(),
    );
    assert!(err.message().contains("not a URL"), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// qsh paths

#[test]
fn qsh_config_dir_and_qsh_config_locate_the_qsh_files() {
    let sb = Sandbox::new("cfg-qshpaths");
    let one = |base: &str| {
        qsh(
            Some("default"),
            vec![qsh_context("default", None, vec![oauth("qlam", base)])],
        )
    };
    // QSH_CONFIG_DIR (the sandbox default).
    sb.write_qsh(&one("https://dir.example"));
    let s = sb.settings(&[]);
    assert_eq!(s.provider.auth_base_url, "https://dir.example");
    assert_eq!(s.qsh.config_dir, sb.qsh_dir());
    assert_eq!(s.qsh.config_file, sb.qsh_file());
    assert_eq!(s.qsh.credentials_dir, sb.qsh_dir().join("credentials"));

    // QSH_CONFIG moves the file only; credentials stay under QSH_CONFIG_DIR, as in QLAM Core.
    let file = sb.path().join("custom.json");
    std::fs::write(
        &file,
        serde_json::to_string(&one("https://file.example")).unwrap(),
    )
    .unwrap();
    let s = sb.settings(&[("QSH_CONFIG", file.to_str().unwrap())]);
    assert_eq!(s.provider.auth_base_url, "https://file.example");
    assert_eq!(s.qsh.config_file, file);
    assert_eq!(s.qsh.credentials_dir, sb.qsh_dir().join("credentials"));

    // Neither: ~/.qsh.
    sb.write(
        &sb.home().join(".qsh/config.json"),
        &serde_json::to_string(&one("https://home.example")).unwrap(),
    );
    let s = sb.settings(&[("QSH_CONFIG_DIR", "")]);
    assert_eq!(s.provider.auth_base_url, "https://home.example");
    assert_eq!(s.qsh.credentials_dir, sb.home().join(".qsh/credentials"));

    // A QSH_CONFIG that does not exist: no qsh file, nothing else read in its place.
    let s = sb
        .load(
            &[
                (
                    "QSH_CONFIG",
                    sb.path().join("absent.json").to_str().unwrap(),
                ),
                ("QLAM_AUTH_BASE_URL", "https://env.example"),
                ("QLAM_CLIENT_ID", "c"),
            ],
            &Overrides::default(),
        )
        .unwrap();
    assert!(!s.qsh_config_exists);
    assert_eq!(s.provider.auth_base_url, "https://env.example");
}

#[test]
fn a_broken_qsh_config_is_a_config_error_naming_the_file() {
    let sb = Sandbox::new("cfg-qsh-broken");
    sb.write(&sb.qsh_file(), "{ not json");
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(
        err.message().contains(&sb.qsh_file().display().to_string()),
        "{err:?}"
    );

    let mut p = oauth("qlam", "https://x.example");
    p["private_key_file"] = json!("/k.pem");
    sb.write_qsh(&qsh(
        Some("default"),
        vec![qsh_context("default", None, vec![p])],
    ));
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(err.message().contains("private_key_file"), "{err:?}");
    assert!(
        err.message().contains(&sb.qsh_file().display().to_string()),
        "{err:?}"
    );
}

fn with_http_client(sb: &Sandbox, http: Value) {
    let mut ctx = qsh_context(
        "default",
        Some("qlam"),
        vec![oauth("qlam", "https://x.example")],
    );
    ctx["defaults"]["http_client"] = http;
    sb.write_qsh(&qsh(Some("default"), vec![ctx]));
}

#[test]
fn qsh_http_client_settings_are_honoured() {
    let sb = Sandbox::new("cfg-http");
    let cases = [
        (json!({"verify_ssl": false}), Verify::Off),
        (json!({"verify_ssl": true}), Verify::Default),
        (json!({"verify_ssl": null}), Verify::Default),
        (json!({}), Verify::Default),
        (
            json!({"verify_ssl": "/etc/site-ca.pem"}),
            Verify::CaBundle("/etc/site-ca.pem".into()),
        ),
    ];
    for (http, want) in cases {
        with_http_client(&sb, http.clone());
        assert_eq!(sb.settings(&[]).http.verify, want, "{http}");
    }
    with_http_client(
        &sb,
        json!({"request_timeout_seconds": 7.5, "follow_redirects": false}),
    );
    let s = sb.settings(&[]);
    assert_eq!(s.http.request_timeout, Duration::from_millis(7500));
    assert!(!s.http.follow_redirects);
    assert_eq!(s.http.verify, Verify::Default);

    with_http_client(&sb, json!({"verify_ssl": 3}));
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(err.message().contains("verify_ssl"), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Loud errors in the TOML files

fn base_site(sb: &Sandbox) {
    sb.write_site("[defaults]\nauth_base_url = \"https://s.example\"\nclient_id = \"c\"\n");
}

#[test]
fn an_unknown_toml_key_names_the_key_and_the_file() {
    let cases = [
        ("[defaults]\ncolour = \"blue\"\n", "colour"),
        ("[providers.qlam]\nclient_idd = \"x\"\n", "client_idd"),
        ("[store]\nlocking = \"ofd\"\n", "locking"),
        ("[storage]\nlock = \"ofd\"\n", "storage"),
        ("top_level = 1\n", "top_level"),
    ];
    for user in [true, false] {
        for (text_, key) in cases {
            let sb = Sandbox::new("cfg-unknown-key");
            let file = if user {
                base_site(&sb);
                sb.write_user(text_);
                sb.user_file()
            } else {
                sb.write_site(&format!(
                    "{text_}\n[providers.base]\nauth_base_url = \"https://s.example\"\nclient_id = \"c\"\n"
                ));
                sb.site_file()
            };
            let err = config_error(&sb, &[], &Overrides::default());
            let t = text(&err);
            assert!(t.contains(key), "{key} not named: {t}");
            assert!(
                t.contains(&file.display().to_string()),
                "{} not named: {t}",
                file.display()
            );
        }
    }
}

#[test]
fn hooks_are_allowed_in_the_site_file_only() {
    let sb = Sandbox::new("cfg-hooks");
    sb.write_site(
        "[defaults]\nauth_base_url = \"https://s.example\"\nclient_id = \"c\"\n\n[hooks]\nenforce = true\nstage_dir = \"/run/site-stage\"\n",
    );
    let s = sb.settings(&[]);
    assert!(s.hooks.enforce);
    assert_eq!(s.hooks.stage_dir, PathBuf::from("/run/site-stage"));

    sb.write_user("[hooks]\nenforce = false\n");
    let err = config_error(&sb, &[], &Overrides::default());
    let t = text(&err);
    assert!(
        t.contains("[hooks]") && t.contains(&sb.user_file().display().to_string()),
        "{t}"
    );
}

#[test]
fn an_invalid_grant_type_is_a_config_error() {
    let sb = Sandbox::new("cfg-grant");
    base_site(&sb);
    let err = config_error(
        &sb,
        &[("QLAM_GRANT_TYPE", "password")],
        &Overrides::default(),
    );
    assert!(
        err.message().contains("password") && err.message().contains("grant_type"),
        "{err:?}"
    );
    sb.write_user("[defaults]\ngrant_type = \"implicit\"\n");
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(err.message().contains("implicit"), "{err:?}");
    let mut p = oauth("qlam", "https://x.example");
    p["grant_type"] = json!("Device_Code");
    sb.write_user("");
    sb.write_qsh(&qsh(
        Some("default"),
        vec![qsh_context("default", None, vec![p])],
    ));
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(err.message().contains("Device_Code"), "{err:?}");
}

#[test]
fn an_invalid_lock_method_is_a_config_error() {
    let sb = Sandbox::new("cfg-lock");
    base_site(&sb);
    for lock in ["nfs", "OFD", "posix"] {
        let err = config_error(&sb, &[("QLAM_LOCK", lock)], &Overrides::default());
        assert!(err.message().contains(lock), "{err:?}");
    }
    sb.write_user("[store]\nlock = \"fcntl\"\n");
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(err.message().contains("fcntl"), "{err:?}");
    sb.write_user("[providers.qlam]\nlock = \"dotlock\"\n");
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(err.message().contains("dotlock"), "{err:?}");
}

#[test]
fn invalid_durations_are_config_errors() {
    let sb = Sandbox::new("cfg-dur");
    base_site(&sb);
    for (var, value, key) in [
        ("QLAM_MIN_TTL", "5x", "min_ttl"),
        ("QLAM_MIN_TTL", "-5s", "min_ttl"),
        ("QLAM_LOCK_TIMEOUT", "soon", "lock_timeout"),
        ("QLAM_REFRESH_DEADLINE", "1h30", "refresh_deadline"),
    ] {
        let err = config_error(&sb, &[(var, value)], &Overrides::default());
        assert!(
            err.message().contains(key) && err.message().contains(value),
            "{var}={value}: {err:?}"
        );
    }
    for (toml_text, key) in [
        ("[defaults]\nmin_ttl = \"5 minutes\"\n", "min_ttl"),
        (
            "[defaults]\nrefresh_token_lifetime = \"1y\"\n",
            "refresh_token_lifetime",
        ),
        ("[store]\nlock_timeout = \"2 m\"\n", "lock_timeout"),
        (
            "[providers.qlam]\nlock_timeout = \"forever\"\n",
            "lock_timeout",
        ),
    ] {
        sb.write_user(toml_text);
        let err = config_error(&sb, &[], &Overrides::default());
        assert!(err.message().contains(key), "{toml_text}: {err:?}");
    }
    // A negative number is no duration either (a TOML type error, naming the file).
    sb.write_user("[defaults]\nmin_ttl = -5\n");
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(
        err.message()
            .contains(&sb.user_file().display().to_string()),
        "{err:?}"
    );
    // Plain seconds are fine.
    sb.write_user("[defaults]\nmin_ttl = 90\n");
    assert_eq!(sb.settings(&[]).min_ttl, Some(Duration::from_secs(90)));
    assert_eq!(
        sb.settings(&[("QLAM_MIN_TTL", "1h30m")]).min_ttl,
        Some(Duration::from_secs(5400))
    );
}

#[test]
fn a_non_numeric_budget_is_a_config_error() {
    let sb = Sandbox::new("cfg-budget");
    base_site(&sb);
    let err = config_error(
        &sb,
        &[("QLAM_M2M_MONTHLY_BUDGET", "lots")],
        &Overrides::default(),
    );
    assert!(err.message().contains("QLAM_M2M_MONTHLY_BUDGET"), "{err:?}");
    sb.write_user("[defaults]\nm2m_monthly_budget = \"20000\"\n");
    let err = config_error(&sb, &[], &Overrides::default());
    assert!(
        text(&err).contains(&sb.user_file().display().to_string()),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scope

#[test]
fn user_scope_defaults_and_adds_the_organization() {
    let sb = Sandbox::new("cfg-scope");
    base_site(&sb);
    let scope = |extra: &[(&str, &str)]| sb.settings(extra).provider.user_scope();
    assert_eq!(scope(&[]), "openid profile email offline_access");
    assert_eq!(
        scope(&[("QLAM_TENANT", "acme")]),
        "openid profile email offline_access organization:acme"
    );
    assert_eq!(
        scope(&[
            ("QLAM_TENANT", "acme"),
            ("QLAM_SCOPE", "openid offline_access")
        ]),
        "openid offline_access organization:acme"
    );
    assert_eq!(
        scope(&[
            ("QLAM_TENANT", "acme"),
            ("QLAM_SCOPE", "organization:acme openid")
        ]),
        "organization:acme openid",
        "not added twice"
    );
    assert_eq!(scope(&[("QLAM_SCOPE", "openid")]), "openid");
}

// ---------------------------------------------------------------------------------------------
// Client secrets (resolved by the session when a request needs them)

#[test]
fn client_secrets_come_from_literals_env_references_and_private_files() {
    use std::os::unix::fs::PermissionsExt;

    use qlam_auth::Secret;
    use qlam_auth::session::Session;

    use crate::support::assert_same_secret;

    let sb = Sandbox::new("cfg-secret");
    base_site(&sb);
    let session = |extra: &[(&str, &str)]| {
        let ctx = sb.ctx(extra);
        let settings = qlam_auth::config::load(&ctx, &Overrides::default()).unwrap();
        Session::new(ctx, settings)
    };

    let s = session(&[("QLAM_CLIENT_SECRET", "literal-value-1")]);
    assert_same_secret(
        &s.client_secret().unwrap().unwrap(),
        &Secret::new("literal-value-1"),
    );
    assert!(
        !format!("{:?}", s.settings).contains("literal-value-1"),
        "Debug of the settings redacts the secret"
    );

    let s = session(&[
        ("QLAM_CLIENT_SECRET", "env:SITE_SECRET"),
        ("SITE_SECRET", "from-env-2"),
    ]);
    assert_same_secret(
        &s.client_secret().unwrap().unwrap(),
        &Secret::new("from-env-2"),
    );
    let s = session(&[("QLAM_CLIENT_SECRET", "env:SITE_SECRET")]);
    let err = s.client_secret().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("SITE_SECRET"), "{err:?}");

    let file = sb.path().join("secret");
    std::fs::write(&file, "from-file-3\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = session(&[("QLAM_CLIENT_SECRET_FILE", file.to_str().unwrap())]);
    assert_same_secret(
        &s.client_secret().unwrap().unwrap(),
        &Secret::new("from-file-3"),
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = s.client_secret().unwrap_err();
    assert!(err.hint().unwrap_or("").contains("chmod 600"), "{err:?}");
    assert!(!format!("{err:?}").contains("from-file-3"));

    assert!(
        session(&[]).client_secret().unwrap().is_none(),
        "a public client"
    );
}
