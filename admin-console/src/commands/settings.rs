//! `agora-admin settings` and `agora-admin settings set NAME VALUE`: the
//! cluster's replicated settings (commission, purchase hold time, dispute
//! window, Argon2id parameters for new registrations).

use agora_peer::{new_request_id, operator};
use agora_proto::admin::Settings as Wire;
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;
use crate::table::Table;

/// Show or change the replicated settings.
#[derive(Debug, clap::Args)]
pub struct Settings {
    #[command(subcommand)]
    action: Option<Action>,
}

/// What to do with the settings.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show every setting (the default).
    Show,
    /// Change one setting: commission_bps, hold_ttl_ms, dispute_window_ms,
    /// argon2_memory_kib, argon2_iterations or argon2_parallelism.
    Set {
        /// The setting's name.
        name: String,
        /// The new value, a whole number in the setting's unit.
        value: String,
    },
}

impl Settings {
    /// Reads them from any node, or changes one through the leader.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let client = &console.client;
        let (settings, changed) = match self.action.unwrap_or(Action::Show) {
            Action::Show => (
                operator::settings(client)
                    .await
                    .context("could not read the settings")?,
                None,
            ),
            Action::Set { name, value } => {
                let settings = operator::set_setting(client, &name, &value, &new_request_id())
                    .await
                    .with_context(|| format!("could not set {name} to {value}"))?;
                (settings, Some((name, value)))
            }
        };
        if console.json {
            return Console::print_json(&json!({
                "commission_bps": settings.commission_bps,
                "hold_ttl_ms": settings.hold_ttl_ms,
                "dispute_window_ms": settings.dispute_window_ms,
                "argon2_memory_kib": settings.argon2_memory_kib,
                "argon2_iterations": settings.argon2_iterations,
                "argon2_parallelism": settings.argon2_parallelism,
                "index": settings.index,
            }));
        }
        if let Some((name, value)) = changed {
            println!("{name} is now {value} (index {})", settings.index);
        }
        print!("{}", render(&settings));
        Ok(())
    }
}

/// The settings as a table with their meaning.
fn render(s: &Wire) -> String {
    let mut table = Table::new(&["SETTING", "VALUE", "MEANING"]);
    let rows = [
        (
            "commission_bps",
            s.commission_bps.to_string(),
            format!(
                "the operator keeps {}.{:02}% of each sale",
                s.commission_bps / 100,
                s.commission_bps % 100
            ),
        ),
        (
            "hold_ttl_ms",
            s.hold_ttl_ms.to_string(),
            if s.hold_ttl_ms == 0 {
                "not set: each node's --purchase-hold-ms applies".to_owned()
            } else {
                format!("a purchase holds the money {} s", s.hold_ttl_ms / 1000)
            },
        ),
        (
            "dispute_window_ms",
            s.dispute_window_ms.to_string(),
            format!(
                "proceeds stay open to disputes {} s",
                s.dispute_window_ms / 1000
            ),
        ),
        (
            "argon2_memory_kib",
            s.argon2_memory_kib.to_string(),
            "Argon2id memory for new registrations".to_owned(),
        ),
        (
            "argon2_iterations",
            s.argon2_iterations.to_string(),
            "Argon2id passes for new registrations".to_owned(),
        ),
        (
            "argon2_parallelism",
            s.argon2_parallelism.to_string(),
            "Argon2id lanes for new registrations".to_owned(),
        ),
    ];
    for (name, value, meaning) in rows {
        table.row(vec![name.to_owned(), value, meaning]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_row() {
        let text = render(&Wire {
            commission_bps: 250,
            hold_ttl_ms: 0,
            dispute_window_ms: 86_400_000,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            index: 0,
        });
        assert_eq!(text.lines().count(), 7, "{text}");
        assert!(text.contains("2.50%"), "{text}");
        assert!(text.contains("--purchase-hold-ms"), "{text}");
        assert!(text.contains("86400 s"), "{text}");
    }
}
