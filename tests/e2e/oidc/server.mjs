// A real OpenID Connect provider (panva's oidc-provider) over HTTPS on loopback, for
// qlam-hpc's end-to-end tests. It stands in for QLAM's Auth0 tenant: device flow,
// refresh-token rotation with reuse detection (a spent refresh token revokes the whole
// grant, as Auth0 does), revocation, introspection, client credentials.
//
// Usage: node server.mjs   (everything through the environment)
//   TLS_CERT, TLS_KEY     PEM server certificate (SAN 127.0.0.1/localhost) and key; required
//   HOST                  listen address, default 127.0.0.1 (the issuer uses it too)
//   PORT                  listen port, default 0 (a free port)
//   ACCESS_TTL            access-token lifetime in seconds, default 120
//   REFRESH_TTL           refresh-token lifetime in seconds, default 15 days (QLAM's);
//                         a rotated refresh token keeps the remaining lifetime of the one
//                         it replaces, so a login has an absolute lifetime
//   DEVICE_TTL            device-code lifetime in seconds, default 600
//   SIGNING_KEY           PEM RSA private key for ID tokens (RS256, as Auth0 signs); without
//                         it one is generated at start (in-process RSA key generation was
//                         seen to stall on a loaded machine, so the test fixtures pass one)
//   EXTRA_CLIENTS         path to a JSON array of extra client registrations (oidc-provider
//                         client metadata), e.g. M2M clients
//   CLIENT_AUTH_METHODS   comma-separated token-endpoint client authentication methods the
//                         provider accepts and lists in discovery; default oidc-provider's
//                         (client_secret_basic, client_secret_jwt, client_secret_post,
//                         private_key_jwt, none)
//   EXIT_ON_STDIN_EOF     "1": exit when stdin closes (the test runner went away)
//
// When listening it prints the issuer URL (no trailing slash) as one line on stdout.
// Nothing else goes to stdout; warnings go to stderr. Token values are never logged.
//
// Test-only admin routes on the same HTTPS port, answered before the provider sees the
// request (never used by qlam-hpc):
//   GET  /_e2e/health     {"ok": true}
//   GET  /_e2e/counters   token-endpoint and event counters (see `counters` below)
//   POST /_e2e/token      body {"token": "..."}: what the provider's store holds for that
//                         access or refresh token (kind, consumed, expired, grant alive);
//                         unlike the token endpoint this never spends a refresh token

import { createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import Provider from 'oidc-provider';

const env = process.env;

function intEnv(name, fallback) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number.parseInt(raw, 10);
  if (!Number.isFinite(value) || value < 0 || String(value) !== raw.trim()) {
    console.error(`oidc server: ${name} must be a non-negative integer (seconds), got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return value;
}

const HOST = env.HOST || '127.0.0.1';
const PORT = intEnv('PORT', 0);
const ACCESS_TTL = intEnv('ACCESS_TTL', 120);
const REFRESH_TTL = intEnv('REFRESH_TTL', 15 * 24 * 60 * 60);
const DEVICE_TTL = intEnv('DEVICE_TTL', 600);

if (!env.TLS_CERT || !env.TLS_KEY) {
  console.error('oidc server: TLS_CERT and TLS_KEY (PEM paths) are required: QLAM clients refuse http:// endpoints');
  process.exit(2);
}

// The public client qlam-hpc and QLAM Core log in with. It mirrors QLAM's Auth0 "Native"
// application: no secret, device code + authorization code (PKCE) + refresh token, and
// QLAM Shell's loopback redirect URI.
const PUBLIC_CLIENT_ID = 'qlam-hpc-e2e';

// Confidential client the tests use to call the introspection endpoint. It holds no grant.
const INTROSPECTOR = { client_id: 'e2e-introspector', client_secret: 'e2e-introspector-secret' };

const clients = [
  {
    client_id: PUBLIC_CLIENT_ID,
    client_name: 'qlam-hpc e2e',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: [
      'urn:ietf:params:oauth:grant-type:device_code',
      'refresh_token',
      'authorization_code',
    ],
    response_types: ['code'],
    redirect_uris: ['http://localhost:18080/auth/callback'],
  },
  {
    ...INTROSPECTOR,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
];

if (env.EXTRA_CLIENTS) {
  const extra = JSON.parse(readFileSync(env.EXTRA_CLIENTS, 'utf8'));
  if (!Array.isArray(extra)) {
    console.error('oidc server: EXTRA_CLIENTS must hold a JSON array of client registrations');
    process.exit(2);
  }
  clients.push(...extra);
}

// ---------------------------------------------------------------------------------------
// Counters the tests read through GET /_e2e/counters. Grant types are reported by their
// short names (device_code, refresh_token, authorization_code, client_credentials).

const SHORT_GRANT = {
  'urn:ietf:params:oauth:grant-type:device_code': 'device_code',
  'urn:ietf:params:oauth:grant-type:token-exchange': 'token_exchange',
};
const shortGrant = (gt) => SHORT_GRANT[gt] || gt || 'unknown';
const bump = (map, key, by = 1) => { map[key] = (map[key] || 0) + by; };

const counters = {
  token_requests: {},         // every POST to the token endpoint, by grant type
  token_requests_total: 0,
  token_responses: {},        // by grant type, then HTTP status
  token_client_auth: {},      // by grant type, then how the client authenticated:
                              // client_secret_basic (Authorization header), client_secret_post
                              // (secret in the body), client_assertion, none
  grant_success: {},          // tokens issued, by grant type
  grant_errors: {},           // error codes returned by the token endpoint
  refreshes: 0,               // successful refresh_token grants
  invalid_grant: 0,           // invalid_grant errors, any grant type
  refresh_token_reuse: 0,     // a spent refresh token presented again (grant revoked)
  refresh_token_consumed: 0,  // refresh tokens spent by rotation
  grant_revocations: 0,       // whole grants revoked (reuse detection, revocation endpoint)
  device_authorizations: 0,   // successful device authorization requests
  revocation_requests: 0,
  introspection_requests: 0,
  server_errors: 0,
};

// ---------------------------------------------------------------------------------------

const privateKey = env.SIGNING_KEY
  ? createPrivateKey(readFileSync(env.SIGNING_KEY))
  : generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
if (privateKey.asymmetricKeyType !== 'rsa') {
  console.error('oidc server: SIGNING_KEY must be an RSA private key (ID tokens are RS256)');
  process.exit(2);
}
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'e2e-rs256' };

const host = HOST.includes(':') ? `[${HOST}]` : HOST;

function refreshTokenTTL(ctx) {
  // Rotation keeps the family's absolute lifetime, as the login's refresh-token lifetime
  // does at QLAM's tenant (15 days from the login, not from the last refresh).
  const rotated = ctx?.oidc?.entities?.RotatedRefreshToken;
  if (rotated) return Math.max(rotated.remainingTTL, 1);
  return REFRESH_TTL;
}

const CLIENT_AUTH_METHODS = (env.CLIENT_AUTH_METHODS || '').split(',').map((m) => m.trim()).filter(Boolean);

const configuration = {
  clients,
  ...(CLIENT_AUTH_METHODS.length ? { clientAuthMethods: CLIENT_AUTH_METHODS } : {}),
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'nickname'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: id, nickname: id, email: `${id}@example.test`, email_verified: true };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: {
      enabled: true,
      // The introspector may look at any token; any other client only at its own.
      allowedPolicy(ctx, client, token) {
        return client.clientId === INTROSPECTOR.client_id || token.clientId === client.clientId;
      },
    },
    clientCredentials: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  // Every refresh returns a new refresh token and spends the old one; presenting a spent
  // one revokes the grant (oidc-provider's refresh_token grant does that unconditionally).
  rotateRefreshToken: () => true,
  // Device flow and refresh grant issue refresh tokens to any client allowed the
  // refresh_token grant, and they do not die with the approving browser's session.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  ttl: {
    AccessToken: ACCESS_TTL,
    ClientCredentials: ACCESS_TTL,
    DeviceCode: DEVICE_TTL,
    RefreshToken: refreshTokenTTL,
    Grant: REFRESH_TTL,
    Session: REFRESH_TTL,
    IdToken: 3600,
    Interaction: 3600,
    AuthorizationCode: 60,
  },
  // Keep noisy defaults quiet and error pages short.
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>oops! something went wrong</title></head><body><h1>oops! something went wrong</h1><pre>${escapeHtml(JSON.stringify(out))}</pre></body></html>`;
  },
};

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

const tls = { cert: readFileSync(env.TLS_CERT), key: readFileSync(env.TLS_KEY) };

// The issuer needs the port, so listen first and build the provider after.
const server = createServer(tls);
server.keepAliveTimeout = 5000;

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, HOST, resolve);
});

const issuer = `https://${host}:${server.address().port}`;
const provider = new Provider(issuer, configuration);

provider.on('grant.success', (ctx) => {
  const gt = shortGrant(ctx.oidc.params?.grant_type);
  bump(counters.grant_success, gt);
  if (gt === 'refresh_token') counters.refreshes += 1;
});
provider.on('grant.error', (ctx, err) => {
  const code = err?.error || 'unknown';
  bump(counters.grant_errors, code);
  if (code === 'invalid_grant') {
    counters.invalid_grant += 1;
    if (err.error_detail === 'refresh token already used') counters.refresh_token_reuse += 1;
  }
});
provider.on('grant.revoked', () => { counters.grant_revocations += 1; });
provider.on('refresh_token.consumed', () => { counters.refresh_token_consumed += 1; });
provider.on('device_authorization.success', () => { counters.device_authorizations += 1; });
provider.on('server_error', (ctx, err) => {
  counters.server_errors += 1;
  console.error(`oidc server: server_error on ${ctx?.method} ${ctx?.path}: ${err?.message}`);
});

// Counts every token-endpoint request by grant type and response status, whatever the
// outcome (events only fire for some outcomes).
provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route === 'token') {
    const gt = shortGrant(ctx.oidc.params?.grant_type ?? ctx.oidc.body?.grant_type);
    bump(counters.token_requests, gt);
    counters.token_requests_total += 1;
    counters.token_responses[gt] ||= {};
    bump(counters.token_responses[gt], String(ctx.status));
    const body = ctx.oidc.body || {};
    const how = ctx.headers.authorization ? 'client_secret_basic'
      : body.client_assertion ? 'client_assertion'
        : body.client_secret ? 'client_secret_post' : 'none';
    counters.token_client_auth[gt] ||= {};
    bump(counters.token_client_auth[gt], how);
  } else if (route === 'revocation') {
    counters.revocation_requests += 1;
  } else if (route === 'introspection') {
    counters.introspection_requests += 1;
  }
});

async function describeToken(value) {
  if (typeof value !== 'string' || !value) return { found: false };
  for (const kind of ['AccessToken', 'RefreshToken', 'ClientCredentials']) {
    // eslint-disable-next-line no-await-in-loop
    const token = await provider[kind].find(value, { ignoreExpiration: true });
    if (token) {
      // eslint-disable-next-line no-await-in-loop
      const grant = token.grantId ? await provider.Grant.find(token.grantId) : undefined;
      return {
        found: true,
        kind,
        client_id: token.clientId,
        sub: token.accountId,
        scope: token.scope,
        exp: token.exp,
        iat: token.iat,
        expired: Boolean(token.isExpired),
        consumed: Boolean(token.consumed),
        rotations: token.rotations ?? 0,
        grant_id: token.grantId,
        grant_active: token.grantId ? Boolean(grant && !grant.isExpired) : null,
        valid: Boolean(token.isValid) && (!token.grantId || Boolean(grant && !grant.isExpired)),
      };
    }
  }
  return { found: false };
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(data);
}

async function readBody(req, limit = 64 * 1024) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function admin(req, res) {
  const path = new URL(req.url, issuer).pathname;
  try {
    if (req.method === 'GET' && path === '/_e2e/health') return sendJson(res, 200, { ok: true, issuer });
    if (req.method === 'GET' && path === '/_e2e/counters') return sendJson(res, 200, counters);
    if (req.method === 'POST' && path === '/_e2e/token') {
      const { token } = JSON.parse(await readBody(req) || '{}');
      return sendJson(res, 200, await describeToken(token));
    }
    return sendJson(res, 404, { error: 'not_found' });
  } catch (err) {
    return sendJson(res, 400, { error: 'bad_request', detail: String(err?.message || err) });
  }
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/_e2e/')) {
    admin(req, res);
  } else {
    providerCallback(req, res);
  }
});

let closing = false;
function shutdown() {
  if (closing) return;
  closing = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (env.EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}

process.stdout.write(`${issuer}\n`);
