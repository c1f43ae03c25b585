//! The command line (DESIGN §4).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Get QLAM OAuth2 tokens to HPC batch jobs safely and fast.
#[derive(Parser, Debug)]
#[command(name = "qlam-hpc", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Context to use (default: QLAM_CONTEXT, the qsh config's current_context, or "default").
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) context: Option<String>,
    /// Provider to use within the context (default: QLAM_PROVIDER or the context's default).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) provider: Option<String>,
    /// Output format of the result on stdout.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Output formats.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// One JSON object (per event) per line.
    Json,
}

/// Shells for `env`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Shell {
    /// sh, bash, zsh, ksh
    Sh,
    /// csh, tcsh
    Csh,
    /// fish
    Fish,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Log in interactively (device code by default on a terminal without a display).
    Login {
        /// Use the device code flow.
        #[arg(long, conflicts_with = "browser")]
        device: bool,
        /// Use the browser flow (authorization code + PKCE).
        #[arg(long)]
        browser: bool,
        /// Do not draw a QR code.
        #[arg(long)]
        no_qr: bool,
        /// Print the URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Remove the stored credentials.
    Logout {
        /// Revoke the refresh token at the IdP first.
        #[arg(long)]
        revoke: bool,
    },
    /// Show the login, the token's expiry, the last refresh and the store.
    Status,
    /// Print a valid access token (refreshing first when it has less than --min-ttl left).
    Token {
        /// Minimum time the token must stay valid (90s, 15m, 2h, 1d, seconds, or `job`: the rest of the batch job).
        #[arg(long, value_name = "D")]
        min_ttl: Option<String>,
    },
    /// Print shell lines exporting QLAM_ACCESS_TOKEN and QLAM_TOKEN_EXPIRES_AT.
    Env {
        /// Minimum time the token must stay valid (or `job`: the rest of the batch job).
        #[arg(long, value_name = "D")]
        min_ttl: Option<String>,
        /// Shell syntax.
        #[arg(long, value_enum, default_value_t = Shell::Sh)]
        shell: Shell,
    },
    /// Run a command with a token that is kept valid for as long as it runs.
    Exec {
        /// Minimum time the token must stay valid.
        #[arg(long, value_name = "D")]
        min_ttl: Option<String>,
        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Refresh now if due (for a keeper on a login node), or always with --force.
    Refresh {
        /// Refresh even if the token is fresh.
        #[arg(long)]
        force: bool,
        /// Refresh when less than this is left.
        #[arg(long, value_name = "D")]
        min_ttl: Option<String>,
    },
    /// Check configuration, store, filesystem locks, IdP reachability and clock.
    Doctor {
        /// Inside a Slurm allocation of 2+ nodes: test the store's locks across nodes with srun.
        #[arg(long)]
        nodes: bool,
        /// The store's credentials directory as another mount or node sees it: test that a
        /// lock held here is seen there.
        #[arg(long, value_name = "DIR")]
        peer_path: Option<PathBuf>,
        /// Skip the checks that need the network.
        #[arg(long)]
        offline: bool,
    },
    /// Check at submit time that the login outlives a job: exits 41 with advice if not.
    Check {
        /// The job's time limit (Slurm forms: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]; or 2h, 90m).
        #[arg(long, value_name = "WALLTIME")]
        time: String,
        /// How long until the job may start (e.g. 2h, 1d).
        #[arg(long, value_name = "DELAY")]
        begin: Option<String>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Scheduler entry points (for the Slurm/PBS hook scripts; see slurm/ and pbs/).
    Hook {
        /// Which hook.
        #[arg(value_enum)]
        name: HookName,
        #[command(flatten)]
        args: HookArgs,
    },
    /// Run the bundled test IdP and a storm of array tasks against it, and report.
    Demo {
        /// How many concurrent tasks.
        #[arg(long, default_value_t = 200)]
        tasks: usize,
        /// Keep the demo's store in this directory instead of a temporary one.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Hook entry points.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum HookName {
    /// Slurm Prolog (root, every node of the job): stage a token for the job's user.
    SlurmProlog,
    /// Slurm TaskProlog (user): print the job's environment for the staged token.
    SlurmTaskProlog,
    /// Slurm Epilog (root): stop the renewer and remove the staged token.
    SlurmEpilog,
    /// PBS execjob_prologue (root).
    PbsPrologue,
    /// PBS execjob_launch.
    PbsLaunch,
    /// PBS execjob_epilogue (root).
    PbsEpilogue,
}

/// Arguments of the PBS hooks (and, internally, of the hooks' user-side steps).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct HookArgs {
    /// PBS: the job id.
    #[arg(long, value_name = "ID")]
    pub(crate) job: Option<String>,
    /// PBS: this node's name (default: the short host name).
    #[arg(long, value_name = "NODE")]
    pub(crate) node: Option<String>,
    /// Job end time (unix seconds), set by the hooks for their user-side steps.
    #[arg(skip)]
    pub(crate) end: Option<i64>,
    /// PBS: the job owner's user name.
    #[arg(long, value_name = "NAME")]
    pub(crate) user: Option<String>,
    /// PBS: the job's walltime limit (HH:MM:SS or seconds).
    #[arg(long, value_name = "HH:MM:SS")]
    pub(crate) walltime: Option<String>,
}
