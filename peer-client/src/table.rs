//! Plain text tables for terminal output: columns two spaces apart, no
//! borders, so they read well and still `grep`/`awk` cleanly. Columns
//! listed as right-aligned (amounts) line up on the decimal point.

/// A table under construction.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    /// Column numbers aligned to the right.
    right: Vec<usize>,
}

impl Table {
    /// A table with these column headers.
    #[must_use]
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()],
            right: Vec::new(),
        }
    }

    /// Aligns column `column` (from 0) to the right.
    #[must_use]
    pub fn align_right(mut self, column: usize) -> Self {
        self.right.push(column);
        self
    }

    /// Appends a row (missing trailing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    #[must_use]
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                let pad = width - cell.chars().count();
                if self.right.contains(&c) {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                if c + 1 < columns {
                    line.push_str("  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut table = Table::new(&["ID", "ROLE"]);
        table.row(vec!["1".into(), "leader".into()]);
        table.row(vec!["10".into(), "follower".into()]);
        assert_eq!(table.render(), "ID  ROLE\n1   leader\n10  follower\n");
    }

    #[test]
    fn aligns_amounts_to_the_right() {
        let mut table = Table::new(&["KIND", "AMOUNT", "WHO"]).align_right(1);
        table.row(vec!["deposit".into(), "+100.00".into(), "external".into()]);
        table.row(vec!["sale".into(), "-5.00".into(), "user:bob".into()]);
        assert_eq!(
            table.render(),
            "KIND      AMOUNT  WHO\ndeposit  +100.00  external\nsale       -5.00  user:bob\n"
        );
    }
}
