//! Every environment variable name qlam-hpc reads, in one place. Nothing else in the
//! workspace spells these names.

/// The environment variables qlam-hpc honours (DESIGN §3).
pub struct EnvVars;

impl EnvVars {
    /// QLAM Shell's config directory; holds `config.json` and `credentials/`.
    pub const QSH_CONFIG_DIR: &'static str = "QSH_CONFIG_DIR";
    /// QLAM Shell's config file, overriding `$QSH_CONFIG_DIR/config.json`.
    pub const QSH_CONFIG: &'static str = "QSH_CONFIG";
    /// The context to use.
    pub const QLAM_CONTEXT: &'static str = "QLAM_CONTEXT";
    /// The provider to use within the context.
    pub const QLAM_PROVIDER: &'static str = "QLAM_PROVIDER";
    /// Provider field `auth_base_url`.
    pub const QLAM_AUTH_BASE_URL: &'static str = "QLAM_AUTH_BASE_URL";
    /// Provider field `client_id`.
    pub const QLAM_CLIENT_ID: &'static str = "QLAM_CLIENT_ID";
    /// Provider field `client_secret` (literal or `env:VAR`).
    pub const QLAM_CLIENT_SECRET: &'static str = "QLAM_CLIENT_SECRET";
    /// A 0600 file holding the client secret.
    pub const QLAM_CLIENT_SECRET_FILE: &'static str = "QLAM_CLIENT_SECRET_FILE";
    /// private_key_jwt: the PEM key file.
    pub const QLAM_PRIVATE_KEY_FILE: &'static str = "QLAM_PRIVATE_KEY_FILE";
    /// private_key_jwt: the signing algorithm.
    pub const QLAM_PRIVATE_KEY_ALG: &'static str = "QLAM_PRIVATE_KEY_ALG";
    /// private_key_jwt: the key id (`kid`).
    pub const QLAM_KEY_ID: &'static str = "QLAM_KEY_ID";
    /// Provider field `token_endpoint_auth_method`.
    pub const QLAM_TOKEN_ENDPOINT_AUTH_METHOD: &'static str = "QLAM_TOKEN_ENDPOINT_AUTH_METHOD";
    /// Provider field `audience`.
    pub const QLAM_AUDIENCE: &'static str = "QLAM_AUDIENCE";
    /// Provider field `scope`.
    pub const QLAM_SCOPE: &'static str = "QLAM_SCOPE";
    /// Provider field `tenant` (the Auth0 organization).
    pub const QLAM_TENANT: &'static str = "QLAM_TENANT";
    /// Provider field `grant_type`.
    pub const QLAM_GRANT_TYPE: &'static str = "QLAM_GRANT_TYPE";
    /// Default for `--min-ttl`.
    pub const QLAM_MIN_TTL: &'static str = "QLAM_MIN_TTL";
    /// The lock method: `auto`, `ofd`, `flock` or `lease`.
    pub const QLAM_LOCK: &'static str = "QLAM_LOCK";
    /// How long to wait for the store lock.
    pub const QLAM_LOCK_TIMEOUT: &'static str = "QLAM_LOCK_TIMEOUT";
    /// The M2M monthly mint budget.
    pub const QLAM_M2M_MONTHLY_BUDGET: &'static str = "QLAM_M2M_MONTHLY_BUDGET";
    /// Deadline for a whole refresh or mint, retries included.
    pub const QLAM_REFRESH_DEADLINE: &'static str = "QLAM_REFRESH_DEADLINE";
    /// The user config file, overriding `$XDG_CONFIG_HOME/qlam-hpc/config.toml`.
    pub const QLAM_HPC_CONFIG: &'static str = "QLAM_HPC_CONFIG";
    /// The site config file, overriding `/etc/qlam-hpc/config.toml`.
    pub const QLAM_HPC_SITE_CONFIG: &'static str = "QLAM_HPC_SITE_CONFIG";
    /// Where node-local lock files live (default `$XDG_RUNTIME_DIR/qlam-hpc` or `/tmp/qlam-hpc-<uid>`).
    pub const QLAM_HPC_RUNTIME_DIR: &'static str = "QLAM_HPC_RUNTIME_DIR";
    /// Set by `exec` and the hooks: a file holding the current access token.
    pub const QLAM_ACCESS_TOKEN_FILE: &'static str = "QLAM_ACCESS_TOKEN_FILE";
    /// Set by `env`, `exec` and the job scripts: the access token.
    pub const QLAM_ACCESS_TOKEN: &'static str = "QLAM_ACCESS_TOKEN";
    /// Set by `env`, `exec` and the job scripts: the token's expiry in unix seconds.
    pub const QLAM_TOKEN_EXPIRES_AT: &'static str = "QLAM_TOKEN_EXPIRES_AT";
    /// XDG base directory for config files.
    pub const XDG_CONFIG_HOME: &'static str = "XDG_CONFIG_HOME";
    /// XDG runtime directory (node-local, per user).
    pub const XDG_RUNTIME_DIR: &'static str = "XDG_RUNTIME_DIR";
    /// The user's home directory.
    pub const HOME: &'static str = "HOME";
    /// Proxy for HTTPS requests.
    pub const HTTPS_PROXY: &'static str = "HTTPS_PROXY";
    /// Proxy for HTTPS requests (lower case spelling).
    pub const HTTPS_PROXY_LOWER: &'static str = "https_proxy";
    /// Proxy for plain HTTP requests.
    pub const HTTP_PROXY: &'static str = "HTTP_PROXY";
    /// Proxy for plain HTTP requests (lower case spelling).
    pub const HTTP_PROXY_LOWER: &'static str = "http_proxy";
    /// Hosts that bypass the proxy.
    pub const NO_PROXY: &'static str = "NO_PROXY";
    /// Hosts that bypass the proxy (lower case spelling).
    pub const NO_PROXY_LOWER: &'static str = "no_proxy";
    /// A PEM bundle of trusted CA certificates.
    pub const SSL_CERT_FILE: &'static str = "SSL_CERT_FILE";
    /// A directory of PEM CA certificates.
    pub const SSL_CERT_DIR: &'static str = "SSL_CERT_DIR";
    /// Slurm job id: its presence means "inside a batch job".
    pub const SLURM_JOB_ID: &'static str = "SLURM_JOB_ID";
    /// Slurm array task id.
    pub const SLURM_ARRAY_TASK_ID: &'static str = "SLURM_ARRAY_TASK_ID";
    /// The job owner's uid, in Slurm's Prolog and Epilog.
    pub const SLURM_JOB_UID: &'static str = "SLURM_JOB_UID";
    /// This node's name as Slurm knows it (several slurmd may share a host).
    pub const SLURMD_NODENAME: &'static str = "SLURMD_NODENAME";
    /// The job's end time (unix seconds), where Slurm provides it.
    pub const SLURM_JOB_END_TIME: &'static str = "SLURM_JOB_END_TIME";
    /// PBS job id: its presence means "inside a batch job".
    pub const PBS_JOBID: &'static str = "PBS_JOBID";
    /// Torque/PBS: the job's walltime limit in seconds.
    pub const PBS_WALLTIME: &'static str = "PBS_WALLTIME";
    /// Slurm: the number of nodes in the allocation.
    pub const SLURM_JOB_NUM_NODES: &'static str = "SLURM_JOB_NUM_NODES";
    /// Slurm: the number of nodes (older spelling).
    pub const SLURM_NNODES: &'static str = "SLURM_NNODES";
    /// Slurm: this task's rank within the step.
    pub const SLURM_PROCID: &'static str = "SLURM_PROCID";
    /// Set by sshd: the session came in over SSH (the browser login then hints at port forwarding).
    pub const SSH_CONNECTION: &'static str = "SSH_CONNECTION";
    /// X11 display (a browser can be opened).
    pub const DISPLAY: &'static str = "DISPLAY";
    /// Wayland display (a browser can be opened).
    pub const WAYLAND_DISPLAY: &'static str = "WAYLAND_DISPLAY";
    /// The user's preferred browser.
    pub const BROWSER: &'static str = "BROWSER";
}
