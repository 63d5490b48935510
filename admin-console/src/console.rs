//! What every command works with: the cluster client, the operator's data
//! directory, and the output mode.
//!
//! Admin calls are authorized by an admin session (`agora-admin login`,
//! kept in the data directory) or by the cluster file's operator client
//! certificate. The console presents both when it has both, so either one
//! suffices on the server side.

use std::path::{Path, PathBuf};

use agora_peer::account::Session;
use agora_peer::{ClusterClient, PeerStore};
use agora_proto::auth::Role;
use anyhow::Context as _;

/// The loaded cluster and how to print.
#[derive(Debug)]
pub struct Console {
    /// One channel per node, presenting the cluster's client certificate if
    /// the cluster file names one, and the stored admin session if any.
    pub client: ClusterClient,
    /// The cluster file it was loaded from (the dashboard builds its own
    /// client from it).
    pub cluster_path: PathBuf,
    /// Where the operator's session lives.
    pub data_dir: PathBuf,
    /// Print one JSON document instead of text.
    pub json: bool,
}

impl Console {
    /// Loads the cluster file. With `authorize`, also attaches the stored
    /// admin session and checks that admin calls have some authorization
    /// (a session or the operator certificate).
    pub async fn load(
        path: &Path,
        data_dir: PathBuf,
        json: bool,
        authorize: bool,
    ) -> anyhow::Result<Self> {
        let file = agora_peer::read_cluster_file(path)?;
        let has_cert = file.client_cert.is_some() && file.client_key.is_some();
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        let mut client = ClusterClient::from_cluster_file(&file, base_dir)?;
        if authorize {
            match usable_session(&data_dir).await? {
                Ok(session) => client = client.with_token(&session.token)?,
                Err(why) if !has_cert => anyhow::bail!(
                    "{why}; or name the operator certificate in {} (client_cert and client_key, made by `agora-server certs`)",
                    path.display()
                ),
                // The certificate authorizes the call on its own.
                Err(_) => {}
            }
        }
        Ok(Self {
            client,
            cluster_path: path.to_path_buf(),
            data_dir,
            json,
        })
    }

    /// The stored operator session, if any (expired or not).
    pub async fn stored_session(&self) -> anyhow::Result<Option<(PeerStore, Session)>> {
        let Some(store) = PeerStore::open_existing(&self.data_dir).await? else {
            return Ok(None);
        };
        Ok(store.session().await?.map(|session| (store, session)))
    }

    /// Prints `value` as one JSON document on stdout.
    pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!(
            "{}",
            serde_json::to_string_pretty(value).context("could not render JSON")?
        );
        Ok(())
    }
}

/// The stored admin session if it can be used, else why not (as the start
/// of a sentence telling the operator what to do).
async fn usable_session(data_dir: &Path) -> anyhow::Result<Result<Session, String>> {
    let session = match PeerStore::open_existing(data_dir).await? {
        Some(store) => store.session().await?,
        None => None,
    };
    Ok(match session {
        None => {
            Err("admin calls need an admin session: log in with `agora-admin login NAME`".into())
        }
        Some(session) if session.is_expired() => Err(format!(
            "the admin session of {0} has expired: log in again with `agora-admin login {0}`",
            session.username
        )),
        Some(session) if session.role != Role::Admin => Err(format!(
            "{0} is not an admin: log in with an admin account (`agora-admin login NAME`)",
            session.username
        )),
        Some(session) => Ok(session),
    })
}
