//! The end of a node's own log file, for `agora-admin log`.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Most bytes read from the end of the file: enough for 1,000 ordinary
/// lines, and a bound on what one call costs however long the lines are.
pub const MAX_TAIL_BYTES: u64 = 1 << 20;

/// The file's size and its last `lines` lines (within the last
/// [`MAX_TAIL_BYTES`]), oldest first, without line ends. Invalid UTF-8 is
/// replaced, not refused: a log is for reading.
///
/// # Errors
/// When the file cannot be opened or read.
pub fn read_tail(path: &Path, lines: usize) -> std::io::Result<(u64, Vec<String>)> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let start = size.saturating_sub(MAX_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(MAX_TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    // A window that starts mid-file starts mid-line: drop the fragment.
    if start > 0 && !all.is_empty() {
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    Ok((size, all[skip..].iter().map(|l| (*l).to_owned()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_come_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.log");
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).expect("writes");
        let (size, tail) = read_tail(&path, 3).expect("reads");
        assert_eq!(size, text.len() as u64);
        assert_eq!(tail, vec!["line 48", "line 49", "line 50"]);
        let (_, all) = read_tail(&path, 1000).expect("reads");
        assert_eq!(all.len(), 50);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_tail(&dir.path().join("none.log"), 3).is_err());
    }
}
