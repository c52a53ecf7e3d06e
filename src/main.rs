//! relaunch: hold the listening sockets, hand them to a server by the systemd
//! protocol, and restart or redeploy it without refusing a connection.

mod cli;
mod control;
mod counts;
mod duration;
mod error;
mod exit;
mod intercept;
mod logging;
mod metrics;
mod plan;
mod proc;
mod ready;
mod serial;
mod serve;
mod sigmask;
mod sockets;
mod supervise;
mod table;
mod version;
mod who;

use clap::Parser;

use crate::cli::{Cli, Shell, Sub};
use crate::control::Request;
use crate::error::{Error, Result};
use crate::supervise::{driver, handover, spawn};

fn main() {
    // Before anything else: what our parent gave us, and sane fds 0-2.
    spawn::ensure_std_fds();
    // Before the fd limit is raised: the exec would keep the raised one.
    malloc_tunables();
    spawn::raise_fd_limit(std::env::var_os(handover::ENV).is_some());
    // An upgrade's handshake, run by the relaunch that would exec us.
    if std::env::args_os().nth(1).as_deref() == Some(handover::CHECK_FLAG.as_ref()) {
        upgrade_check();
    }
    // We are the new image of a relaunch that upgraded itself.
    if let Some(value) = std::env::var_os(handover::ENV) {
        std::process::exit(upgraded(&value));
    }
    let snapshot = plan::Snapshot::take();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            logging::print(
                3,
                &format!("relaunch: {}", usage_error(&e.render().to_string())),
            );
            std::process::exit(2);
        }
    };
    logging::init(cli.run.quiet, cli.run.log_format == "json");
    let code = match dispatch(cli, snapshot) {
        Ok(code) => code,
        Err(e) => {
            logging::print(3, &format!("relaunch: error: {e}"));
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// glibc's malloc for relaunch itself: one arena, no per-thread cache of
/// freed blocks (tcache), no cache of dead threads' stacks, and blocks of
/// 64 KiB and up (a status answer) always mapped apart and given back when
/// freed. relaunch starts a bind-interception thread per child and pool
/// threads for /proc reads; with glibc's defaults each live thread kept up
/// to ~200 KiB of freed blocks, every dead one left its stack's pages
/// resident, and the threshold rose with the first large block freed, so
/// RSS grew with reloads. relaunch allocates little and seldom: the shared
/// lock costs nothing.
const TUNABLES: &str = "glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0:\
    glibc.malloc.mmap_threshold=65536:glibc.pthread.stack_cache_size=0";
/// Set for the one exec below: `COMM` when GLIBC_TUNABLES was unset, else
/// `COMM/VALUE` (a comm never holds '/').
const SAVED_TUNABLES: &str = "RELAUNCH_SAVED_TUNABLES";

/// The loader reads tunables only at exec, so relaunch execs itself once
/// with them, then puts back the environment and name it was given: the
/// children never see them.
fn malloc_tunables() {
    #[cfg(target_env = "gnu")]
    {
        use std::ffi::{CString, OsStr};
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        if let Some(saved) = std::env::var_os(SAVED_TUNABLES) {
            let saved = saved.into_vec();
            let (comm, given) = match saved.iter().position(|&b| b == b'/') {
                Some(i) => (&saved[..i], Some(&saved[i + 1..])),
                None => (&saved[..], None),
            };
            // SAFETY: no other thread exists yet.
            unsafe {
                match given {
                    Some(v) => std::env::set_var("GLIBC_TUNABLES", OsStr::from_bytes(v)),
                    None => std::env::remove_var("GLIBC_TUNABLES"),
                }
                std::env::remove_var(SAVED_TUNABLES);
            }
            if let Ok(comm) = CString::new(comm) {
                // SAFETY: a NUL-terminated name; the kernel copies 16 bytes at most.
                unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
            }
            return;
        }
        let mut comm = [0u8; 17];
        // SAFETY: PR_GET_NAME writes at most 16 bytes.
        unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr()) };
        let comm = &comm[..comm.iter().position(|&b| b == 0).unwrap_or(16)];
        let given = std::env::var_os("GLIBC_TUNABLES");
        let mut saved = comm.to_vec();
        let mut tunables = Vec::new();
        if let Some(g) = &given {
            saved.push(b'/');
            saved.extend_from_slice(g.as_bytes());
            // Ours after the caller's: where both set one, ours count here.
            if !g.is_empty() {
                tunables.extend_from_slice(g.as_bytes());
                tunables.push(b':');
            }
        }
        tunables.extend_from_slice(TUNABLES.as_bytes());
        let cstr = |b: Vec<u8>| CString::new(b).ok();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != "GLIBC_TUNABLES" && k != SAVED_TUNABLES)
            .filter_map(|(k, v)| cstr([k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect();
        env.extend(cstr([b"GLIBC_TUNABLES=", &tunables[..]].concat()));
        env.extend(cstr([SAVED_TUNABLES.as_bytes(), b"=", &saved].concat()));
        let args: Vec<CString> = std::env::args_os()
            .filter_map(|a| cstr(a.into_vec()))
            .collect();
        if args.is_empty() {
            return;
        }
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // The very binary running (a path may name a newer one by now); the
        // signal mask and pending signals go through, as an upgrade needs.
        // SAFETY: NULL-terminated arrays of C strings that outlive the call.
        unsafe {
            libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        // No /proc: run with glibc's defaults, in one arena at least.
        // SAFETY: one integer option, set before any thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// clap's error in our shape: one line, then its tip (or ours) as the hint.
fn usage_error(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut what = lines
        .next()
        .unwrap_or("error: invalid command line")
        .to_string();
    // "the following required arguments were not provided:" names them next.
    if what.ends_with(':')
        && let Some(next) = lines.next()
    {
        what = format!("{what} {next}");
    }
    let rest: Vec<&str> = lines.collect();
    // An invalid value: say which ones are valid.
    if let Some(values) = rest.iter().find(|l| l.starts_with("[possible values: ")) {
        what = format!("{what} {values}");
    }
    let hint = rest
        .iter()
        .find_map(|l| l.strip_prefix("tip: "))
        .unwrap_or("run `relaunch --help` for the options; the server's command goes after --");
    format!("{what}\n  hint: {hint}")
}

/// `relaunch --upgrade-check FORMAT`: the handshake of an upgrade.
#[cold]
#[inline(never)]
fn upgrade_check() -> ! {
    let (code, line) = handover::check::<driver::Carried>(
        std::env::args_os().nth(2).as_deref(),
        std::io::stdin().lock(),
    );
    if code == 0 {
        println!("{line}");
    } else {
        logging::print(3, &line);
    }
    std::process::exit(code);
}

/// The new image: adopt the state and go on serving.
fn upgraded(value: &std::ffi::OsStr) -> i32 {
    let result = handover::take::<driver::Carried>(value).and_then(|state| {
        logging::init(state.carried.driver.quiet(), state.carried.driver.json());
        let runtime = runtime()?;
        let result = runtime.block_on(driver::run(driver::Boot::Adopted(state)));
        runtime.shutdown_background();
        result
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::print(3, &format!("relaunch: error: {e}"));
            e.exit_code()
        }
    }
}

/// One thread runs the loop (fork is well-defined); the blocking pool's
/// threads block every signal, so each one reaches the loop's thread, where
/// an upgrade can keep it pending across the exec.
/// A pool thread ends with its job: jobs come with every reload, so idle
/// ones never timed out, and the pool kept as many threads (and their
/// stacks' pages) as ever ran jobs at once. Starting one costs far less
/// than a job.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::ZERO)
        .on_thread_start(|| {
            sigmask::block_all();
        })
        .build()
        .map_err(|e| Error::runtime(format!("cannot start the event loop: {e}")))
}

fn dispatch(cli: Cli, snapshot: plan::Snapshot) -> Result<i32> {
    let runtime = runtime()?;
    let result = match cli.command {
        None => runtime.block_on(driver::run(driver::Boot::Fresh(cli.run, snapshot))),
        Some(Sub::Who(args)) => who::run(&args),
        Some(Sub::Status {
            client,
            check: true,
            ..
        }) => runtime.block_on(control::check(&client)),
        Some(Sub::Status { client, json, .. }) => {
            runtime.block_on(control::client(&client, Request::Status, json))
        }
        Some(Sub::Reload {
            client,
            canary: None,
            ..
        }) => runtime.block_on(control::client(&client, Request::Reload, false)),
        Some(Sub::Reload {
            client,
            canary: Some(share),
            canary_for,
        }) => {
            let request = control::canary_request(&share, canary_for.as_deref())?;
            runtime.block_on(control::client(&client, request, false))
        }
        Some(Sub::Promote { client }) => {
            runtime.block_on(control::client(&client, Request::Promote, false))
        }
        Some(Sub::Rollback { client }) => {
            runtime.block_on(control::client(&client, Request::Rollback, false))
        }
        Some(Sub::Stop { client }) => {
            runtime.block_on(control::client(&client, Request::Stop, false))
        }
        Some(Sub::Upgrade { client, binary }) => {
            // Relative to here, not to where relaunch runs.
            let binary = match binary.map(std::path::absolute).transpose() {
                Ok(b) => b,
                Err(e) => return Err(Error::usage(format!("--binary: {e}"))),
            };
            runtime.block_on(control::client(&client, Request::Upgrade { binary }, false))
        }
        Some(Sub::Completions { shell }) => completions(shell),
    };
    // A /proc read stuck on a hung mount must not keep relaunch from exiting.
    runtime.shutdown_background();
    result
}

/// Written by build.rs from the clap definitions; embedded as text, so the
/// generators are not in the binary.
fn completions(shell: Shell) -> Result<i32> {
    let script = match shell {
        Shell::Bash => include_str!(concat!(
            env!("OUT_DIR"),
            "/assets/completions/relaunch.bash"
        )),
        Shell::Zsh => include_str!(concat!(env!("OUT_DIR"), "/assets/completions/_relaunch")),
        Shell::Fish => include_str!(concat!(
            env!("OUT_DIR"),
            "/assets/completions/relaunch.fish"
        )),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(script.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(0),
        Err(e) => Err(Error::runtime(format!(
            "cannot write the completion script to stdout: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_invalid_value_names_the_valid_ones() {
        use clap::Parser;
        for args in [
            &["relaunch", "completions", "tcsh"][..],
            &["relaunch", "--restart", "sometimes", "--", "true"][..],
        ] {
            let e = super::Cli::try_parse_from(args).unwrap_err();
            let said = super::usage_error(&e.render().to_string());
            assert!(said.contains("[possible values: "), "{args:?}: {said}");
        }
    }

    #[test]
    fn usage_errors_are_one_line_and_a_hint() {
        let clap = "error: the following required arguments were not provided:\n  <COMMAND>...\n\nUsage: relaunch [OPTIONS] -- <COMMAND>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::usage_error(clap),
            "error: the following required arguments were not provided: <COMMAND>...\n  hint: run `relaunch --help` for the options; the server's command goes after --"
        );
        let tip = "error: unexpected argument '-1' found\n\n  tip: to pass '-1' as a value, use '-- -1'\n\nUsage: x\n";
        assert_eq!(
            super::usage_error(tip),
            "error: unexpected argument '-1' found\n  hint: to pass '-1' as a value, use '-- -1'"
        );
    }
}
