//! Placeholders in COMMAND arguments, for servers that take a socket on their
//! command line (`uvicorn app:app --fd {fd}`).
//!
//! Contract:
//! - `{fd}`, `{port}`, `{addr}` name the first listener; `{fd:NAME}`,
//!   `{port:NAME}`, `{addr:NAME}` the listener called NAME. `{fd}` is the
//!   number the child sees (3, 4, ...), `{port}` the bound port (never the
//!   requested one, so port 0 works), `{addr}` the bound address as relaunch
//!   logs it (`127.0.0.1:8000`, `[::1]:8000`, `unix:/run/app.sock`).
//! - `{{` and `}}` are literal braces. Any other brace is an error that says
//!   to double it, so a typo never reaches the server silently.
//! - An argument with no brace at all is passed through byte for byte, even
//!   when it is not UTF-8. Arguments with braces are processed as bytes too:
//!   only the placeholders must be ASCII.
//! - Errors are plain strings, ready for `Error::usage`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::plan::spec::Addr;

/// A listener as the child will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<'a> {
    pub name: &'a str,
    /// The fd number in the child (3 + index).
    pub fd: i32,
    /// The bound address; None when an inherited socket's is unknown.
    pub addr: Option<Addr>,
}

impl Named<'_> {
    /// The bound port; None for Unix sockets.
    pub fn port(&self) -> Option<u16> {
        match self.addr {
            Some(Addr::Inet { port, .. }) => Some(port),
            _ => None,
        }
    }

    /// The address as relaunch logs it.
    pub fn address(&self) -> String {
        shown(self.addr.as_ref())
    }
}

/// An address in spec form, or what stands for an unknown one.
pub fn shown(addr: Option<&Addr>) -> String {
    addr.map_or_else(|| "(unknown address)".to_string(), Addr::to_string)
}

const FORMS: &str = "{fd}, {fd:NAME}, {port}, {port:NAME}, {addr}, {addr:NAME}";

/// Expands every argument; see the module contract.
pub fn expand(args: &[OsString], listeners: &[Named]) -> Result<Vec<OsString>, String> {
    args.iter()
        .map(|arg| {
            let bytes = arg.as_bytes();
            if !bytes.iter().any(|&b| b == b'{' || b == b'}') {
                return Ok(arg.clone());
            }
            expand_one(bytes, listeners)
                .map(OsString::from_vec)
                .map_err(|e| format!("in argument {:?}: {e}", arg.to_string_lossy()))
        })
        .collect()
}

fn expand_one(s: &[u8], listeners: &[Named]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'{' if s.get(i + 1) == Some(&b'{') => {
                out.push(b'{');
                i += 2;
            }
            b'}' if s.get(i + 1) == Some(&b'}') => {
                out.push(b'}');
                i += 2;
            }
            b'{' => {
                // A `{` inside means the first one was never closed.
                let end = s[i + 1..]
                    .iter()
                    .position(|&b| b == b'}' || b == b'{')
                    .filter(|&n| s[i + 1 + n] == b'}')
                    .ok_or("unmatched `{`: write `{{` for a literal brace")?;
                let inner = String::from_utf8_lossy(&s[i + 1..i + 1 + end]);
                out.extend_from_slice(resolve(&inner, listeners)?.as_bytes());
                i += end + 2;
            }
            b'}' => return Err("unmatched `}`: write `}}` for a literal brace".into()),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The value of one placeholder, `inner` being what stood between the braces.
fn resolve(inner: &str, listeners: &[Named]) -> Result<String, String> {
    let (key, name) = match inner.split_once(':') {
        Some((k, n)) => (k, Some(n)),
        None => (inner, None),
    };
    if !matches!(key, "fd" | "port" | "addr") {
        return Err(format!(
            "unknown placeholder {{{inner}}}: use {FORMS}, or {{{{ and }}}} for literal braces"
        ));
    }
    let l = match name {
        None => listeners.first().ok_or_else(|| {
            format!("{{{inner}}} needs a listener, but there is none: add one with -l or --port")
        })?,
        Some(n) => listeners.iter().find(|l| l.name == n).ok_or_else(|| {
            let known: Vec<&str> = listeners.iter().map(|l| l.name).collect();
            if known.is_empty() {
                format!("{{{inner}}}: there is no listener named {n:?} (there are no listeners)")
            } else {
                format!(
                    "{{{inner}}}: there is no listener named {n:?}; the listeners are: {}",
                    known.join(", ")
                )
            }
        })?,
    };
    Ok(match key {
        "fd" => l.fd.to_string(),
        "addr" => l.address(),
        _ => match l.port() {
            Some(p) => p.to_string(),
            None => {
                return Err(format!(
                    "{{{inner}}}: listener {:?} ({}) has no port: use {{addr:{}}} or {{fd:{}}}",
                    l.name,
                    l.address(),
                    l.name,
                    l.name
                ));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn listeners() -> [Named<'static>; 3] {
        let at = |s: &str| Some(crate::plan::spec::parse(s).unwrap().addr);
        [
            Named {
                name: "web",
                fd: 3,
                addr: at("127.0.0.1:8000"),
            },
            Named {
                name: "v6",
                fd: 4,
                addr: at("[::1]:9000"),
            },
            Named {
                name: "admin",
                fd: 5,
                addr: at("unix:/run/a.sock"),
            },
        ]
    }

    fn one(s: &str, l: &[Named]) -> Result<String, String> {
        expand(&[OsString::from(s)], l).map(|v| v[0].to_string_lossy().into_owned())
    }

    #[test]
    fn expands() {
        let cases = [
            ("{fd}", "3"),
            ("--fd={fd:web}", "--fd=3"),
            ("--fd={fd:admin}", "--fd=5"),
            ("{port}", "8000"),
            ("--port={port:v6}", "--port=9000"),
            ("{addr}", "127.0.0.1:8000"),
            ("{addr:v6}", "[::1]:9000"),
            ("{addr:admin}", "unix:/run/a.sock"),
            ("{fd}{fd:v6}{fd:admin}", "345"),
            ("{{fd}}", "{fd}"),
            ("{{}}", "{}"),
            ("{{{fd}}}", "{3}"),
            ("a}}b{{c", "a}b{c"),
            ("plain", "plain"),
            ("", ""),
            ("{{\"json\": 1}}", "{\"json\": 1}"),
        ];
        for (input, want) in cases {
            assert_eq!(one(input, &listeners()).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn errors() {
        let cases = [
            (
                "{",
                "in argument \"{\": unmatched `{`: write `{{` for a literal brace",
            ),
            (
                "a{fd",
                "in argument \"a{fd\": unmatched `{`: write `{{` for a literal brace",
            ),
            (
                "{a{fd}",
                "in argument \"{a{fd}\": unmatched `{`: write `{{` for a literal brace",
            ),
            (
                "}",
                "in argument \"}\": unmatched `}`: write `}}` for a literal brace",
            ),
            (
                "{fd}}",
                "in argument \"{fd}}\": unmatched `}`: write `}}` for a literal brace",
            ),
            (
                "{json}",
                "in argument \"{json}\": unknown placeholder {json}: use {fd}, {fd:NAME}, {port}, {port:NAME}, {addr}, {addr:NAME}, or {{ and }} for literal braces",
            ),
            (
                "{}",
                "in argument \"{}\": unknown placeholder {}: use {fd}, {fd:NAME}, {port}, {port:NAME}, {addr}, {addr:NAME}, or {{ and }} for literal braces",
            ),
            (
                "--fd={fd:wbe}",
                "in argument \"--fd={fd:wbe}\": {fd:wbe}: there is no listener named \"wbe\"; the listeners are: web, v6, admin",
            ),
            (
                "{fd:}",
                "in argument \"{fd:}\": {fd:}: there is no listener named \"\"; the listeners are: web, v6, admin",
            ),
            (
                "{port:admin}",
                "in argument \"{port:admin}\": {port:admin}: listener \"admin\" (unix:/run/a.sock) has no port: use {addr:admin} or {fd:admin}",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(one(input, &listeners()), Err(want.to_string()), "{input}");
        }
    }

    #[test]
    fn port_of_a_unix_first_listener() {
        assert_eq!(
            one("{port}", &listeners()[2..]),
            Err("in argument \"{port}\": {port}: listener \"admin\" (unix:/run/a.sock) has no port: use {addr:admin} or {fd:admin}".into())
        );
    }

    #[test]
    fn no_listeners() {
        assert_eq!(
            one("{fd}", &[]),
            Err("in argument \"{fd}\": {fd} needs a listener, but there is none: add one with -l or --port".into())
        );
        assert_eq!(
            one("{fd:web}", &[]),
            Err("in argument \"{fd:web}\": {fd:web}: there is no listener named \"web\" (there are no listeners)".into())
        );
        assert_eq!(one("no braces", &[]).as_deref(), Ok("no braces"));
    }

    #[test]
    fn non_utf8_passes_through() {
        let raw = OsString::from_vec(vec![0xff, b'x', 0xfe]);
        assert_eq!(
            expand(std::slice::from_ref(&raw), &listeners()),
            Ok(vec![raw])
        );
        // Bytes around a placeholder survive too.
        let mixed = OsString::from_vec(vec![0xff, b'{', b'f', b'd', b'}', 0xfe]);
        assert_eq!(
            expand(&[mixed], &listeners()),
            Ok(vec![OsString::from_vec(vec![0xff, b'3', 0xfe])])
        );
    }

    #[test]
    fn every_argument_is_expanded() {
        let args: Vec<OsString> = ["uvicorn", "app:app", "--fd", "{fd:web}"]
            .iter()
            .map(OsString::from)
            .collect();
        let want: Vec<OsString> = ["uvicorn", "app:app", "--fd", "3"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(expand(&args, &listeners()), Ok(want));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = expand(&[OsString::from_vec(bytes)], &listeners());
        }

        #[test]
        fn never_panics_on_brace_soup(s in "[{}:a-z0-9]{0,32}") {
            let _ = expand(&[OsString::from(s)], &listeners());
        }

        #[test]
        fn text_without_braces_is_untouched(bytes in proptest::collection::vec(any::<u8>().prop_filter("no braces", |b| *b != b'{' && *b != b'}'), 0..64)) {
            let arg = OsString::from_vec(bytes);
            prop_assert_eq!(expand(std::slice::from_ref(&arg), &listeners()), Ok(vec![arg]));
        }

        #[test]
        fn doubled_braces_round_trip(s in "[{}a-z ]{0,32}") {
            let escaped = s.replace('{', "{{").replace('}', "}}");
            prop_assert_eq!(one(&escaped, &listeners()), Ok(s));
        }
    }
}
