//! `agora-admin topics add | remove | list`: the topics a listing may be
//! filed under. Adding and removing are admin writes on the leader;
//! listing is the catalogue's public read, served by a follower.

use agora_peer::catalogue;
use agora_peer::{new_request_id, PeerStore};
use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;

use crate::console::Console;
use crate::table::Table;

/// Add, remove or list catalogue topics.
#[derive(Debug, clap::Args)]
pub struct Topics {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Add a topic, or change the description of one that exists.
    Add {
        /// 1 to 32 of a-z, 0-9, '_' and '-' (upper case is lowered).
        name: String,
        /// What belongs there (at most 200 characters).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Remove a topic (refused while listings on sale use it).
    Remove {
        /// The topic's name.
        name: String,
    },
    /// Show every topic and how many listings on sale use it.
    List,
}

/// A topic, as `topics list --json` prints it.
#[derive(Debug, Serialize)]
struct TopicView {
    name: String,
    description: String,
    listings: u64,
}

impl Topics {
    /// Whether the action makes admin calls (listing does not).
    pub fn makes_admin_calls(&self) -> bool {
        !matches!(self.action, Action::List)
    }

    /// Runs the action: writes on the leader with one request id, the list
    /// from a follower. With a stored session, writes record their index
    /// and the list asks for at least that index, so a list right after an
    /// add shows it, whichever node answers.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let client = &console.client;
        let store = PeerStore::open_existing(&console.data_dir).await?;
        match self.action {
            Action::Add { name, description } => {
                // The cluster keeps names in lower case; say it the same way.
                let name = name.trim().to_lowercase();
                let reply = catalogue::add_topic(client, &name, &description, &new_request_id())
                    .await
                    .with_context(|| format!("could not add the topic {name:?}"))?;
                if let Some(store) = &store {
                    store.bump_max_seen_index(reply.index).await?;
                }
                if console.json {
                    Console::print_json(&json!({
                        "topic": name,
                        "description": description,
                        "index": reply.index,
                    }))
                } else {
                    println!("the topic {name} is there (index {})", reply.index);
                    Ok(())
                }
            }
            Action::Remove { name } => {
                let name = name.trim().to_lowercase();
                let reply = catalogue::remove_topic(client, &name, &new_request_id())
                    .await
                    .with_context(|| format!("could not remove the topic {name:?}"))?;
                if let Some(store) = &store {
                    store.bump_max_seen_index(reply.index).await?;
                }
                if console.json {
                    Console::print_json(&json!({"removed": name, "index": reply.index}))
                } else {
                    println!("removed the topic {name} (index {})", reply.index);
                    Ok(())
                }
            }
            Action::List => {
                let consistency = catalogue::read_your_writes(store.as_ref()).await?;
                let topics = catalogue::topics(client, consistency)
                    .await
                    .context("could not read the topics")?;
                if console.json {
                    let topics: Vec<TopicView> = topics
                        .into_iter()
                        .map(|topic| TopicView {
                            name: topic.name,
                            description: topic.description,
                            listings: topic.listings,
                        })
                        .collect();
                    return Console::print_json(&json!({ "topics": topics }));
                }
                if topics.is_empty() {
                    println!("no topics; add one with `agora-admin topics add NAME`");
                    return Ok(());
                }
                let mut table = Table::new(&["TOPIC", "LISTINGS", "DESCRIPTION"]).align_right(1);
                for topic in &topics {
                    table.row(vec![
                        topic.name.clone(),
                        topic.listings.to_string(),
                        topic.description.clone(),
                    ]);
                }
                print!("{}", table.render());
                Ok(())
            }
        }
    }
}
