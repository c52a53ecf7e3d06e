//! Warns when COMMAND is a wrapper that will start the real server as its own
//! child. relaunch sets `LISTEN_PID` to the pid it started; behind a wrapper
//! the server has another pid, and a server that checks `LISTEN_PID` (as
//! `sd_listen_fds` and gunicorn do) ignores the sockets and binds its own.
//!
//! Contract: `warning(program, args)` looks at words only, never at files.
//! - A shell (`sh`, `bash`, `dash`, `zsh`, `ksh`, `ash`, `mksh`, also
//!   `busybox sh` and `env [NAME=VALUE...] bash`) running `-c SCRIPT` warns
//!   unless the script's last command starts with `exec ` (`cd app && exec
//!   ./server` is fine: the shell becomes the server).
//! - `cargo run`, `cargo watch`, `go run`, `npm start|run|run-script|exec`,
//!   `yarn`, `pnpm`, `npx` warn, naming the wrapper (each runs the server as
//!   its child rather than exec'ing it).
//! - Anything else: None. A shell running a script file is not flagged: we
//!   cannot tell whether the script ends with `exec`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh"];

pub fn warning(program: &OsStr, args: &[OsString]) -> Option<String> {
    let mut words: Vec<&OsStr> = std::iter::once(program)
        .chain(args.iter().map(|a| a.as_os_str()))
        .collect();
    // Look through `env` and `busybox`, which exec what follows.
    loop {
        match base(words[0]).as_str() {
            "env" => {
                let rest = skip_env_options(&words[1..]);
                if rest.is_empty() {
                    return None;
                }
                words = rest.to_vec();
            }
            "busybox" if words.len() > 1 => {
                words.remove(0);
            }
            _ => break,
        };
    }
    let prog = base(words[0]);
    let args: Vec<String> = words[1..]
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    if SHELLS.contains(&prog.as_str()) {
        return shell(&prog, &args);
    }
    let first = args
        .iter()
        .find(|a| !a.starts_with('-') && !a.starts_with('+'))
        .map(String::as_str);
    let wrapper = match (prog.as_str(), first) {
        ("cargo", Some(sub @ ("run" | "watch"))) => format!("cargo {sub}"),
        ("go", Some("run")) => "go run".into(),
        ("npm", Some(sub @ ("start" | "run" | "run-script" | "exec" | "x"))) => {
            format!("npm {sub}")
        }
        ("yarn" | "pnpm", _) => prog.clone(),
        ("npx", _) => "npx".into(),
        _ => return None,
    };
    let fix = if prog == "cargo" {
        "run the built binary (target/debug/NAME) directly, or pass --no-listen-pid"
    } else if prog == "go" {
        "build it first (go build -o server .) and run ./server, or pass --no-listen-pid"
    } else {
        "run the server directly (for example `node server.js`), or pass --no-listen-pid"
    };
    Some(format!(
        "`{wrapper}` starts the server as its own child, so LISTEN_PID names {prog}, not the server, and servers that check it ignore the sockets: {fix}"
    ))
}

/// The shell case: `-c SCRIPT` whose last command is not an `exec`.
fn shell(prog: &str, args: &[String]) -> Option<String> {
    let mut has_c = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" || a == "-" {
            i += 1;
            break;
        }
        if a.starts_with("--") {
            i += 1; // long options (--login, --norc) take no value here
            continue;
        }
        if (a.starts_with('-') || a.starts_with('+')) && a.len() > 1 {
            has_c |= a.starts_with('-') && a.contains('c');
            // -o NAME / +o NAME take the next word.
            i += if a.ends_with('o') { 2 } else { 1 };
            continue;
        }
        break;
    }
    let script = args.get(i).filter(|_| has_c)?;
    if ends_with_exec(script) {
        return None;
    }
    Some(format!(
        "`{prog} -c` runs the server as a child of the shell, so LISTEN_PID names {prog}, not the server, and servers that check it ignore the sockets: write `{prog} -c 'exec ./server'` (or drop the shell), or pass --no-listen-pid"
    ))
}

fn ends_with_exec(script: &str) -> bool {
    let last = script
        .split([';', '\n', '&', '|'])
        .map(str::trim)
        .rfind(|s| !s.is_empty())
        .unwrap_or("");
    last.strip_prefix("exec")
        .is_some_and(|r| r.starts_with([' ', '\t']))
}

/// What follows `env`'s own options and NAME=VALUE words.
fn skip_env_options<'a, 'b>(words: &'b [&'a OsStr]) -> &'b [&'a OsStr] {
    let mut i = 0;
    while let Some(w) = words.get(i) {
        let w = w.to_string_lossy();
        if w == "--" {
            return &words[i + 1..];
        }
        if matches!(w.as_ref(), "-u" | "-C" | "--unset" | "--chdir") {
            i += 2;
        } else if w.starts_with('-') || w.contains('=') {
            i += 1;
        } else {
            break;
        }
    }
    &words[i.min(words.len())..]
}

fn base(w: &OsStr) -> String {
    Path::new(w)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warn(cmd: &[&str]) -> Option<String> {
        let args: Vec<OsString> = cmd[1..].iter().map(OsString::from).collect();
        warning(OsStr::new(cmd[0]), &args)
    }

    const SH: &str = "`sh -c` runs the server as a child of the shell, so LISTEN_PID names sh, not the server, and servers that check it ignore the sockets: write `sh -c 'exec ./server'` (or drop the shell), or pass --no-listen-pid";

    #[test]
    fn shells() {
        let flagged: &[&[&str]] = &[
            &["sh", "-c", "./server"],
            &["/bin/sh", "-c", "./server --port 8000"],
            &["sh", "-ec", "./server"],
            &["sh", "-e", "-c", "./server"],
            &["sh", "-o", "errexit", "-c", "./server"],
            &["sh", "-c", "exec ./setup; ./server"],
            &["sh", "-c", "execute ./server"],
            &["sh", "-c", "exec"],
            &["sh", "-c", "./a && ./server"],
            &["sh", "-c", "./server &"],
        ];
        for cmd in flagged {
            assert_eq!(warn(cmd).as_deref(), Some(SH), "{cmd:?}");
        }
        let fine: &[&[&str]] = &[
            &["sh", "-c", "exec ./server"],
            &["sh", "-c", "  exec\t./server"],
            &["sh", "-c", "cd app && exec ./server"],
            &["sh", "-c", "set -e; exec ./server --port 8000"],
            &["sh", "-c", "cd app\nexec ./server\n"],
            &["sh", "start.sh"],
            &["sh"],
            &["sh", "-e"],
            &["./server", "-c", "x"],
        ];
        for cmd in fine {
            assert_eq!(warn(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn every_shell_and_its_launchers() {
        for sh in SHELLS {
            let w = warn(&[sh, "-c", "python3 app.py"]).unwrap_or_default();
            assert!(
                w.starts_with(&format!("`{sh} -c` runs the server")),
                "{sh}: {w}"
            );
        }
        let bash = "`bash -c` runs the server as a child of the shell, so LISTEN_PID names bash, not the server, and servers that check it ignore the sockets: write `bash -c 'exec ./server'` (or drop the shell), or pass --no-listen-pid";
        assert_eq!(
            warn(&["/usr/bin/env", "bash", "-lc", "./server"]).as_deref(),
            Some(bash)
        );
        assert_eq!(
            warn(&["env", "-i", "A=1", "-u", "B", "bash", "-c", "./server"]).as_deref(),
            Some(bash)
        );
        assert_eq!(
            warn(&["env", "--", "bash", "-c", "./server"]).as_deref(),
            Some(bash)
        );
        assert_eq!(warn(&["env", "bash", "-c", "exec ./server"]), None);
        assert_eq!(warn(&["env", "A=1"]), None);
        assert_eq!(warn(&["env", "./server"]), None);
        assert_eq!(
            warn(&["busybox", "sh", "-c", "./server"]).as_deref(),
            Some(SH)
        );
        assert_eq!(warn(&["busybox", "httpd", "-f"]), None);
        assert_eq!(warn(&["busybox"]), None);
    }

    #[test]
    fn wrappers() {
        let cargo = |sub: &str| {
            format!(
                "`cargo {sub}` starts the server as its own child, so LISTEN_PID names cargo, not the server, and servers that check it ignore the sockets: run the built binary (target/debug/NAME) directly, or pass --no-listen-pid"
            )
        };
        let js = |w: &str, prog: &str| {
            format!(
                "`{w}` starts the server as its own child, so LISTEN_PID names {prog}, not the server, and servers that check it ignore the sockets: run the server directly (for example `node server.js`), or pass --no-listen-pid"
            )
        };
        let cases: &[(&[&str], Option<String>)] = &[
            (&["cargo", "run"], Some(cargo("run"))),
            (
                &["cargo", "+nightly", "run", "--release"],
                Some(cargo("run")),
            ),
            (
                &["/home/u/.cargo/bin/cargo", "-q", "run"],
                Some(cargo("run")),
            ),
            (&["cargo", "watch", "-x", "run"], Some(cargo("watch"))),
            (&["cargo", "build"], None),
            (
                &["go", "run", "./examples/go_server"],
                Some("`go run` starts the server as its own child, so LISTEN_PID names go, not the server, and servers that check it ignore the sockets: build it first (go build -o server .) and run ./server, or pass --no-listen-pid".into()),
            ),
            (&["go", "build"], None),
            (&["npm", "start"], Some(js("npm start", "npm"))),
            (&["npm", "run", "dev"], Some(js("npm run", "npm"))),
            (
                &["npm", "--silent", "run", "dev"],
                Some(js("npm run", "npm")),
            ),
            (&["npm", "install"], None),
            (&["npm"], None),
            (&["yarn"], Some(js("yarn", "yarn"))),
            (&["yarn", "dev"], Some(js("yarn", "yarn"))),
            (&["pnpm", "start"], Some(js("pnpm", "pnpm"))),
            (&["npx", "serve"], Some(js("npx", "npx"))),
            (&["node", "server.js"], None),
            (&["python3", "-m", "http.server"], None),
            (&["", ""], None),
        ];
        for (cmd, want) in cases {
            assert_eq!(warn(cmd), *want, "{cmd:?}");
        }
    }
}
