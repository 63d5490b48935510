//! Terminal output: the tables shared with the peer CLI, and the uptime
//! format operators read.

pub use agora_peer::table::Table;

/// A duration in seconds as an operator reads it: `45s`, `3m05s`,
/// `2h07m`, `3d04h`.
pub fn uptime(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_uptime() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(185), "3m05s");
        assert_eq!(uptime(7_620), "2h07m");
        assert_eq!(uptime(273_600), "3d04h");
    }
}
