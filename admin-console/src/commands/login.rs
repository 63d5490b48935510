//! `agora-admin login NAME`: sign an operator in with OPAQUE, like a peer,
//! and keep the admin session in the console's data directory. Admin calls
//! then carry it, so an operator needs no copy of the cluster's client
//! certificate.

use agora_peer::account::{self, describe_expiry};
use agora_peer::{password, PeerStore};
use agora_proto::auth::{canonical_username, Role};
use anyhow::Context as _;
use serde_json::json;

use crate::console::Console;

/// Log in as an admin (password from the terminal or AGORA_PASSWORD).
#[derive(Debug, clap::Args)]
pub struct Login {
    /// The admin account's name.
    name: String,
}

impl Login {
    /// Logs in, checks the account is an admin, stores the session.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let name = canonical_username(&self.name)?;
        let password = password::login_password(&format!("Password for {name}: "))?;
        let session = account::login(&console.client, &name, password.as_bytes())
            .await
            .with_context(|| format!("could not log in as {name}"))?;
        if session.role != Role::Admin {
            // The session is of no use here; do not leave it valid.
            let _ = account::logout(&console.client, &session.token).await;
            anyhow::bail!(
                "{name} is not an admin; `agora-admin login` needs an admin account (peers log in with `agora login`)"
            );
        }
        let store = PeerStore::open(&console.data_dir).await?;
        store.save_session(&session).await?;
        if console.json {
            Console::print_json(&json!({
                "user_id": session.user_id,
                "username": session.username,
                "role": session.role.as_str(),
                "expires_at_ms": session.expires_at_ms,
                "identity_public_key": session.public_key_hex(),
                "data_dir": console.data_dir,
            }))
        } else {
            println!(
                "logged in as {} (admin); the session ends {}",
                session.username,
                describe_expiry(session.expires_at_ms)
            );
            Ok(())
        }
    }
}
