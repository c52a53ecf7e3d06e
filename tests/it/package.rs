//! What ships: the man pages and completions (checked against the clap
//! definitions, so a new option is covered without touching this file), the
//! Debian package installed, used and removed inside a real systemd, the
//! Kubernetes examples, and the crate's file list.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::rig::Rig;
use crate::util::*;

// The binary's own definitions, read the way build.rs reads them.
#[allow(dead_code)]
#[path = "../../src/cli.rs"]
mod cli;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What build.rs wrote for this build (the same files `cargo deb` packages).
fn assets() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("assets")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every command of the CLI with the man page that documents it
/// (relaunch.1, relaunch-status.1, ...) and its options as spelled there.
fn commands() -> Vec<(String, Vec<String>)> {
    use clap::CommandFactory;
    let root = cli::Cli::command();
    let options = |cmd: &clap::Command| -> Vec<String> {
        cmd.get_arguments()
            .filter(|a| !a.is_hide_set())
            .flat_map(|a| {
                let long = a.get_long().map(|l| format!("--{l}"));
                let short = a.get_short().map(|s| format!("-{s}"));
                long.into_iter().chain(short)
            })
            .chain(["--help".to_string()])
            .collect()
    };
    let mut all = vec![("relaunch".to_string(), options(&root))];
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        all.push((format!("relaunch-{}", sub.get_name()), options(sub)));
    }
    all
}

/// `man -l PAGE` as a reader sees it, on one long line per paragraph so that
/// no option is hyphenated across lines; and what man said on stderr.
fn render(page: &Path) -> (String, String) {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l"])
        .arg(page)
        .env("MANWIDTH", "1000")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("run man");
    assert!(
        out.status.success(),
        "man -l {}: {}",
        page.display(),
        out.status
    );
    // groff's hyphen and minus, as plain hyphens.
    let text = stdout(&out).replace(['\u{2010}', '\u{2212}'], "-");
    (text, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn man_pages_render_every_option_without_warnings() {
    if !require_tool("man") {
        return;
    }
    let dir = assets().join("man/man1");
    let mut pages = 0;
    for (name, options) in commands() {
        let page = dir.join(format!("{name}.1"));
        assert!(page.exists(), "build.rs wrote no {}", page.display());
        let (text, warnings) = render(&page);
        assert!(
            warnings.trim().is_empty(),
            "man -l {name}.1 warns:\n{warnings}"
        );
        assert!(
            text.contains("NAME") && text.contains(&name),
            "{name}.1:\n{text}"
        );
        for option in &options {
            // As an entry of OPTIONS: at the start of a line, "-p, --port <PORT>".
            let listed = text
                .lines()
                .any(|l| l.trim_start().split([',', ' ']).any(|word| word == option));
            assert!(listed, "{name}.1 does not show {option}:\n{text}");
        }
        pages += 1;
    }
    // relaunch and its subcommands, each with a page; the top page lists them.
    assert!(pages >= 6, "{pages} pages");
    let (top, _) = render(&dir.join("relaunch.1"));
    for (name, _) in commands().iter().skip(1) {
        assert!(
            top.contains(&format!("{name}(1)")),
            "relaunch.1 does not list {name}(1)"
        );
    }
}

/// `relaunch completions bash`, sourced in a real bash: what it offers after
/// the words given (the last one is being completed).
fn bash_complete(script: &Path, words: &[&str]) -> BTreeSet<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        r#"source "$1" || exit 3
spec=$(complete -p relaunch) || exit 4
fn=$(printf '%s\n' "$spec" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$fn" ] || exit 5
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
"$fn" relaunch "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        words = quoted.join(" "),
        cword = words.len() - 1,
        line = words.join(" "),
    );
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &program, "bash"])
        .arg(script)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash completion of {words:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_complete_the_options() {
    let dir = TempDir::new("completions");
    let mut scripts = Vec::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(relaunch_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "completions {shell}: {}", out.status);
        // What the binary prints is what the package installs.
        let name = match shell {
            "bash" => "relaunch.bash",
            "zsh" => "_relaunch",
            _ => "relaunch.fish",
        };
        let built = std::fs::read(assets().join("completions").join(name)).unwrap();
        assert_eq!(
            out.stdout, built,
            "{shell}: the binary and the package disagree"
        );
        let path = dir.join(name);
        std::fs::write(&path, &out.stdout).unwrap();
        scripts.push((shell, path, stdout(&out)));
    }

    // A shell it does not know is a usage error that names the ones it knows.
    let out = Command::new(relaunch_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("bash") && said.contains("zsh") && said.contains("fish"),
        "{said}"
    );

    let (_, bash, _) = &scripts[0];
    let offered = bash_complete(bash, &["relaunch", "--re"]);
    for want in ["--restart", "--ready", "--ready-timeout"] {
        assert!(
            offered.contains(want),
            "`relaunch --re<TAB>` offers {offered:?}, not {want}"
        );
    }
    assert!(offered.iter().all(|o| o.starts_with("--re")), "{offered:?}");
    // Subcommands and their own options.
    let offered = bash_complete(bash, &["relaunch", "st"]);
    assert!(
        offered.contains("status") && offered.contains("stop"),
        "{offered:?}"
    );
    let offered = bash_complete(bash, &["relaunch", "reload", "--"]);
    assert!(
        offered.contains("--control") && offered.contains("--timeout"),
        "{offered:?}"
    );
    let offered = bash_complete(bash, &["relaunch", "--restart", ""]);
    assert_eq!(
        offered,
        BTreeSet::from(["always", "never", "on-failure"].map(String::from)),
        "values of --restart"
    );

    // zsh and fish: every long option of every command is in the script.
    for (shell, _, text) in &scripts[1..] {
        for (name, options) in commands() {
            for option in options.iter().filter(|o| o.starts_with("--")) {
                let word = &option[2..];
                assert!(
                    text.contains(word),
                    "{shell} completion lacks {name} {option}"
                );
            }
        }
    }
}

#[test]
fn kubernetes_examples_validate() {
    if !require_tool("kubernetes-validate") {
        return;
    }
    let dir = repo().join("examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    // Against the schemas it ships (it must not need the network: CI may have none).
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "kubernetes-validate: {}\n{said}",
        out.status
    );
    assert_eq!(said.matches(" passed ").count(), 2, "{said}");

    // And it does catch a broken manifest (this check can fail).
    let tmp = TempDir::new("k8s");
    let text = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    let broken = tmp.join("broken.yaml");
    std::fs::write(&broken, text.replace("replicas: 2", "replicas: two")).unwrap();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a string for replicas passed");

    // The stop budget adds up: preStop + relaunch's --stop-timeout fit in the
    // grace period, and the probes ask relaunch.
    let check = r#"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
pod = d["spec"]["template"]["spec"]
c = pod["containers"][0]
cmd = c["command"]
assert cmd[0] == "relaunch" and cmd[-1] == "--", cmd
t = cmd[cmd.index("--stop-timeout") + 1]
assert t.endswith("s") and t[:-1].isdigit(), t
stop = int(t[:-1])
pre = c["lifecycle"]["preStop"]["exec"]["command"]
assert pre[0] == "sleep", pre
grace = pod["terminationGracePeriodSeconds"]
assert grace >= int(pre[1]) + stop + 1, (grace, pre, stop)
for probe in ("readinessProbe", "livenessProbe"):
    assert c[probe]["exec"]["command"] == ["relaunch", "status", "--check"], c[probe]
env = {e["name"]: e["value"] for e in c["env"]}
mounts = [m["mountPath"] for m in c["volumeMounts"]]
assert any(env["RELAUNCH_CONTROL"].startswith(m + "/") for m in mounts), (env, mounts)
print("ok", grace, pre[1], stop)
"#;
    let out = Command::new("python3")
        .args(["-c", check])
        .arg(dir.join("deployment.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deployment.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crate_package_lists_only_what_it_needs() {
    let out = cargo()
        .args(["package", "--list", "--allow-dirty"])
        .current_dir(repo())
        .output()
        .unwrap();
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package --list: {warnings}");
    // Such as "ignoring test `it` as `tests/it/main.rs` is not included".
    assert!(
        !warnings.contains("warning"),
        "cargo package --list warns:\n{warnings}"
    );
    let files: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    for must in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src/main.rs",
        "src/cli.rs",
        "src/bin/relaunch-watch.rs",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "systemd/relaunch@.service",
        "debian/postinst",
        "tests/it/main.rs",
        "tests/systemd-rig.sh",
        "benches/handoff/main.rs",
        "examples/pid_server.rs",
    ] {
        assert!(
            files.iter().any(|f| f == must),
            "{must} is not packaged: {files:?}"
        );
    }
    let mut total = 0;
    for f in &files {
        assert!(
            ![
                "target/",
                "proptest-regressions/",
                ".ci/",
                "bench/",
                "node_modules/"
            ]
            .iter()
            .any(|p| f.starts_with(p))
                && !f.contains("__pycache__")
                && !f.ends_with(".svg"),
            "{f} does not belong in the published crate"
        );
        if let Ok(meta) = std::fs::metadata(repo().join(f)) {
            assert!(meta.len() < 256 * 1024, "{f} is {} bytes", meta.len());
            total += meta.len();
        }
    }
    assert!(total < 4 * 1024 * 1024, "{total} bytes in the crate");
}

/// The .deb `cargo deb` builds from this checkout (a no-op when scripts/test
/// has just built it). None outside CI when cargo-deb is missing.
fn build_deb() -> Option<PathBuf> {
    let version = cargo().args(["deb", "--version"]).output();
    if !version.is_ok_and(|o| o.status.success()) {
        if in_ci() {
            panic!("cargo-deb is missing (scripts/test installs it)");
        }
        eprintln!("skipping the package test: cargo-deb is missing (cargo install cargo-deb)");
        return None;
    }
    let out = cargo()
        .args(["deb", "--quiet"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // It prints the path of the package it wrote.
    let path = stdout(&out).lines().last().map(PathBuf::from);
    let path = path.filter(|p| p.extension().is_some_and(|e| e == "deb") && p.exists());
    Some(path.unwrap_or_else(|| panic!("cargo deb printed no .deb path: {}", stdout(&out))))
}

#[test]
fn debian_package_under_real_systemd() {
    let Some(deb) = build_deb() else {
        return;
    };
    let Some(rig) = Rig::up() else {
        return;
    };
    rig.install("/tmp/relaunch.deb", &std::fs::read(&deb).unwrap(), 0o644);
    rig.ok(&["dpkg", "-i", "/tmp/relaunch.deb"]);
    for file in [
        "/usr/bin/relaunch",
        "/usr/bin/relaunch-watch",
        "/usr/share/man/man1/relaunch.1",
        "/usr/share/bash-completion/completions/relaunch",
        "/usr/share/zsh/vendor-completions/_relaunch",
        "/usr/share/fish/vendor_completions.d/relaunch.fish",
        "/lib/systemd/system/relaunch@.socket",
        "/lib/systemd/system/relaunch@.service",
        "/etc/relaunch/example.conf",
        "/usr/share/doc/relaunch/copyright",
    ] {
        rig.ok(&["test", "-f", file]);
    }
    rig.ok(&["relaunch", "--version"]);
    assert!(
        rig.ok(&["man", "-w", "relaunch"])
            .contains("/usr/share/man/man1/relaunch.1")
    );

    // The admin's steps: the example config with APP pointed at the server.
    const PORT: &str = "8000";
    let unit = format!("relaunch@{PORT}.service");
    rig.install(
        "/opt/app/server",
        &std::fs::read(example("pid_server")).unwrap(),
        0o755,
    );
    rig.ok(&[
        "sh",
        "-c",
        &format!(
            "sed 's#^APP=.*#APP=/opt/app/server#' /etc/relaunch/example.conf > /etc/relaunch/{PORT}.conf"
        ),
    ]);
    // EnvironmentFile= syntax: the value is the rest of the line.
    let options = rig.ok(&[
        "sed",
        "-n",
        "s/^OPTIONS=//p",
        &format!("/etc/relaunch/{PORT}.conf"),
    ]);
    assert!(!options.trim().is_empty(), "the example sets no OPTIONS");
    rig.ok(&[
        "systemctl",
        "enable",
        "--now",
        &format!("relaunch@{PORT}.socket"),
    ]);

    let addr: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
    rig.in_net(|| {
        let first = wait_serving(addr);
        let main = rig.main_pid_of(&unit);
        // The example's OPTIONS reached relaunch, and the app runs as www-data.
        let cmdline = rig
            .ok(&["cat", &format!("/proc/{main}/cmdline")])
            .replace('\0', " ");
        assert!(cmdline.contains(options.trim()), "{cmdline}");
        assert_eq!(
            rig.ok(&["stat", "-c", "%U", &format!("/proc/{first}")])
                .trim(),
            "www-data"
        );

        // A deploy under load loses nothing; reload returns after the handoff.
        let load = Load::start(addr, 4);
        rig.ok(&["systemctl", "reload", &unit]);
        assert!(
            !rig.alive(&first),
            "systemctl reload returned while {first} still ran"
        );
        let second = get(addr).unwrap();
        assert_ne!(second, first);
        let report = load.finish();
        assert_eq!(report.failed(), 0, "{report:?}");
        assert!(
            report.pids.contains(&first) && report.pids.contains(&second),
            "{report:?}"
        );
        assert_eq!(
            rig.main_pid_of(&unit),
            main,
            "a reload must not restart relaunch"
        );

        // Upgrading the package (here: the same version again) stops nothing.
        let load = Load::start(addr, 4);
        let out = rig.ok(&["dpkg", "-i", "/tmp/relaunch.deb"]);
        assert!(
            out.contains("still run the old binary"),
            "no hint to restart:\n{out}"
        );
        assert_eq!(
            get(addr).unwrap(),
            second,
            "the package upgrade restarted the app"
        );
        let report = load.finish();
        assert_eq!(report.failed(), 0, "{report:?}");
        assert_eq!(
            rig.main_pid_of(&unit),
            main,
            "the package upgrade restarted relaunch"
        );

        // Removal stops everything and leaves no unit behind.
        rig.ok(&["dpkg", "-r", "relaunch"]);
        let err = get(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    });
    let procs = rig.ok(&["ps", "-e", "-o", "comm="]);
    assert!(
        !procs.lines().any(|p| p == "relaunch" || p == "server"),
        "left running after dpkg -r:\n{procs}"
    );
    for file in [
        "/usr/bin/relaunch",
        "/lib/systemd/system/relaunch@.service",
        "/lib/systemd/system/relaunch@.socket",
    ] {
        assert!(
            !rig.run(&["test", "-e", file]).status.success(),
            "{file} is left after dpkg -r"
        );
    }
    // Nothing is loaded: at most the admin's enablement (kept by a removal, as
    // Debian does, so a reinstall restores it) names a unit that is not found.
    let list = [
        "systemctl",
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "relaunch@*",
    ];
    let units = rig.ok(&list);
    for line in units.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[1..4],
            ["not-found", "inactive", "dead"],
            "after dpkg -r: {line}"
        );
    }
    rig.ok(&["test", "-f", "/etc/relaunch/example.conf"]);
    rig.ok(&["dpkg", "--purge", "relaunch"]);
    assert!(
        !rig.run(&["test", "-e", "/etc/relaunch/example.conf"])
            .status
            .success()
    );
    let links = rig.ok(&["find", "/etc/systemd/system", "-name", "relaunch@*"]);
    assert!(links.trim().is_empty(), "left after purge: {links}");
    let units = rig.ok(&list);
    assert!(units.trim().is_empty(), "units left after purge:\n{units}");
    rig.ok(&["test", "-f", &format!("/etc/relaunch/{PORT}.conf")]);
    assert!(
        !rig.run(&["dpkg", "-s", "relaunch"]).status.success(),
        "still installed"
    );
}
