//! One error type for the whole binary; `main` maps its kind to an exit code.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line or environment: exit 2.
    Usage,
    /// Something failed while running: exit 1.
    Runtime,
    /// The program is not executable: exit 126.
    NotExecutable,
    /// The program was not found: exit 127.
    NotFound,
}

impl Kind {
    /// The exit code relaunch ends with for this kind of error.
    pub fn code(self) -> i32 {
        match self {
            Kind::Usage => 2,
            Kind::Runtime => 1,
            Kind::NotExecutable => 126,
            Kind::NotFound => 127,
        }
    }

    /// The kind of a failure the supervisor ended on with this code: the
    /// program not found or not executable, or else a runtime failure.
    pub fn of_code(code: i32) -> Kind {
        [Kind::NotFound, Kind::NotExecutable]
            .into_iter()
            .find(|k| k.code() == code)
            .unwrap_or(Kind::Runtime)
    }
}

/// What happened, and (when we know it) what to do about it.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub msg: String,
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
            hint: None,
        }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(Kind::Usage, msg)
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Self::new(Kind::Runtime, msg)
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn exit_code(&self) -> i32 {
        self.kind.code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
