//! The command line. Definitions only; meaning is given elsewhere.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand};

/// Hold listening sockets for a server and restart or redeploy it without
/// ever refusing a connection.
#[derive(Parser, Debug)]
#[command(
    name = "relaunch",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  relaunch --port 5000 -- ./web_dashboard\n  relaunch -l http=127.0.0.1:8000 -l admin=unix:/run/app/admin.sock -- ./server\n  relaunch --watch src --build \"cargo build\" -p 3000 -- target/debug/app\n  relaunch reload --control /run/app/relaunch.sock"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Sub>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Sub {
    /// Show listeners, generation and children of a running relaunch
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Print nothing; exit 0 only while a ready generation serves, else 1 with one line on stderr (for health probes)
        #[arg(long, conflicts_with = "json")]
        check: bool,
    },
    /// Start a new generation beside the old one; stop the old one once the new one is ready
    Reload {
        #[command(flatten)]
        client: ClientArgs,
        /// Once ready, the new generation gets this share of new connections (10%, 2.5%, 10) beside the old one, until `relaunch promote` or `relaunch rollback`
        #[arg(long, value_name = "PERCENT")]
        canary: Option<String>,
        /// With --canary: promote after this long unless the canary crashes or fails a --health check (then it is rolled back); return once the outcome is known
        #[arg(long, value_name = "DURATION", requires = "canary")]
        canary_for: Option<String>,
    },
    /// Give the canary every new connection; the old generation drains and stops
    Promote {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give every new connection back to the generation the canary ran beside; the canary drains and stops
    Rollback {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop the children and relaunch
    Stop {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-execute relaunch in place from its binary (same pid, same sockets, same children)
    Upgrade {
        #[command(flatten)]
        client: ClientArgs,
        /// The new relaunch [default: the file at the running relaunch's own path]
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Show who holds a port or Unix socket (reads /proc; never kills anything)
    Who(WhoArgs),
    /// Print the completion script for SHELL
    #[command(
        after_help = "Install:\n  bash: relaunch completions bash > /etc/bash_completion.d/relaunch\n  zsh:  relaunch completions zsh > /usr/local/share/zsh/site-functions/_relaunch\n  fish: relaunch completions fish > ~/.config/fish/completions/relaunch.fish\nThe Debian package installs all three."
    )]
    Completions { shell: Shell },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Listen on PORT on every interface ([::] dual-stack, or 0.0.0.0 without IPv6)
    #[arg(short, long, value_name = "PORT")]
    pub port: Option<String>,

    /// Listen on SPEC, named NAME: PORT, HOST:PORT, [V6]:PORT, tcp:..., udp:HOST:PORT, unix:PATH, unix:@NAME; `,nonblock` hands it to the child non-blocking
    #[arg(short, long = "listen", value_name = "[NAME=]SPEC")]
    pub listen: Vec<String>,

    /// Ports to try, in order, when a listener's port is held: [NAME=]LIST, e.g. 8001-8010,9000 (no NAME: every TCP/UDP listener)
    #[arg(long, value_name = "[NAME=]LIST")]
    pub fallback: Vec<String>,

    /// Write the bound addresses as JSON (name -> address) to PATH, atomically
    #[arg(long, value_name = "PATH")]
    pub ports_file: Option<PathBuf>,

    /// Also describe the sockets the way another launcher does (repeatable)
    #[arg(long, value_name = "STYLE", value_parser = compat_values())]
    pub compat: Vec<String>,

    /// Do not set LISTEN_PID (for wrapper chains such as `cargo watch`; any process that inherits the environment will then take the sockets as its own)
    #[arg(long)]
    pub no_listen_pid: bool,

    /// Do not intercept the child's own bind() of a held address (by default it gets relaunch's socket instead of 'address already in use')
    #[arg(long)]
    pub no_intercept: bool,

    /// Refuse a child's connect() to a held address (ECONNREFUSED, as on a free port) until its process tree binds it, so an app that checks its port before binding finds it free; every connect the app makes then costs a round trip to relaunch
    #[arg(long)]
    pub refuse_probes: bool,

    /// listen(2) backlog for stream sockets [default: SOMAXCONN]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: Option<i32>,

    /// When to restart a child that exits on its own
    #[arg(long, default_value = "always", value_parser = restart_values())]
    pub restart: String,

    /// Signal that asks a child to stop gracefully
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    pub stop_signal: String,

    /// How long a child may take to stop before SIGKILL (500ms, 10s, 2m)
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub stop_timeout: String,

    /// At a reload, how long the old generation may take to finish the connections it accepted; then they stop reading, and it is stopped once idle or 2s later [default: --stop-timeout]
    #[arg(long, value_name = "DURATION", conflicts_with = "no_drain")]
    pub drain_timeout: Option<String>,

    /// After a promotion, keep the old generation, once idle, alive but frozen (SIGSTOP) for this long, so that `relaunch rollback` returns to it at once (it costs the memory of one more generation)
    #[arg(long, value_name = "DURATION", conflicts_with = "no_drain")]
    pub keep_previous: Option<String>,

    /// At a reload, stop the old generation as soon as the new one is ready, and let both share one socket (no SO_REUSEPORT group, no steering)
    #[arg(long)]
    pub no_drain: bool,

    /// How a new generation shows it is ready: auto, notify, delay:DURATION, or a probe of it alone before it gets traffic: http:PATH (2xx/3xx), tcp (it accepts), exec:COMMAND (exits 0)
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub ready: String,

    /// How long a new generation may take to become ready
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub ready_timeout: String,

    /// Check the serving generation with a probe, as --ready takes it: http:PATH, tcp or exec:COMMAND; --health-failures failures in a row count as a crash
    #[arg(long, value_name = "PROBE")]
    pub health: Option<String>,

    /// How often --health checks the serving generation [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub health_every: Option<String>,

    /// How many --health failures in a row count as a crash [default: 3]
    #[arg(long, value_name = "N")]
    pub health_failures: Option<u32>,

    /// Bind now, start the first generation only when the first connection (or datagram) arrives
    #[arg(long)]
    pub lazy: bool,

    /// Stop the children after DURATION without a connection open or waiting; the next connection starts them again
    #[arg(long, value_name = "DURATION")]
    pub idle_stop: Option<String>,

    /// Number of children sharing the sockets
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// Run the children as USER (name or uid), with its groups; relaunch binds first, as root
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run the children with this primary GROUP (name or gid) [default: USER's group]
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Serve a control socket at PATH for `relaunch status|reload|stop`
    #[arg(long, env = "RELAUNCH_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve GET /metrics (Prometheus text format) on ADDR, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Reload when a file under PATH changes (repeatable); .gitignore, .ignore and build outputs are skipped
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,

    /// With --watch: run CMD (through sh -c) before each reload, and before the first start; a failed build keeps the old version serving
    #[arg(long, value_name = "CMD", requires = "watch")]
    pub build: Option<String>,

    /// With --watch: also skip paths matching GLOB (gitignore syntax, from the current directory; repeatable)
    #[arg(long, value_name = "GLOB", requires = "watch")]
    pub ignore: Vec<String>,

    /// With --watch: wait until files have been quiet this long before building or reloading [default: 200ms]
    #[arg(long, value_name = "DURATION", requires = "watch")]
    pub debounce: Option<String>,

    /// Only log warnings and errors
    #[arg(short, long)]
    pub quiet: bool,

    /// Log lines as text, or as one JSON object per line
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// The server to run, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Control socket of the relaunch to talk to
    #[arg(long, env = "RELAUNCH_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// How long to wait for the answer [default: 90s for reload, 30s for upgrade, 10s for status and stop]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct WhoArgs {
    /// PORT, HOST:PORT or unix:PATH
    pub target: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

// Words only: the plan gives --restart and --compat their meaning.

fn compat_values() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new([
        PossibleValue::new("einhorn").help("EINHORN_FD_COUNT and EINHORN_FD_<i>"),
        PossibleValue::new("server-starter").help("SERVER_STARTER_PORT=host:port=fd;..."),
        PossibleValue::new("werkzeug")
            .help("WERKZEUG_SERVER_FD and WERKZEUG_RUN_MAIN, for Flask's app.run()"),
    ])
}

fn restart_values() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new([
        PossibleValue::new("always").help("Restart whenever the child exits"),
        PossibleValue::new("on-failure").help("Restart only after a non-zero exit or a signal"),
        PossibleValue::new("never").help("Never restart: relaunch exits with the child's status"),
    ])
}
