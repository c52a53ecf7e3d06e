//! Builds the man pages and the shell completion scripts from the clap
//! definitions in src/cli.rs, so they can never disagree with the binary.
//!
//! They land in OUT_DIR, where `relaunch completions SHELL` embeds the scripts
//! (text in the binary costs no idle memory, unlike linking clap_complete's
//! generators: docs/bench.md), and are copied to `target/<profile>/assets/`,
//! where `cargo deb` picks them up for the package (Cargo.toml's assets).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

// The build script only renders the definitions; it never reads parsed values.
#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() {
    println!("cargo::rerun-if-changed=src/cli.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let assets = out.join("assets");
    let man = assets.join("man");
    let completions = assets.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }

    // One page for relaunch and one per subcommand (relaunch-status.1, ...).
    clap_mangen::generate_to(cli::Cli::command(), &man)
        .unwrap_or_else(|e| panic!("write the man pages to {}: {e}", man.display()));
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cli::Cli::command(), "relaunch", &completions)
            .unwrap_or_else(|e| panic!("write the {shell} completions: {e}"));
    }

    // cargo deb takes built files from target/release/ (whatever the real
    // target directory is): OUT_DIR is <that>/build/relaunch-<hash>/out.
    match profile_dir(&out) {
        Some(profile) => copy_dir(&assets, &profile.join("assets")),
        None => println!(
            "cargo::warning=OUT_DIR {} is not under <target>/<profile>/build/: the man pages and completions for `cargo deb` are only in OUT_DIR",
            out.display()
        ),
    }
}

fn profile_dir(out: &Path) -> Option<PathBuf> {
    let build = out.parent()?.parent()?;
    (build.file_name()? == "build").then(|| build.parent().map(Path::to_path_buf))?
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("read OUT_DIR");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        }
    }
}
