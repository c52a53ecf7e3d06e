//! Builds the man pages and the shell completion scripts from the clap
//! definitions in src/cli.rs, so they can never disagree with the binary.
//!
//! They land in OUT_DIR, where `relaunch completions SHELL` embeds the scripts
//! (text in the binary costs no idle memory, unlike linking clap_complete's
//! generators: docs/bench.md), and are copied to `target/<profile>/assets/`,
//! where `cargo deb` picks them up for the package (Cargo.toml's assets;
//! its profile is `deb`, so that is target/deb/assets/).

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
    // Start clean: a page of a removed subcommand must not linger and be packaged.
    remove_dir(&assets);
    // man/man1/, so that MANPATH=.../man finds the pages (tests/it/units.rs).
    let man = assets.join("man").join("man1");
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
        Some(profile) => sync_dir(&assets, &profile.join("assets")),
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

fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("remove {}: {e}", dir.display())
        }
        _ => {}
    }
}

/// Makes `to` hold exactly the files of `from`. Each file is replaced
/// atomically, and files gone from `from` are removed, so that a page of a
/// removed subcommand is not packaged. Two build scripts of one profile
/// writing the same files at once both succeed.
fn sync_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let mut wanted = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("read OUT_DIR");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        wanted.insert(entry.file_name());
        if src.is_dir() {
            sync_dir(&src, &dst);
            continue;
        }
        let tmp = to.join(format!(
            ".{}.{}",
            entry.file_name().to_string_lossy(),
            std::process::id()
        ));
        std::fs::copy(&src, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &dst))
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
    }
    for entry in std::fs::read_dir(to).unwrap_or_else(|e| panic!("read {}: {e}", to.display())) {
        let entry = entry.expect("read the assets folder");
        if wanted.contains(&entry.file_name())
            || entry.file_name().to_string_lossy().starts_with('.')
        {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("remove {}: {e}", path.display())
            }
            _ => {}
        }
    }
}
