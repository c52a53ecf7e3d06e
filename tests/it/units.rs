//! The shipped systemd units parse cleanly.

use std::path::Path;
use std::process::Command;

use crate::util::*;

#[test]
fn systemd_units_verify() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = TempDir::new("units");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .extension()
            .is_some_and(|e| e == "service" || e == "socket")
        {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        // Point the units at programs that exist here, so verify checks the rest.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/relaunch", relaunch_bin())
            .replace("/usr/bin/relaunch", relaunch_bin())
            .replace("/opt/web-dashboard/web_dashboard", "/bin/true")
            .replace(
                "EnvironmentFile=/etc/relaunch/%i.conf",
                "Environment=APP=/bin/true",
            )
            .replace("User=www-data", "");
        // Instantiate templates as verify requires.
        let name = name.replace("@.", "@8000.");
        std::fs::write(dir.join(&name), text).unwrap();
        units.push(dir.join(&name));
    }
    assert_eq!(units.len(), 4);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        // Documentation=man:relaunch(1) must resolve: the pages build.rs wrote.
        .env("MANPATH", Path::new(env!("OUT_DIR")).join("assets/man"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// Every service works on systemd before 253 (which ignores `Type=notify-reload`
/// and runs the unit as `Type=simple`): `Type=notify`, and a reload that waits for
/// relaunch's answer on the control socket that ExecStart serves.
#[test]
fn services_reload_through_the_control_socket() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut services = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        services += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let setting = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
                .collect()
        };
        let name = path.display();
        assert_eq!(setting("Type"), ["notify"], "{name}");
        let control = |line: &str| {
            line.split_once("--control ")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        };
        let start = setting("ExecStart");
        let served = control(&start[0]).unwrap_or_else(|| panic!("{name}: no --control"));
        let binary = start[0].split_whitespace().next().unwrap();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("relaunch@")
        {
            assert_eq!(
                binary, "/usr/bin/relaunch",
                "{name}: the Debian package's binary"
            );
        }
        let reload = setting("ExecReload");
        assert_eq!(
            reload,
            [format!("{binary} reload --control {served}")],
            "{name}"
        );
        assert!(
            setting("Restart").iter().any(|r| r == "on-failure"),
            "{name}: relaunch killed must be restarted"
        );
    }
    assert_eq!(services, 2);
}
