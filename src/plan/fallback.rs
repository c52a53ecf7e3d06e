//! Fallback port lists: `8001-8010,9000`.
//!
//! Contract: items are separated by commas (spaces around them are allowed);
//! an item is a port or an inclusive range `LOW-HIGH`. Port 0 is refused (a
//! fallback must be a port clients can be told about; use `-l HOST:0` for an
//! ephemeral one), so are reversed ranges, empty items and lists of more than
//! 65535 entries in total. Duplicates are dropped, the first occurrence keeps
//! its place, so the order written is the order tried.

/// Most entries a list may expand to, counting duplicates.
const MAX_ENTRIES: usize = 65535;

pub fn parse(s: &str) -> Result<Vec<u16>, String> {
    if s.trim().is_empty() {
        return Err("empty fallback list: write ports and ranges such as 8001-8010,9000".into());
    }
    let mut seen = vec![false; 65536];
    let mut out = Vec::new();
    let mut total = 0usize;
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!(
                "empty item in fallback list {s:?}: remove the extra comma"
            ));
        }
        let (low, high) = match item.split_once('-') {
            Some((a, b)) => (port(a.trim())?, port(b.trim())?),
            None => {
                let p = port(item)?;
                (p, p)
            }
        };
        if low > high {
            return Err(format!(
                "reversed range {item:?} in fallback list: write {high}-{low}"
            ));
        }
        total += usize::from(high - low) + 1;
        if total > MAX_ENTRIES {
            return Err(format!(
                "fallback list {s:?} has more than {MAX_ENTRIES} entries: list fewer ports"
            ));
        }
        for p in low..=high {
            if !seen[usize::from(p)] {
                seen[usize::from(p)] = true;
                out.push(p);
            }
        }
    }
    Ok(out)
}

fn port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid port {s:?} in fallback list: write ports and ranges such as 8001-8010,9000"
        ));
    }
    match s.parse::<u32>() {
        Ok(0) => Err(
            "port 0 is not allowed in a fallback list: for an ephemeral port, listen on HOST:0"
                .into(),
        ),
        Ok(p) if p <= 65535 => Ok(p as u16),
        _ => Err(format!("invalid port number {s}: greater than 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let cases: [(&str, Vec<u16>); 9] = [
            ("9000", vec![9000]),
            ("8001-8003,9000", vec![8001, 8002, 8003, 9000]),
            (" 8001 - 8002 , 9000 ", vec![8001, 8002, 9000]),
            ("8000-8000", vec![8000]),
            ("9000,8001-8002", vec![9000, 8001, 8002]),
            ("8002,8001-8003,8002", vec![8002, 8001, 8003]),
            ("1", vec![1]),
            ("65535", vec![65535]),
            ("65534-65535", vec![65534, 65535]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn whole_range_is_allowed() {
        let all = parse("1-65535").unwrap();
        assert_eq!(all.len(), 65535);
        assert_eq!((all[0], all[65534]), (1, 65535));
    }

    #[test]
    fn errors() {
        let cases = [
            (
                "",
                "empty fallback list: write ports and ranges such as 8001-8010,9000",
            ),
            (
                "  ",
                "empty fallback list: write ports and ranges such as 8001-8010,9000",
            ),
            (
                "8000,",
                "empty item in fallback list \"8000,\": remove the extra comma",
            ),
            (
                "8000,,9000",
                "empty item in fallback list \"8000,,9000\": remove the extra comma",
            ),
            (
                "0",
                "port 0 is not allowed in a fallback list: for an ephemeral port, listen on HOST:0",
            ),
            (
                "0-10",
                "port 0 is not allowed in a fallback list: for an ephemeral port, listen on HOST:0",
            ),
            (
                "8010-8001",
                "reversed range \"8010-8001\" in fallback list: write 8001-8010",
            ),
            ("70000", "invalid port number 70000: greater than 65535"),
            (
                "8000-70000",
                "invalid port number 70000: greater than 65535",
            ),
            (
                "99999999999999999999",
                "invalid port number 99999999999999999999: greater than 65535",
            ),
            (
                "http",
                "invalid port \"http\" in fallback list: write ports and ranges such as 8001-8010,9000",
            ),
            (
                "-5",
                "invalid port \"\" in fallback list: write ports and ranges such as 8001-8010,9000",
            ),
            (
                "+5",
                "invalid port \"+5\" in fallback list: write ports and ranges such as 8001-8010,9000",
            ),
            (
                "1-2-3",
                "invalid port \"2-3\" in fallback list: write ports and ranges such as 8001-8010,9000",
            ),
            (
                "1-65535,1",
                "fallback list \"1-65535,1\" has more than 65535 entries: list fewer ports",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(want.to_string()), "{input:?}");
        }
    }
}
