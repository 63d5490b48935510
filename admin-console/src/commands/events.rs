//! `agora-admin events [--since ID] [--follow]`: the cluster's replicated
//! event log (elections, membership changes, crashes and restarts,
//! unreachable nodes, snapshots, audit failures), oldest first.

use std::time::Duration;

use agora_peer::table::utc;
use agora_proto::admin::{Event, EventsReply};
use anyhow::Context as _;
use serde::Serialize;

use crate::console::Console;
use crate::table::Table;

/// How often `--follow` asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Events asked for per page.
const PAGE: u32 = 1000;

/// Show the cluster's event log.
#[derive(Debug, clap::Args)]
pub struct Events {
    /// Only events with an id above this.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// At most this many events (the newest of them when `--since` is not
    /// given); 0 for all that are kept.
    #[arg(long, default_value_t = 50)]
    last: usize,
    /// Keep printing new events as they are recorded (Ctrl-C stops); with
    /// `--json`, one JSON object per line.
    #[arg(long)]
    follow: bool,
}

/// One event as `--json` prints it.
#[derive(Debug, Serialize)]
struct EventView {
    id: u64,
    time_ms: u64,
    time: String,
    node_id: u64,
    kind: String,
    subject_node_id: Option<u64>,
    term: u64,
    message: String,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        Self {
            id: e.id,
            time_ms: e.time_ms,
            time: utc(e.time_ms),
            node_id: e.node_id,
            kind: e.kind.clone(),
            subject_node_id: (e.subject_node_id != 0).then_some(e.subject_node_id),
            term: e.term,
            message: e.message.clone(),
        }
    }
}

impl Events {
    /// Pages through the log from `--since`, then follows it if asked.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        let mut events = Vec::new();
        let mut since = self.since;
        loop {
            let page = page(console, since).await?;
            let done = page.events.len() < PAGE as usize;
            since = page.events.last().map_or(since, |e| e.id);
            events.extend(page.events);
            if done {
                break;
            }
        }
        if self.since == 0 && self.last > 0 && events.len() > self.last {
            events.drain(..events.len() - self.last);
        }
        if console.json && !self.follow {
            let views: Vec<EventView> = events.iter().map(EventView::from).collect();
            return Console::print_json(&serde_json::json!({
                "events": views,
                "last_id": since,
            }));
        }
        print_events(console.json, &events, true)?;
        if !self.follow {
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            let page = match page(console, since).await {
                Ok(page) => page,
                // The node asked may be the one that just died: try again.
                Err(e) => {
                    eprintln!("{e:#}; retrying");
                    continue;
                }
            };
            since = page.events.last().map_or(since, |e| e.id);
            print_events(console.json, &page.events, false)?;
        }
    }
}

async fn page(console: &Console, since_id: u64) -> anyhow::Result<EventsReply> {
    agora_peer::operator::events(&console.client, since_id, PAGE)
        .await
        .context("could not read the event log")
}

fn print_events(json: bool, events: &[Event], header: bool) -> anyhow::Result<()> {
    if json {
        for e in events {
            println!("{}", serde_json::to_string(&EventView::from(e))?);
        }
        return Ok(());
    }
    if events.is_empty() {
        if header {
            println!("no events recorded yet");
        }
        return Ok(());
    }
    print!("{}", render(events, header));
    Ok(())
}

/// The events as a table (`header`: with the column names).
fn render(events: &[Event], header: bool) -> String {
    let mut table = Table::new(&["ID", "TIME (UTC)", "NODE", "KIND", "ABOUT", "MESSAGE"]);
    for e in events {
        table.row(vec![
            e.id.to_string(),
            utc(e.time_ms),
            e.node_id.to_string(),
            e.kind.clone(),
            if e.subject_node_id == 0 {
                "-".to_owned()
            } else {
                format!("node {}", e.subject_node_id)
            },
            e.message.clone(),
        ]);
    }
    let text = table.render();
    if header {
        text
    } else {
        // Followed pages continue the first table: no repeated header.
        text.lines().skip(1).map(|l| format!("{l}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, kind: &str, subject: u64) -> Event {
        Event {
            id,
            time_ms: 1_735_689_600_000,
            node_id: 1,
            kind: kind.into(),
            subject_node_id: subject,
            term: 2,
            message: "node 2 restarted after an unclean stop".into(),
        }
    }

    #[test]
    fn a_table_row_per_event() {
        let text = render(&[event(7, "node_restarted_after_crash", 2)], true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID"), "{text}");
        assert!(lines[1].starts_with("7 "), "{text}");
        assert!(lines[1].contains("2025-01-01 00:00:00  1 "), "{text}");
        assert!(lines[1].contains("node 2"), "{text}");
        assert_eq!(
            render(&[event(8, "leader_elected", 0)], false)
                .lines()
                .count(),
            1
        );
    }

    #[test]
    fn json_names_no_subject_as_null() -> anyhow::Result<()> {
        let value = serde_json::to_value(EventView::from(&event(3, "snapshot_built", 0)))?;
        assert_eq!(value["subject_node_id"], serde_json::Value::Null);
        assert_eq!(value["time"], "2025-01-01 00:00:00");
        Ok(())
    }
}
