//! The IdP's state machine: device codes, authorization codes, refresh-token families,
//! access tokens, counters, the request log and the fault queue. All of it lives behind
//! one mutex, so each request is handled atomically and counters are exact.
//!
//! Refresh tokens rotate: each one belongs to a *family* (one login). Redeeming a token
//! marks it used and issues a new one in the same family; redeeming a used token again
//! later than `reuse_interval` after its first use revokes the family, which makes every
//! token of that login inactive.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::assertion::AssertionState;
use crate::error::OAuthError;
use crate::faults::FaultQueue;
use crate::jwt;
use crate::record::{Counters, RequestRecord};
use crate::util::{has_scope, random_token, random_user_code, unix_now};

/// The user who approves through [`crate::Idp::approve`], `/admin/approve` and the pages.
pub(crate) const TEST_USER: &str = "test-user";
/// The user of auto-approved logins.
pub(crate) const DEMO_USER: &str = "demo-user";
/// Scope given when a user flow asks for none.
pub(crate) const DEFAULT_SCOPE: &str = "openid profile email offline_access";
/// The request log keeps this many most recent records (long benchmarks).
const MAX_LOG: usize = 100_000;
/// Authorization codes live this long.
const AUTH_CODE_TTL: Duration = Duration::from_secs(600);
/// Interval enforced when the configuration omits `interval` (RFC 8628 §3.2 default).
const DEFAULT_DEVICE_INTERVAL: u64 = 5;
/// RFC 8628 §3.5: each `slow_down` adds this to the code's interval.
const SLOW_DOWN_STEP: u64 = 5;

/// `(email, name)` of a user.
pub(crate) fn profile(sub: &str) -> (String, String) {
    let name = match sub {
        TEST_USER => "Test User".to_string(),
        DEMO_USER => "Demo User".to_string(),
        other => other.to_string(),
    };
    (format!("{sub}@example.com"), name)
}

/// Settings that may change while the IdP runs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) access_token_ttl: u64,
    pub(crate) refresh_token_ttl: u64,
    pub(crate) device_code_ttl: u64,
    pub(crate) device_interval: Option<u64>,
    pub(crate) reuse_interval: u64,
    pub(crate) auto_approve: bool,
    pub(crate) m2m_quota: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved(String),
    Denied,
}

#[derive(Debug)]
struct DeviceGrant {
    seq: u64,
    client_id: String,
    scope: String,
    audience: Option<String>,
    user_code: String,
    expires_at: Instant,
    /// Current minimum spacing of polls, in seconds (grows with each `slow_down`).
    interval: u64,
    last_poll: Option<Instant>,
    status: DeviceStatus,
}

/// One login: the refresh tokens descended from it share its fate.
#[derive(Debug)]
struct Family {
    client_id: String,
    sub: String,
    scope: String,
    audience: Option<String>,
    organization: Option<String>,
    expires_at: Instant,
    revoked: bool,
}

#[derive(Debug)]
struct RefreshToken {
    family: usize,
    /// When it was first redeemed.
    used_at: Option<Instant>,
}

#[derive(Debug)]
struct AccessToken {
    client_id: String,
    /// The user, or `<client_id>@clients` for client credentials (as Auth0 does).
    sub: String,
    user: bool,
    scope: String,
    audience: Option<String>,
    /// Auth0 organization the token was issued for, if any (`org_id` in introspection).
    organization: Option<String>,
    iat: u64,
    expires_at: Instant,
    exp: u64,
    family: Option<usize>,
    revoked: bool,
}

/// An `/authorize` request waiting for a person to approve it.
#[derive(Debug, Clone)]
pub(crate) struct AuthRequest {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scope: String,
    pub(crate) state: Option<String>,
    pub(crate) code_challenge: String,
    pub(crate) audience: Option<String>,
    pub(crate) organization: Option<String>,
}

#[derive(Debug)]
struct AuthCode {
    req: AuthRequest,
    sub: String,
    expires_at: Instant,
}

/// Who and what new tokens are for.
struct Subject<'a> {
    client_id: &'a str,
    sub: &'a str,
    scope: &'a str,
    audience: Option<&'a str>,
    organization: Option<&'a str>,
}

/// Everything the IdP knows. See the module documentation.
pub(crate) struct State {
    pub(crate) settings: Settings,
    pub(crate) issuer: String,
    pub(crate) counters: Counters,
    log: VecDeque<RequestRecord>,
    logged: u64,
    pub(crate) faults: FaultQueue,
    /// private_key_jwt: used `jti`s, revoked keys, forced rejections (not cleared by
    /// `reset_counters`).
    pub(crate) assertions: AssertionState,
    next_seq: u64,
    devices: HashMap<String, DeviceGrant>,
    /// user code → device code, for codes not yet redeemed.
    user_codes: HashMap<String, String>,
    auth_requests: HashMap<String, AuthRequest>,
    auth_codes: HashMap<String, AuthCode>,
    families: Vec<Family>,
    refresh: HashMap<String, RefreshToken>,
    access: HashMap<String, AccessToken>,
    /// Client-credentials tokens minted in the IdP's lifetime (the quota's unit; not
    /// cleared by `reset_counters`).
    m2m_minted: u64,
}

impl State {
    pub(crate) fn new(settings: Settings, issuer: String) -> State {
        State {
            settings,
            issuer,
            counters: Counters::default(),
            log: VecDeque::new(),
            logged: 0,
            faults: FaultQueue::default(),
            assertions: AssertionState::default(),
            next_seq: 0,
            devices: HashMap::new(),
            user_codes: HashMap::new(),
            auth_requests: HashMap::new(),
            auth_codes: HashMap::new(),
            families: Vec::new(),
            refresh: HashMap::new(),
            access: HashMap::new(),
            m2m_minted: 0,
        }
    }

    /// Appends a request record, numbering it; the oldest go past [`MAX_LOG`].
    pub(crate) fn record(&mut self, mut rec: RequestRecord) {
        self.logged += 1;
        rec.seq = self.logged;
        if self.log.len() == MAX_LOG {
            self.log.pop_front();
        }
        self.log.push_back(rec);
    }

    /// The request log, oldest first.
    pub(crate) fn log(&self) -> Vec<RequestRecord> {
        self.log.iter().cloned().collect()
    }

    /// Clears counters and the request log.
    pub(crate) fn reset_counters(&mut self) {
        self.counters = Counters::default();
        self.log.clear();
        self.logged = 0;
    }

    // ---- device authorization (RFC 8628) ----

    pub(crate) fn device_authorize(
        &mut self,
        now: Instant,
        client_id: &str,
        scope: &str,
        audience: Option<&str>,
        base_url: &str,
    ) -> Value {
        let device_code = random_token("dc_");
        let user_code = loop {
            let c = random_user_code();
            if !self.user_codes.contains_key(&c) {
                break c;
            }
        };
        let status = if self.settings.auto_approve {
            DeviceStatus::Approved(DEMO_USER.into())
        } else {
            DeviceStatus::Pending
        };
        self.next_seq += 1;
        self.devices.insert(
            device_code.clone(),
            DeviceGrant {
                seq: self.next_seq,
                client_id: client_id.into(),
                scope: scope.into(),
                audience: audience.map(Into::into),
                user_code: user_code.clone(),
                expires_at: now + Duration::from_secs(self.settings.device_code_ttl),
                interval: self
                    .settings
                    .device_interval
                    .unwrap_or(DEFAULT_DEVICE_INTERVAL),
                last_poll: None,
                status,
            },
        );
        self.user_codes
            .insert(user_code.clone(), device_code.clone());
        let mut body = json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": format!("{base_url}/activate"),
            "verification_uri_complete": format!("{base_url}/activate?user_code={user_code}"),
            "expires_in": self.settings.device_code_ttl,
        });
        if let Some(i) = self.settings.device_interval {
            body["interval"] = json!(i);
        }
        body
    }

    /// One poll of the device-code grant.
    pub(crate) fn device_token(
        &mut self,
        now: Instant,
        client_id: &str,
        device_code: &str,
    ) -> Result<Value, OAuthError> {
        let g = self
            .devices
            .get_mut(device_code)
            .ok_or_else(|| OAuthError::invalid_grant("unknown or already redeemed device code"))?;
        if g.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "device code was issued to another client",
            ));
        }
        if now >= g.expires_at {
            return Err(OAuthError::bad(
                "expired_token",
                "the device code has expired",
            ));
        }
        let too_soon = g
            .last_poll
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(g.interval));
        g.last_poll = Some(now);
        if too_soon {
            g.interval += SLOW_DOWN_STEP;
            return Err(OAuthError::bad(
                "slow_down",
                format!(
                    "polling too fast: wait at least {} s between polls",
                    g.interval
                ),
            ));
        }
        let sub = match &g.status {
            DeviceStatus::Pending => {
                return Err(OAuthError::bad(
                    "authorization_pending",
                    "the user has not yet approved this device code",
                ));
            }
            DeviceStatus::Denied => {
                return Err(OAuthError::bad(
                    "access_denied",
                    "the user denied the authorization request",
                ));
            }
            DeviceStatus::Approved(sub) => sub.clone(),
        };
        let g = self
            .devices
            .remove(device_code)
            .expect("device grant present");
        self.user_codes.remove(&g.user_code);
        Ok(self.mint_user_tokens(
            now,
            &Subject {
                client_id,
                sub: &sub,
                scope: &g.scope,
                audience: g.audience.as_deref(),
                organization: None,
            },
            None,
        ))
    }

    /// Approves (`Some(user)`) or denies (`None`) a pending, unexpired device code.
    pub(crate) fn decide_device(
        &mut self,
        now: Instant,
        user_code: &str,
        user: Option<&str>,
    ) -> bool {
        let Some(g) = self
            .user_codes
            .get(user_code)
            .and_then(|dc| self.devices.get_mut(dc))
        else {
            return false;
        };
        if g.status != DeviceStatus::Pending || now >= g.expires_at {
            return false;
        }
        g.status = match user {
            Some(u) => DeviceStatus::Approved(u.into()),
            None => DeviceStatus::Denied,
        };
        true
    }

    /// User codes waiting for a decision, oldest first.
    pub(crate) fn pending_user_codes(&self, now: Instant) -> Vec<String> {
        let mut pending: Vec<_> = self
            .devices
            .values()
            .filter(|g| g.status == DeviceStatus::Pending && now < g.expires_at)
            .map(|g| (g.seq, g.user_code.clone()))
            .collect();
        pending.sort();
        pending.into_iter().map(|(_, c)| c).collect()
    }

    // ---- refresh tokens ----

    pub(crate) fn refresh(
        &mut self,
        now: Instant,
        client_id: &str,
        token: &str,
        scope: Option<&str>,
        audience: Option<&str>,
        organization: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let rt = self
            .refresh
            .get(token)
            .ok_or_else(|| OAuthError::invalid_grant("unknown refresh token"))?;
        let (family_id, used_at) = (rt.family, rt.used_at);
        let family = &self.families[family_id];
        if family.revoked {
            return Err(OAuthError::invalid_grant(
                "the refresh token has been revoked",
            ));
        }
        if family.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        if now >= family.expires_at {
            return Err(OAuthError::invalid_grant("the refresh token has expired"));
        }
        let extra = scope.and_then(|requested| {
            requested
                .split_ascii_whitespace()
                .find(|s| !has_scope(&family.scope, s))
        });
        if let Some(extra) = extra {
            return Err(OAuthError::bad(
                "invalid_scope",
                format!("scope {extra:?} was not granted to this login"),
            ));
        }
        match used_at {
            None => {
                if let Some(rt) = self.refresh.get_mut(token) {
                    rt.used_at = Some(now);
                }
            }
            Some(first) => {
                let grace = Duration::from_secs(self.settings.reuse_interval);
                if grace.is_zero() || now.duration_since(first) >= grace {
                    self.revoke_family(family_id);
                    return Err(OAuthError::invalid_grant(
                        "refresh token reuse detected: every token of this login has been revoked",
                    ));
                }
            }
        }
        let family = &self.families[family_id];
        let (sub, fscope) = (family.sub.clone(), family.scope.clone());
        let audience = audience.map(Into::into).or_else(|| family.audience.clone());
        let organization = organization
            .map(Into::into)
            .or_else(|| family.organization.clone());
        Ok(self.mint_user_tokens(
            now,
            &Subject {
                client_id,
                sub: &sub,
                scope: &fscope,
                audience: audience.as_deref(),
                organization: organization.as_deref(),
            },
            Some(family_id),
        ))
    }

    fn revoke_family(&mut self, id: usize) {
        let f = &mut self.families[id];
        if !f.revoked {
            f.revoked = true;
            self.counters.families_revoked += 1;
        }
    }

    /// Revokes every refresh-token family (an admin revoking all logins).
    pub(crate) fn revoke_all(&mut self) {
        for id in 0..self.families.len() {
            self.revoke_family(id);
        }
    }

    // ---- client credentials ----

    pub(crate) fn client_credentials(
        &mut self,
        now: Instant,
        client_id: &str,
        scope: Option<&str>,
        audience: Option<&str>,
        organization: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let minted = self.m2m_minted;
        if let Some(quota) = self.settings.m2m_quota.filter(|q| minted >= *q) {
            return Err(OAuthError {
                status: 429,
                error: "too_many_requests",
                description: format!("quota of {quota} client-credentials tokens exhausted"),
                injected: None,
            });
        }
        self.m2m_minted += 1;
        let sub = format!("{client_id}@clients");
        let (token, ttl) = self.new_access_token(
            now,
            &Subject {
                client_id,
                sub: &sub,
                scope: scope.unwrap_or(""),
                audience,
                organization,
            },
            false,
            None,
        );
        let mut body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
        });
        if let Some(s) = scope {
            body["scope"] = json!(s);
        }
        Ok(body)
    }

    // ---- authorization code + PKCE ----

    /// Keeps a request until a person approves or denies it; returns its id.
    pub(crate) fn add_auth_request(&mut self, req: AuthRequest) -> String {
        let id = random_token("ar_");
        self.auth_requests.insert(id.clone(), req);
        id
    }

    pub(crate) fn take_auth_request(&mut self, id: &str) -> Option<AuthRequest> {
        self.auth_requests.remove(id)
    }

    /// Issues an authorization code for an approved request.
    pub(crate) fn issue_code(&mut self, now: Instant, req: AuthRequest, sub: &str) -> String {
        let code = random_token("ac_");
        self.auth_codes.insert(
            code.clone(),
            AuthCode {
                req,
                sub: sub.into(),
                expires_at: now + AUTH_CODE_TTL,
            },
        );
        code
    }

    /// Redeems a code (single use: the code is consumed by any attempt).
    pub(crate) fn exchange_code(
        &mut self,
        now: Instant,
        client_id: &str,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let c = self.auth_codes.remove(code).ok_or_else(|| {
            OAuthError::invalid_grant("unknown or already used authorization code")
        })?;
        if c.req.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "the authorization code was issued to another client",
            ));
        }
        if now >= c.expires_at {
            return Err(OAuthError::invalid_grant(
                "the authorization code has expired",
            ));
        }
        if redirect_uri != Some(c.req.redirect_uri.as_str()) {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        let verifier =
            verifier.ok_or_else(|| OAuthError::invalid_grant("code_verifier is required"))?;
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !well_formed {
            return Err(OAuthError::invalid_grant(
                "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]",
            ));
        }
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if challenge != c.req.code_challenge {
            return Err(OAuthError::invalid_grant(
                "code_verifier does not match the code_challenge",
            ));
        }
        Ok(self.mint_user_tokens(
            now,
            &Subject {
                client_id,
                sub: &c.sub,
                scope: &c.req.scope,
                audience: c.req.audience.as_deref(),
                organization: c.req.organization.as_deref(),
            },
            None,
        ))
    }

    // ---- revocation, introspection, userinfo ----

    /// RFC 7009: a refresh token takes its family with it; an access token only itself.
    /// Tokens of another client (when `client_id` is given) and unknown tokens are ignored.
    pub(crate) fn revoke(&mut self, token: &str, client_id: Option<&str>) {
        if let Some(rt) = self.refresh.get(token) {
            let id = rt.family;
            if client_id.is_none_or(|c| c == self.families[id].client_id) {
                self.revoke_family(id);
            }
        } else if let Some(at) = self
            .access
            .get_mut(token)
            .filter(|at| client_id.is_none_or(|c| c == at.client_id))
        {
            at.revoked = true;
        }
    }

    fn family_alive(&self, id: Option<usize>, now: Instant) -> bool {
        id.is_none_or(|id| {
            let f = &self.families[id];
            !f.revoked && now < f.expires_at
        })
    }

    fn access_active(&self, at: &AccessToken, now: Instant) -> bool {
        !at.revoked && now < at.expires_at && self.family_alive(at.family, now)
    }

    /// RFC 7662 answer for a token; `{"active":false}` for anything unusable. A refresh
    /// token is active while it can be redeemed without triggering reuse detection.
    pub(crate) fn introspect(&self, now: Instant, token: &str) -> Value {
        if let Some(at) = self.access.get(token) {
            if self.access_active(at, now) {
                let mut v = json!({
                    "active": true,
                    "token_type": "access_token",
                    "client_id": at.client_id,
                    "sub": at.sub,
                    "scope": at.scope,
                    "iat": at.iat,
                    "exp": at.exp,
                    "iss": self.issuer,
                });
                if let Some(aud) = &at.audience {
                    v["aud"] = json!(aud);
                }
                if let Some(org) = &at.organization {
                    v["org_id"] = json!(org);
                }
                return v;
            }
        } else if let Some(rt) = self.refresh.get(token) {
            let grace = Duration::from_secs(self.settings.reuse_interval);
            let redeemable = rt
                .used_at
                .is_none_or(|t| !grace.is_zero() && now.duration_since(t) < grace);
            if redeemable && self.family_alive(Some(rt.family), now) {
                let f = &self.families[rt.family];
                return json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "client_id": f.client_id,
                    "sub": f.sub,
                    "scope": f.scope,
                    "iss": self.issuer,
                });
            }
        }
        json!({"active": false})
    }

    /// Claims for `/userinfo`, if the access token is active and belongs to a user.
    pub(crate) fn userinfo(&self, now: Instant, token: &str) -> Option<Value> {
        let at = self.access.get(token)?;
        if !at.user || !self.access_active(at, now) {
            return None;
        }
        let (email, name) = profile(&at.sub);
        Some(json!({"sub": at.sub, "email": email, "email_verified": true, "name": name}))
    }

    // ---- minting ----

    fn new_access_token(
        &mut self,
        now: Instant,
        s: &Subject<'_>,
        user: bool,
        family: Option<usize>,
    ) -> (String, u64) {
        let ttl = self.settings.access_token_ttl;
        let iat = unix_now();
        let token = random_token("at_");
        self.access.insert(
            token.clone(),
            AccessToken {
                client_id: s.client_id.into(),
                sub: s.sub.into(),
                user,
                scope: s.scope.into(),
                audience: s.audience.map(Into::into),
                organization: s.organization.map(Into::into),
                iat,
                expires_at: now + Duration::from_secs(ttl),
                exp: iat + ttl,
                family,
                revoked: false,
            },
        );
        (token, ttl)
    }

    /// Issues tokens for a user: an access token; a refresh token in `family` (a new one
    /// when `None`) if the scope has `offline_access`; an ID token if it has `openid`.
    fn mint_user_tokens(&mut self, now: Instant, s: &Subject<'_>, family: Option<usize>) -> Value {
        let offline = has_scope(s.scope, "offline_access");
        let family = if offline {
            Some(family.unwrap_or_else(|| {
                self.families.push(Family {
                    client_id: s.client_id.into(),
                    sub: s.sub.into(),
                    scope: s.scope.into(),
                    audience: s.audience.map(Into::into),
                    organization: s.organization.map(Into::into),
                    expires_at: now + Duration::from_secs(self.settings.refresh_token_ttl),
                    revoked: false,
                });
                self.families.len() - 1
            }))
        } else {
            None
        };
        let (access_token, ttl) = self.new_access_token(now, s, true, family);
        let mut body = Map::new();
        body.insert("access_token".into(), json!(access_token));
        if let Some(family) = family {
            let rt = random_token("rt_");
            self.refresh.insert(
                rt.clone(),
                RefreshToken {
                    family,
                    used_at: None,
                },
            );
            body.insert("refresh_token".into(), json!(rt));
        }
        if has_scope(s.scope, "openid") {
            let id_token = jwt::id_token(&self.issuer, s.sub, s.client_id, unix_now(), ttl);
            body.insert("id_token".into(), json!(id_token));
        }
        body.insert("token_type".into(), json!("Bearer"));
        body.insert("expires_in".into(), json!(ttl));
        body.insert("scope".into(), json!(s.scope));
        Value::Object(body)
    }
}
