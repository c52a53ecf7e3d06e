//! The shipped systemd units parse cleanly.

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
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        // Point the units at programs that exist here, so verify checks the rest.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/relaunch", relaunch_bin())
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
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // systemd before 253 does not know notify-reload; the units say what to use there.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("Failed to parse service type, ignoring: notify-reload"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(out.status.success() && problems.is_empty(), "{stderr}");
}
