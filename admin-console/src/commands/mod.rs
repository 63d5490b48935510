//! One module per command, each a clap `Args` struct with
//! `async fn run(self, &Console)`; [`Command`] dispatches to them.

mod add_learner;
mod audit;
mod commission;
mod deposit;
mod digest;
mod dispute_window;
mod events;
mod hold;
mod log;
mod login;
mod logout;
mod promote;
mod remove;
mod settings;
mod snapshot;
mod standing;
mod status;
mod topics;
mod users;
mod whoami;

use std::time::Duration;

use agora_peer::{ClusterClient, RetryPolicy};
use agora_proto::amount::{parse_positive_amount, AmountError};
use clap::Subcommand;

use crate::console::Console;

/// Every console command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every node's role, term, log indexes, lag, database size, requests/s, uptime and version (unreachable nodes flagged).
    Status(status::Status),
    /// Add a running node to the cluster as a non-voting learner.
    AddLearner(add_learner::AddLearner),
    /// Make a learner a voter.
    Promote(promote::Promote),
    /// Remove a node (voter or learner) from the cluster.
    Remove(remove::Remove),
    /// Compare every node's state digest (equal at equal applied indexes).
    Digest(digest::Digest),
    /// Build a snapshot on the leader now and purge the log behind it.
    Snapshot(snapshot::Snapshot),
    /// Put money on a user's account (from outside the ledger).
    Deposit(deposit::Deposit),
    /// Set the commission on sales, in basis points (100 = 1%).
    Commission(commission::Commission),
    /// Set how long sale proceeds stay open to disputes, in seconds.
    DisputeWindow(dispute_window::DisputeWindow),
    /// Suspend a user: its listings leave sale and search; it cannot buy.
    Suspend(standing::User),
    /// Lift a user's suspension: its listings come back.
    Unsuspend(standing::User),
    /// Show a user's standing: suspended or not, sales, lost disputes.
    Standing(standing::User),
    /// Open, post or void a hold (a pending transfer) by hand.
    Hold(hold::Hold),
    /// Check the ledger on every node and compare their digests.
    Audit(audit::Audit),
    /// Add, remove or list the catalogue's topics.
    Topics(topics::Topics),
    /// Log in as an admin; later commands present the session.
    Login(login::Login),
    /// End the admin session and forget it.
    Logout(logout::Logout),
    /// Show who the console is logged in as.
    Whoami(whoami::Whoami),
    /// Show the cluster's event log: elections, membership changes,
    /// crashes and restarts, snapshots, audit failures.
    Events(events::Events),
    /// Find, show, suspend, reinstate or delete user accounts.
    Users(users::Users),
    /// Show the replicated settings, or change one with `settings set`.
    Settings(settings::Settings),
    /// Show the end of one node's log file.
    Log(log::Log),
    /// Serve the web dashboard (sign in there with an admin account).
    Serve(crate::web::Serve),
}

impl Command {
    /// Whether the command makes admin calls (and so needs an admin session
    /// or the operator certificate); the session commands do not.
    pub fn makes_admin_calls(&self) -> bool {
        match self {
            // The dashboard signs each browser in with its own admin
            // session; it needs none of the console's.
            Self::Login(_) | Self::Logout(_) | Self::Whoami(_) | Self::Serve(_) => false,
            Self::Topics(command) => command.makes_admin_calls(),
            _ => true,
        }
    }

    /// Runs the command.
    pub async fn run(self, console: &Console) -> anyhow::Result<()> {
        match self {
            Self::Status(command) => command.run(console).await,
            Self::AddLearner(command) => command.run(console).await,
            Self::Promote(command) => command.run(console).await,
            Self::Remove(command) => command.run(console).await,
            Self::Digest(command) => command.run(console).await,
            Self::Snapshot(command) => command.run(console).await,
            Self::Deposit(command) => command.run(console).await,
            Self::Commission(command) => command.run(console).await,
            Self::DisputeWindow(command) => command.run(console).await,
            Self::Suspend(user) => user.run(console, standing::Action::Suspend).await,
            Self::Unsuspend(user) => user.run(console, standing::Action::Unsuspend).await,
            Self::Standing(user) => user.run(console, standing::Action::Show).await,
            Self::Hold(command) => command.run(console).await,
            Self::Audit(command) => command.run(console).await,
            Self::Topics(command) => command.run(console).await,
            Self::Login(command) => command.run(console).await,
            Self::Logout(command) => command.run(console).await,
            Self::Whoami(command) => command.run(console).await,
            Self::Events(command) => command.run(console).await,
            Self::Users(command) => command.run(console).await,
            Self::Settings(command) => command.run(console).await,
            Self::Log(command) => command.run(console).await,
            Self::Serve(command) => command.run(console).await,
        }
    }
}

/// An amount of money that moves (more than 0.00), checked while the
/// command line is parsed, before anything is sent.
fn amount_arg(text: &str) -> Result<u64, AmountError> {
    parse_positive_amount(text)
}

/// A client for membership changes: they wait for the log to be replicated
/// (a learner may first have to catch up), so one attempt may take far
/// longer than a write.
async fn membership_client(console: &Console) -> ClusterClient {
    membership_client_of(&console.client).await
}

/// [`membership_client`] over any client (the dashboard's carry a
/// browser's admin session).
pub(crate) async fn membership_client_of(client: &ClusterClient) -> ClusterClient {
    /// Longest one membership call may take.
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
    /// Longest the console keeps retrying a membership call.
    const BUDGET: Duration = Duration::from_secs(120);

    let client = client.clone().with_retry_policy(RetryPolicy {
        attempt_timeout: ATTEMPT_TIMEOUT,
        budget: BUDGET,
        ..RetryPolicy::default()
    });
    // Start at the leader rather than finding it through redirects.
    crate::fleet::find_leader(&client).await;
    client
}
