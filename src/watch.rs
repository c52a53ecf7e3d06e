//! `relaunch-watch`, the helper that `--watch` runs: which file changes
//! matter, and the loop that hears them. A process of its own, so relaunch's
//! binary carries none of this (the gitignore matcher's regex engine would
//! add about 600 KiB to relaunch's idle RSS, with or without `--watch`).
//!
//! It speaks to relaunch on stdout, one line each: `ready TEXT` once every
//! directory is watched, then `changed PATH` per change, `warn TEXT`; and
//! `error TEXT` before it exits 2 on a bad path or glob. It dies with
//! relaunch (PR_SET_PDEATHSIG, set by relaunch's spawn).
//!
//! inotify through `notify`, with one non-recursive watch per directory that
//! is not ignored: a recursive watch would also watch `target/` or
//! `node_modules/`, thousands of directories that a build churns through. A
//! directory created later is walked and watched when it appears. A watched
//! directory that is removed or replaced (`rm -rf dist && mkdir dist`) is
//! watched again when a directory of its name is back ([`Remade`]).
//!
//! Beneath each watched directory, a path is skipped when the first of these
//! that has an opinion says so:
//! 1. `--ignore` globs (gitignore syntax, from the current directory; `!GLOB`
//!    takes a path back);
//! 2. `.gitignore` and `.ignore` files, the deepest first: in the watched
//!    trees and in their parent directories up to the repository's root
//!    (whether or not it is a git repository, as ripgrep's `--no-require-git`);
//! 3. git's global excludes file;
//! 4. [`DEFAULT_IGNORES`]: version control, build outputs, caches, editors'
//!    temporary files.
//!
//! A path given to `--watch` itself is always watched. Reading a file is not
//! a change; creating, writing, renaming and deleting one are. An edited
//! `.gitignore` or `.ignore` is read again and triggers nothing.
//!
//! When relaunch is slow to read, the pipe fills and this waits; if the
//! kernel's queue overflows meanwhile, a `changed (many files)` says so.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::event::{CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};

type Result<T> = std::result::Result<T, String>;

/// Skipped unless a .gitignore, .ignore or `--ignore !GLOB` says otherwise.
pub const DEFAULT_IGNORES: &[&str] = &[
    // Version control.
    ".git/",
    ".hg/",
    ".svn/",
    ".jj/",
    // Build outputs and caches: written by the build and the app themselves.
    "target/",
    "node_modules/",
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".venv/",
    // Editors' swap, backup and lock files.
    "*.swp",
    "*.swo",
    "*.swx",
    "*~",
    ".#*",
    "#*#",
    "4913",
    ".DS_Store",
];

/// Which paths matter.
pub struct Filter {
    /// Watched directories, whole trees.
    trees: Vec<PathBuf>,
    /// Watched files, given by themselves.
    files: Vec<PathBuf>,
    user: Gitignore,
    /// .gitignore and .ignore, by the directory they are in.
    dirs: HashMap<PathBuf, Gitignore>,
    global: Gitignore,
    defaults: Gitignore,
    /// Shown paths are relative to this.
    cwd: PathBuf,
}

impl Filter {
    /// `roots` must be absolute; `ignore` lines are rooted at `cwd`.
    pub fn new(roots: &[(PathBuf, bool)], ignore: &[String], cwd: &Path) -> Result<Filter> {
        let mut user = GitignoreBuilder::new(cwd);
        for line in ignore {
            let bad = |e: ignore::Error| {
                format!(
                    "--ignore {line:?}: {e}\n  hint: use gitignore syntax, e.g. --ignore '*.log' \
                     or --ignore 'data/'"
                )
            };
            user.add_line(None, line).map_err(bad)?;
            // A bad glob shows only when it is compiled.
            user.build().map_err(bad)?;
        }
        let mut defaults = GitignoreBuilder::new("/");
        for line in DEFAULT_IGNORES {
            // Constant lines; a failure would be a bug caught by the tests.
            let _ = defaults.add_line(None, line);
        }
        let (global, _) = GitignoreBuilder::new(cwd).build_global();
        let built = |b: GitignoreBuilder| b.build().unwrap_or_else(|_| Gitignore::empty());
        let mut filter = Filter {
            trees: roots
                .iter()
                .filter(|(_, dir)| *dir)
                .map(|(p, _)| p.clone())
                .collect(),
            files: roots
                .iter()
                .filter(|(_, dir)| !*dir)
                .map(|(p, _)| p.clone())
                .collect(),
            user: built(user),
            dirs: HashMap::new(),
            global,
            defaults: built(defaults),
            cwd: cwd.to_path_buf(),
        };
        // The roots' and their parents' ignore files, up to the repository's root.
        for (root, dir) in roots {
            if *dir {
                filter.read_ignore_files(root);
                if root.join(".git").exists() {
                    continue;
                }
            }
            let mut at = root.parent();
            while let Some(d) = at {
                filter.read_ignore_files(d);
                if d.join(".git").exists() {
                    break;
                }
                at = d.parent();
            }
        }
        Ok(filter)
    }

    /// Reads `dir`'s .gitignore and .ignore (again), if it has any.
    fn read_ignore_files(&mut self, dir: &Path) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut b = GitignoreBuilder::new(dir);
        let mut any = false;
        for name in [".gitignore", ".ignore"] {
            let file = dir.join(name);
            if file.is_file() {
                any = true;
                if let Some(e) = b.add(&file) {
                    warnings.push(format!(
                        "--watch: {}: {e}; its other lines still count",
                        file.display()
                    ));
                }
            }
        }
        match b.build() {
            Ok(g) if any => {
                self.dirs.insert(dir.to_path_buf(), g);
            }
            _ => {
                self.dirs.remove(dir);
            }
        }
        warnings
    }

    /// Whether a change to `path` should be ignored.
    pub fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        if self.files.iter().any(|f| f == path) {
            return false;
        }
        if !self.trees.iter().any(|t| path.starts_with(t)) {
            return true;
        }
        if self.trees.iter().any(|t| t == path) {
            return false;
        }
        let decide = |m: Match<&ignore::gitignore::Glob>| match m {
            Match::None => None,
            Match::Ignore(_) => Some(true),
            Match::Whitelist(_) => Some(false),
        };
        if let Some(v) = decide(self.user.matched(path, is_dir)) {
            return v;
        }
        for dir in path.ancestors().skip(1) {
            if let Some(g) = self.dirs.get(dir)
                && let Some(v) = decide(g.matched(path, is_dir))
            {
                return v;
            }
        }
        decide(self.global.matched(path, is_dir))
            .or_else(|| decide(self.defaults.matched(path, is_dir)))
            .unwrap_or(false)
    }

    /// `path` as the user would write it: relative to the current directory
    /// where it is below it.
    pub fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(&self.cwd) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
            Ok(rel) => rel.display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }

    /// The directories to watch under `dir` (itself included), reading their
    /// ignore files on the way; symbolic links are not followed.
    fn walk(&mut self, dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
        let mut found = Vec::new();
        let mut warnings = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if self.ignored(&d, true) {
                continue;
            }
            warnings.extend(self.read_ignore_files(&d));
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            found.push(d);
        }
        (found, warnings)
    }
}

/// `relaunch-watch [--ignore GLOB]... [--] PATH...`: what relaunch runs.
/// Returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mut ignore = Vec::new();
    let mut paths = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ignore" => match it.next() {
                Some(g) => ignore.push(g),
                None => return usage("--ignore needs a GLOB"),
            },
            "--" => paths.extend(it.by_ref().map(PathBuf::from)),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        return usage("no PATH to watch");
    }
    let mut out = std::io::stdout().lock();
    match watch(&paths, &ignore, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            say(&mut out, "error", &e);
            2
        }
    }
}

fn usage(what: &str) -> i32 {
    eprintln!(
        "relaunch-watch: {what}\n  hint: relaunch runs this for --watch; usage: \
         relaunch-watch [--ignore GLOB]... [--] PATH..."
    );
    2
}

/// One line to relaunch: `KIND TEXT`, a newline in TEXT written as `\n`.
fn say(out: &mut impl Write, kind: &str, text: &str) -> bool {
    let text = text.replace('\\', "\\\\").replace('\n', "\\n");
    writeln!(out, "{kind} {text}")
        .and_then(|()| out.flush())
        .is_ok()
}

/// Resolves the paths, watches them, says `ready`, then passes changes on
/// until relaunch is gone.
fn watch(paths: &[PathBuf], ignore: &[String], out: &mut impl Write) -> Result<()> {
    let cwd = std::env::current_dir()
        .map_err(|e| format!("--watch: cannot read the current directory: {e}"))?;
    let roots = resolve(paths)?;
    let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
    let mut filter = Filter::new(&roots, ignore, &cwd)?;
    let (raw_tx, raw) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(raw_tx)
        .map_err(|e| format!("--watch: cannot start watching files: {e}"))?;
    let dirs = watch_roots(&mut watcher, &mut filter, &roots, out)?;
    let shown: Vec<String> = roots.iter().map(|(r, _)| filter.shown(r)).collect();
    let ready = format!(
        "watching {} ({dirs} directories; .gitignore, .ignore and build outputs skipped)",
        shown.join(", ")
    );
    if !say(out, "ready", &ready) {
        return Ok(());
    }
    let mut remade = Remade {
        roots: roots
            .iter()
            .filter(|(_, is_dir)| *is_dir)
            .map(|(root, _)| root.clone())
            .collect(),
        gone: Vec::new(),
    };
    for event in raw {
        let told = match event {
            Ok(event) => pass_on(event, &mut watcher, &mut filter, &mut remade, out),
            Err(e) => say(out, "warn", &format!("--watch: {e}")),
        };
        if !told {
            return Ok(());
        }
    }
    Ok(())
}

/// The paths given to `--watch`, absolute, each with whether it is a
/// directory.
fn resolve(paths: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>> {
    let mut roots = Vec::new();
    for p in paths {
        let abs = std::fs::canonicalize(p).map_err(|e| {
            format!(
                "--watch {}: {e}\n  hint: give a directory or file that exists",
                p.display()
            )
        })?;
        let is_dir = abs.is_dir();
        roots.push((abs, is_dir));
    }
    Ok(roots)
}

/// Watches each root: a directory's whole tree, less what is ignored; a
/// file through its directory. Returns how many directories are watched.
fn watch_roots(
    watcher: &mut notify::RecommendedWatcher,
    filter: &mut Filter,
    roots: &[(PathBuf, bool)],
    out: &mut impl Write,
) -> Result<usize> {
    let mut dirs = 0;
    for (root, is_dir) in roots {
        let found = if *is_dir {
            let (found, warnings) = filter.walk(root);
            for w in warnings {
                say(out, "warn", &w);
            }
            found
        } else {
            // A file is watched through its directory: editors replace files
            // by renaming, which a watch on the file itself would lose.
            root.parent().map(Path::to_path_buf).into_iter().collect()
        };
        for d in found {
            add_watch(watcher, &d).map_err(|e| format!("--watch {}: {e}", d.display()))?;
            dirs += 1;
        }
    }
    Ok(dirs)
}

/// Says what one event changed, watching what it made or brought back
/// first. False once relaunch is gone.
fn pass_on(
    event: notify::Event,
    watcher: &mut notify::RecommendedWatcher,
    filter: &mut Filter,
    remade: &mut Remade,
    out: &mut impl Write,
) -> bool {
    if event.need_rescan() {
        // The kernel's queue overflowed: something changed, but what is lost.
        return say(out, "changed", "(many files)");
    }
    let created_dir = matches!(
        event.kind,
        EventKind::Create(CreateKind::Folder)
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    );
    let left = matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
    );
    if left {
        for p in &event.paths {
            remade.left(p, watcher);
        }
    }
    if (left || created_dir)
        && event.paths.iter().any(|p| remade.on_the_way(p))
        && !watch_returned(watcher, filter, remade, out)
    {
        return false;
    }
    let is_dir = match event.kind {
        EventKind::Access(_) => return true,
        EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => true,
        _ => false,
    };
    for path in event.paths {
        let is_dir = is_dir || path.is_dir();
        if filter.ignored(&path, is_dir) || reread_if_ignore_file(filter, &path, out) {
            continue;
        }
        if created_dir && is_dir {
            watch_tree(watcher, filter, &path, out);
        }
        if !say(out, "changed", &filter.shown(&path)) {
            return false;
        }
    }
    true
}

/// Walks and watches each gone root that is back, and says it changed:
/// before the change that brought it is said, so the reload it brings
/// sees a watched tree. False once relaunch is gone.
fn watch_returned(
    watcher: &mut notify::RecommendedWatcher,
    filter: &mut Filter,
    remade: &mut Remade,
    out: &mut impl Write,
) -> bool {
    for back in remade.approach(watcher, out) {
        watch_tree(watcher, filter, &back, out);
        if !say(out, "changed", &filter.shown(&back)) {
            return false;
        }
    }
    true
}

/// When `path` is a `.gitignore` or `.ignore`, its directory's ignore files
/// are read again (a change to one triggers nothing) and true is returned.
fn reread_if_ignore_file(filter: &mut Filter, path: &Path, out: &mut impl Write) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    if name != ".gitignore" && name != ".ignore" {
        return false;
    }
    if let Some(dir) = path.parent() {
        for w in filter.read_ignore_files(dir) {
            say(out, "warn", &w);
        }
    }
    true
}

/// Walks `dir` (a directory made or made again) and watches what the walk
/// finds; what fails is said as a warning.
fn watch_tree(
    watcher: &mut notify::RecommendedWatcher,
    filter: &mut Filter,
    dir: &Path,
    out: &mut impl Write,
) {
    let (found, warnings) = filter.walk(dir);
    for w in warnings {
        say(out, "warn", &w);
    }
    for d in found {
        if let Err(e) = add_watch(watcher, &d) {
            say(out, "warn", &format!("--watch {}: {e}", d.display()));
        }
    }
}

/// Directory roots removed or replaced: inotify watches a directory, not
/// its name, so a new directory of the same name is watched by nobody. A
/// gone root is watched through its nearest existing ancestor until it is
/// back, then walked and watched again. (Not by inode: a directory made
/// right after one was removed may get its inode number.)
struct Remade {
    /// The directory roots.
    roots: Vec<PathBuf>,
    /// Roots not there (or not watched) now.
    gone: Vec<PathBuf>,
}

impl Remade {
    /// `path` was removed or renamed: when it is a root, it is unwatched
    /// (renamed away, its watch would follow it) and counted gone.
    fn left(&mut self, path: &Path, watcher: &mut notify::RecommendedWatcher) {
        if !self.roots.iter().any(|r| r == path) {
            return;
        }
        let _ = watcher.unwatch(path);
        if !self.gone.iter().any(|g| g == path) {
            self.gone.push(path.to_path_buf());
        }
    }

    /// Whether a change at `path` may bring a gone root back (or take away
    /// the ancestor watched for it).
    fn on_the_way(&self, path: &Path) -> bool {
        self.gone.iter().any(|g| g.starts_with(path))
    }

    /// Watches the nearest existing directory on the way to each gone root;
    /// returns the roots that are back (to walk and watch).
    fn approach(
        &mut self,
        watcher: &mut notify::RecommendedWatcher,
        out: &mut impl Write,
    ) -> Vec<PathBuf> {
        let mut back = Vec::new();
        for root in std::mem::take(&mut self.gone) {
            match nearest(watcher, &root) {
                Ok(true) => back.push(root),
                Ok(false) => self.gone.push(root),
                Err(e) => {
                    say(
                        out,
                        "warn",
                        &format!(
                            "--watch {}: removed, and cannot be watched for its return ({e}); \
                             tried again at the next change on its way",
                            root.display()
                        ),
                    );
                    self.gone.push(root);
                }
            }
        }
        back
    }
}

/// Watches the nearest existing ancestor of `root`, going down as long as
/// the next directory appears meanwhile (made before the watch was on);
/// true once `root` itself is there.
fn nearest(watcher: &mut notify::RecommendedWatcher, root: &Path) -> Result<bool> {
    let mut watched: Option<PathBuf> = None;
    loop {
        let Some(near) = root.ancestors().find(|a| a.is_dir()) else {
            return Ok(false);
        };
        if near == root {
            return Ok(true);
        }
        if watched.as_deref() == Some(near) {
            return Ok(false);
        }
        add_watch(watcher, near)?;
        watched = Some(near.to_path_buf());
    }
}

fn add_watch(watcher: &mut notify::RecommendedWatcher, dir: &Path) -> Result<()> {
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| match &e.kind {
            notify::ErrorKind::MaxFilesWatch => format!(
                "{e}: the inotify watch limit is reached; raise it (sysctl \
                 fs.inotify.max_user_watches=524288) or watch fewer directories"
            ),
            _ => e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "relaunch-watch-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if !path.ends_with('/') {
                std::fs::write(p, text).unwrap();
            }
        }
        std::fs::create_dir_all(&root).unwrap();
        std::fs::canonicalize(root).unwrap()
    }

    #[test]
    fn defaults_gitignore_and_user_globs() {
        let root = tree(&[
            (".git/HEAD", ""),
            (".gitignore", "*.log\n/dist/\n"),
            ("app/.ignore", "generated.py\n!keep.log\n"),
            ("app/main.py", ""),
        ]);
        let src = root.join("app");
        let f = Filter::new(
            &[(src.clone(), true)],
            &["*.tmp".into(), "!4913".into()],
            &root,
        )
        .unwrap();
        let ignored = |p: &str, dir: bool| f.ignored(&src.join(p), dir);
        assert!(!ignored("main.py", false));
        assert!(!ignored("sub/x.rs", false));
        // Defaults.
        for p in ["__pycache__", "target", "node_modules", ".git"] {
            assert!(ignored(p, true), "{p}");
        }
        for p in ["m.pyc", ".main.py.swp", "main.py~", ".#main.py"] {
            assert!(ignored(p, false), "{p}");
        }
        // The parent's .gitignore, anchored at its own directory.
        assert!(ignored("server.log", false));
        assert!(
            !ignored("dist", true),
            "/dist/ is the parent's dist, not app/dist"
        );
        // app/.ignore: its own lines, and a whitelist over the parent's.
        assert!(ignored("generated.py", false));
        assert!(!ignored("keep.log", false));
        // --ignore, and --ignore !GLOB over a default.
        assert!(ignored("x.tmp", false));
        assert!(!ignored("4913", false));
        // The watched directory itself, and anything outside it.
        assert!(!f.ignored(&src, true));
        assert!(f.ignored(&root.join("other.py"), false));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_watched_file_counts_even_when_ignored() {
        let root = tree(&[(".gitignore", "app.bin\n"), ("app.bin", "")]);
        let bin = root.join("app.bin");
        let f = Filter::new(&[(bin.clone(), false)], &[], &root).unwrap();
        assert!(!f.ignored(&bin, false));
        assert!(f.ignored(&root.join("other"), false));
        assert_eq!(f.shown(&bin), "app.bin");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_walk_skips_ignored_directories() {
        let root = tree(&[
            (".gitignore", "out/\n"),
            ("src/a.rs", ""),
            ("src/deep/b.rs", ""),
            ("target/debug/x", ""),
            ("out/y", ""),
            ("node_modules/z/index.js", ""),
        ]);
        let mut f = Filter::new(&[(root.clone(), true)], &[], &root).unwrap();
        let mut found: Vec<String> = f.walk(&root).0.iter().map(|d| f.shown(d)).collect();
        found.sort();
        assert_eq!(found, [".", "src", "src/deep"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn bad_ignore_globs_are_usage_errors() {
        let root = tree(&[]);
        let e = Filter::new(&[(root.clone(), true)], &["{a,b".into()], &root)
            .err()
            .expect("refused");
        assert!(e.contains("--ignore \"{a,b\""), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
