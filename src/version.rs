//! Which relaunch this is: the version, and the build id a packager may set.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `RELAUNCH_BUILD_ID` as it was when this binary was compiled.
pub fn build_id() -> Option<&'static str> {
    option_env!("RELAUNCH_BUILD_ID").filter(|b| !b.is_empty())
}

/// This image: "0.1.0" or "0.1.0 (build b7)".
pub fn image() -> String {
    describe(VERSION, build_id())
}

/// A version and build id as logs and answers show them.
pub fn describe(version: &str, build_id: Option<&str>) -> String {
    match build_id {
        Some(b) => format!("{version} (build {b})"),
        None => version.to_string(),
    }
}
