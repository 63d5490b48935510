//! `agora-admin logout`: end the operator's session on the cluster and
//! forget it here. A session the cluster no longer accepts is forgotten all
//! the same; one the cluster could not be asked about is kept, to retry.

use agora_peer::{account, ClientError};
use serde_json::json;
use tonic::Code;

use crate::console::Console;

/// End the admin session and forget it.
#[derive(Debug, clap::Args)]
pub struct Logout {}

impl Logout {
    /// Revokes the stored session, then deletes it.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let Some((store, session)) = console.stored_session().await? else {
            return print(console, None, None);
        };
        let index =
            match account::logout(&console.client, &session.token).await {
                Ok(index) => Some(index),
                Err(err) if err.code() == Some(Code::Unauthenticated) => None,
                Err(ClientError::InvalidToken) => None,
                Err(err) => return Err(anyhow::Error::new(err).context(
                    "could not end the session on the cluster (it is still stored here; try again)",
                )),
            };
        if let Some(index) = index {
            store.bump_max_seen_index(index).await?;
        }
        store.clear_session().await?;
        print(console, Some(&session.username), index)
    }
}

fn print(console: &Console, username: Option<&str>, index: Option<u64>) -> anyhow::Result<()> {
    if console.json {
        return Console::print_json(
            &json!({"logged_out": username.is_some(), "username": username, "index": index}),
        );
    }
    match (username, index) {
        (None, _) => println!("not logged in"),
        (Some(name), Some(_)) => println!("logged out {name}"),
        (Some(name), None) => {
            println!("logged out {name} (the session had already ended on the cluster)");
        }
    }
    Ok(())
}
