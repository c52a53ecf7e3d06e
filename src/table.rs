//! Plain-text tables, for `relaunch status` and `relaunch who`.

/// Left-aligned columns two spaces apart, each line after `indent`, with no
/// trailing blanks.
pub fn table<R: AsRef<[String]>>(rows: &[R], indent: &str) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (cell, width) in row.as_ref().iter().zip(&widths) {
            line += &format!("{cell:<width$}  ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn columns_line_up() {
        let rows = [
            ["PID", "STATE", "COMMAND"].map(String::from),
            ["4250", "ready", "./server --port 8000"].map(String::from),
            ["7", "", ""].map(String::from),
        ];
        assert_eq!(
            table(&rows, "  "),
            "  PID   STATE  COMMAND\n  4250  ready  ./server --port 8000\n  7\n"
        );
        assert_eq!(table(&rows[..1], ""), "PID  STATE  COMMAND\n");
        assert_eq!(table::<Vec<String>>(&[], ""), "");
    }
}
