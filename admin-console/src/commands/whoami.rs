//! `agora-admin whoami`: the operator's stored session, as the cluster
//! sees it.

use agora_peer::account::{self, describe_expiry};
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// Show who the console is logged in as (asks the cluster).
#[derive(Debug, clap::Args)]
pub struct Whoami {}

impl Whoami {
    /// Asks any node about the stored session.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let (_, session) = console.stored_session().await?.ok_or_else(|| {
            anyhow::anyhow!("not logged in; log in with `agora-admin login NAME`")
        })?;
        let info = account::whoami(&console.client, &session.token)
            .await
            .with_context(|| format!("could not check the session of {}", session.username))?;
        if console.json {
            Console::print_json(&json!({
                "user_id": info.user_id,
                "username": info.username,
                "role": info.role.as_str(),
                "session_id": info.session_id,
                "expires_at_ms": info.expires_at_ms,
                "identity_public_key": info.public_key_hex(),
            }))
        } else {
            println!(
                "{} (user {}, {}); the session ends {}",
                info.username,
                info.user_id,
                info.role.as_str(),
                describe_expiry(info.expires_at_ms)
            );
            Ok(())
        }
    }
}
