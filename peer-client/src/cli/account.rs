//! `agora register | login | logout | whoami`: the account commands.
//!
//! The password comes from `AGORA_PASSWORD` or a no-echo prompt and only
//! feeds OPAQUE; the session and the recovered identity key go to the
//! peer's local database.

use std::path::PathBuf;

use agora_peer::account::{self, describe_expiry, Session};
use agora_peer::local::{data_dir, PeerStore};
use agora_peer::{password, ClientError, ClusterClient};
use agora_proto::auth::canonical_username;
use anyhow::Context as _;
use serde_json::json;
use tonic::Code;

/// One peer: the cluster it talks to and where its state lives.
pub struct Peer {
    client: ClusterClient,
    data_dir: PathBuf,
    json: bool,
}

/// A peer that is logged in: its session, a client presenting it, and the
/// local database (to record the indexes its writes were applied at).
pub struct SignedIn {
    /// The cluster client, presenting the session on every call.
    pub client: ClusterClient,
    /// The peer's local database.
    pub store: PeerStore,
    /// The stored session.
    pub session: Session,
}

impl Peer {
    /// A peer whose data directory is `explicit`, else `$HOME/<dir_name>`.
    pub fn new(
        client: ClusterClient,
        explicit: Option<PathBuf>,
        dir_name: &str,
        json: bool,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client,
            data_dir: data_dir(explicit, dir_name)?,
            json,
        })
    }

    /// Whether to print one JSON document instead of text.
    pub fn json(&self) -> bool {
        self.json
    }

    /// The cluster client, without a session (for reads anyone may make).
    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// The peer's local database if it has one (without creating it), for
    /// commands that work logged out but read their own writes when they
    /// can.
    pub async fn existing_store(&self) -> anyhow::Result<Option<PeerStore>> {
        let store = PeerStore::open_existing(&self.data_dir).await?;
        if let Some(store) = &store {
            self.recall_leader(store).await?;
        }
        Ok(store)
    }

    /// Starts the client from the leader this peer last saw, so reads go
    /// to followers first and writes to the leader first.
    async fn recall_leader(&self, store: &PeerStore) -> anyhow::Result<()> {
        if let Some(id) = store.leader_hint().await? {
            // Shared by every clone of the client; unknown ids are ignored.
            self.client.set_leader_hint(id);
        }
        Ok(())
    }

    /// The stored session and a client presenting it, for commands that
    /// act as the account; a plain sentence saying how to log in when there
    /// is no usable session.
    pub async fn signed_in(&self) -> anyhow::Result<SignedIn> {
        let not_logged_in = || anyhow::anyhow!("not logged in; log in with `agora login NAME`");
        let store = PeerStore::open_existing(&self.data_dir)
            .await?
            .ok_or_else(not_logged_in)?;
        let session = store.session().await?.ok_or_else(not_logged_in)?;
        self.recall_leader(&store).await?;
        if session.is_expired() {
            anyhow::bail!(
                "the session of {0} has expired; log in again with `agora login {0}`",
                session.username
            );
        }
        let client = self.client.clone().with_token(&session.token)?;
        Ok(SignedIn {
            client,
            store,
            session,
        })
    }

    /// `agora register NAME`.
    pub async fn register(&self, name: &str) -> anyhow::Result<()> {
        // Check the name before asking for a password it would waste.
        let name = canonical_username(name)?;
        let password = password::new_password(&format!("Password for the new account {name}: "))?;
        let account = account::register(&self.client, &name, password.as_bytes(), false)
            .await
            .with_context(|| format!("could not register {name}"))?;
        let store = PeerStore::open(&self.data_dir).await?;
        store.bump_max_seen_index(account.index).await?;
        if self.json {
            println!(
                "{}",
                json!({
                    "user_id": account.user_id,
                    "username": account.username,
                    "index": account.index,
                    "identity_public_key": account.public_key_hex(),
                })
            );
        } else {
            println!(
                "registered {} (user {}); log in with `agora login {}`",
                account.username, account.user_id, account.username
            );
        }
        Ok(())
    }

    /// `agora login NAME`.
    pub async fn login(&self, name: &str) -> anyhow::Result<()> {
        let name = canonical_username(name)?;
        let password = password::login_password(&format!("Password for {name}: "))?;
        let session = account::login(&self.client, &name, password.as_bytes())
            .await
            .with_context(|| format!("could not log in as {name}"))?;
        let store = PeerStore::open(&self.data_dir).await?;
        store.save_session(&session).await?;
        if self.json {
            println!(
                "{}",
                json!({
                    "user_id": session.user_id,
                    "username": session.username,
                    "role": session.role.as_str(),
                    "expires_at_ms": session.expires_at_ms,
                    "identity_public_key": session.public_key_hex(),
                    "data_dir": self.data_dir,
                })
            );
        } else {
            println!(
                "logged in as {} (user {}, {}); the session ends {}",
                session.username,
                session.user_id,
                session.role.as_str(),
                describe_expiry(session.expires_at_ms)
            );
        }
        Ok(())
    }

    /// `agora logout`: ends the session on the cluster, then forgets it.
    /// A session the cluster no longer accepts is forgotten all the same;
    /// one the cluster could not be asked about is kept, to try again.
    pub async fn logout(&self) -> anyhow::Result<()> {
        let store = PeerStore::open_existing(&self.data_dir).await?;
        let session = match &store {
            Some(store) => store.session().await?,
            None => None,
        };
        let (Some(store), Some(session)) = (store, session) else {
            return self.print_logout(None, None);
        };
        let index =
            match account::logout(&self.client, &session.token).await {
                Ok(index) => Some(index),
                // Expired or already revoked: nothing left to end remotely.
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
        self.print_logout(Some(&session.username), index)
    }

    fn print_logout(&self, username: Option<&str>, index: Option<u64>) -> anyhow::Result<()> {
        if self.json {
            println!(
                "{}",
                json!({"logged_out": username.is_some(), "username": username, "index": index})
            );
        } else {
            match (username, index) {
                (None, _) => println!("not logged in"),
                (Some(name), Some(_)) => println!("logged out {name}"),
                (Some(name), None) => {
                    println!("logged out {name} (the session had already ended on the cluster)");
                }
            }
        }
        Ok(())
    }

    /// `agora whoami`: the stored session, as the cluster sees it.
    pub async fn whoami(&self) -> anyhow::Result<()> {
        let session = match PeerStore::open_existing(&self.data_dir).await? {
            Some(store) => store.session().await?,
            None => None,
        };
        let session = session
            .ok_or_else(|| anyhow::anyhow!("not logged in; log in with `agora login NAME`"))?;
        let info = account::whoami(&self.client, &session.token)
            .await
            .with_context(|| format!("could not check the session of {}", session.username))?;
        if info.identity_public_key != session.identity.verifying_key() {
            eprintln!(
                "warning: the identity key stored here is not the one registered with {}; log in again",
                info.username
            );
        }
        if self.json {
            println!(
                "{}",
                json!({
                    "user_id": info.user_id,
                    "username": info.username,
                    "role": info.role.as_str(),
                    "session_id": info.session_id,
                    "expires_at_ms": info.expires_at_ms,
                    "identity_public_key": info.public_key_hex(),
                })
            );
        } else {
            println!(
                "{} (user {}, {}); the session ends {}; identity key {}",
                info.username,
                info.user_id,
                info.role.as_str(),
                describe_expiry(info.expires_at_ms),
                info.public_key_hex()
            );
        }
        Ok(())
    }
}
