//! `agora serve | buy | downloads | resume | cancel | sales`: selling and
//! buying files.
//!
//! `serve` runs the file server and keeps the presence lease alive until
//! Ctrl-C or SIGTERM, then goes offline. `buy` and `resume` draw a
//! progress bar (bytes, rate, ETA) on a terminal, and plain lines
//! otherwise.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agora_peer::buying::{Buyer, Progress};
use agora_peer::catalogue::read_your_writes;
use agora_peer::local::{Download, DownloadState};
use agora_peer::presence::keep_presence;
use agora_peer::purchase;
use agora_peer::selling::{self, Seller};
use agora_peer::table::Table;
use agora_peer::transfer_slots::TransferLimits;
use agora_proto::amount::format_amount;
use agora_proto::market::{Purchase, PurchaseRole, PurchaseState};
use agora_proto::merkle;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::cli::account::{Peer, SignedIn};
use crate::cli::catalogue::human_size;

/// Transfers served at once by default, all buyers together (see
/// [`agora_peer::transfer_slots`]).
const DEFAULT_TRANSFERS_TOTAL: u16 = 64;
/// Transfers one buyer may have open at once by default.
const DEFAULT_TRANSFERS_PER_BUYER: u16 = 4;
// The library's defaults, which the flags' types cannot name directly.
const _: () = assert!(
    DEFAULT_TRANSFERS_TOTAL as usize == agora_peer::transfer_slots::DEFAULT_TRANSFERS_TOTAL
        && DEFAULT_TRANSFERS_PER_BUYER as usize
            == agora_peer::transfer_slots::DEFAULT_TRANSFERS_PER_BUYER
);

/// `agora serve`.
#[derive(Debug, clap::Args)]
pub struct Serve {
    /// Where to listen (host:port; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The address buyers connect to, when it is not the listening one
    /// (behind NAT or a proxy).
    #[arg(long)]
    advertise: Option<String>,
    /// Transfers served at once, all buyers together; one more is refused
    /// and told to try again.
    #[arg(long, default_value_t = DEFAULT_TRANSFERS_TOTAL, value_parser = clap::value_parser!(u16).range(1..))]
    max_transfers: u16,
    /// Transfers one buyer may have open at once.
    #[arg(long, default_value_t = DEFAULT_TRANSFERS_PER_BUYER, value_parser = clap::value_parser!(u16).range(1..))]
    max_transfers_per_buyer: u16,
}

impl Serve {
    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let SignedIn {
            client,
            store,
            session,
        } = peer.signed_in().await?;
        let listener = TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let local = selling::local_addr(&listener)?;
        let endpoint = self.advertise.unwrap_or_else(|| local.to_string());
        let listings = store.listings(session.user_id, false).await?.len();
        let seller = Seller::new(client.clone(), store.clone(), session.user_id)
            .await?
            .with_limits(TransferLimits {
                per_buyer: usize::from(self.max_transfers_per_buyer),
                total: usize::from(self.max_transfers),
            });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let server = tokio::spawn({
            let identity = session.identity.clone();
            let stopped = stopped.clone();
            async move { seller.serve(listener, &identity, stopped()).await }
        });
        // Online only once the server listens and the cluster knows it.
        agora_peer::presence::announce(&client, &endpoint)
            .await
            .context("could not announce this peer to the cluster")?;
        println!("serving {listings} listing(s) at {endpoint}");
        let mut presence = tokio::spawn({
            let client = client.clone();
            let store = store.clone();
            let endpoint = endpoint.clone();
            let stopped = stopped.clone();
            async move { keep_presence(&client, &endpoint, Some(&store), stopped()).await }
        });
        // Serve until asked to stop, or until presence fails for good (an
        // expired session, say): a seller nobody can find must not look
        // alive.
        let lost = tokio::select! {
            () = shutdown_signal() => None,
            ended = &mut presence => Some(ended),
        };
        tracing::info!("stopping: going offline");
        let _ = stop_tx.send(true);
        let presence_result = match lost {
            Some(ended) => ended,
            None => presence.await,
        };
        server.await.context("the file server stopped")??;
        match presence_result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if lost_early(&e) => Err(anyhow::anyhow!(
                "stopped serving: the cluster no longer accepts this peer's session ({e}); log in again with `agora login`, then run `agora serve` again"
            )),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "presence ended with an error");
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("the presence task failed: {e}")),
        }
    }
}

/// Whether presence ended because the session is no longer good.
fn lost_early(e: &agora_peer::ClientError) -> bool {
    matches!(
        e.code(),
        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
    )
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `agora buy`.
#[derive(Debug, clap::Args)]
pub struct Buy {
    /// The listing to buy (`agora search` finds them).
    listing: u64,
    /// Where to write the file (default: a name from its title, here).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long to hold your money for the download, in seconds (default:
    /// the cluster's, 30 minutes unless the operator changed it).
    #[arg(long, default_value_t = 0)]
    hold_secs: u32,
}

impl Buy {
    /// Buys (or continues an unfinished purchase of) the listing.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let signed = peer.signed_in().await?;
        let buyer = buyer(&signed);
        let mut progress = Bar::new(peer.json());
        let done = buyer
            .buy(self.listing, self.out, self.hold_secs, &mut progress)
            .await;
        report(peer, &done?)
    }
}

/// `agora resume`.
#[derive(Debug, clap::Args)]
pub struct Resume {
    /// The purchase (`agora downloads` lists them).
    purchase: u64,
}

impl Resume {
    /// Continues the download from the next missing chunk.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let signed = peer.signed_in().await?;
        let mut progress = Bar::new(peer.json());
        let done = buyer(&signed).resume(self.purchase, &mut progress).await;
        report(peer, &done?)
    }
}

/// `agora cancel`.
#[derive(Debug, clap::Args)]
pub struct Cancel {
    /// The purchase.
    purchase: u64,
}

impl Cancel {
    /// Cancels the purchase; the money is available again at once.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let signed = peer.signed_in().await?;
        buyer(&signed).cancel(self.purchase).await?;
        if peer.json() {
            println!(
                "{}",
                json!({"purchase_id": self.purchase, "state": "cancelled"})
            );
        } else {
            println!(
                "cancelled purchase {}; the money held for it is available again",
                self.purchase
            );
        }
        Ok(())
    }
}

/// `agora downloads`.
#[derive(Debug, clap::Args)]
pub struct Downloads {}

impl Downloads {
    /// Lists this peer's downloads, newest first.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let signed = peer.signed_in().await?;
        let downloads = signed.store.downloads(signed.session.user_id).await?;
        let dir = signed.store.downloads_dir();
        let rows: Vec<(Download, u64)> = downloads
            .into_iter()
            .map(|d| {
                let received = received_chunks(&dir, &d);
                (d, received)
            })
            .collect();
        if peer.json() {
            let items: Vec<Value> = rows.iter().map(|(d, r)| download_json(d, *r)).collect();
            println!("{}", Value::Array(items));
            return Ok(());
        }
        if rows.is_empty() {
            println!("no downloads yet; `agora buy LISTING` buys one");
            return Ok(());
        }
        let mut table = Table::new(&["PURCHASE", "LISTING", "TITLE", "STATE", "PROGRESS", "FILE"])
            .align_right(0)
            .align_right(1);
        for (d, received) in &rows {
            let count = merkle::chunk_count(d.size, d.chunk_size);
            let progress = match d.state {
                DownloadState::Fetching => format!("{received}/{count} chunks"),
                _ => human_size(d.size),
            };
            table.row(vec![
                d.purchase_id.to_string(),
                d.listing_id.to_string(),
                d.title.chars().take(40).collect(),
                download_state(d).into(),
                progress,
                d.out_path.display().to_string(),
            ]);
        }
        print!("{}", table.render());
        Ok(())
    }
}

/// `agora sales`.
#[derive(Debug, clap::Args)]
pub struct Sales {
    /// Show at most this many (newest first; 0 = all).
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

impl Sales {
    /// Lists what this account sold.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let signed = peer.signed_in().await?;
        let consistency = read_your_writes(Some(&signed.store)).await?;
        let sales = purchase::list(
            &signed.client,
            PurchaseRole::Seller,
            self.limit,
            consistency,
        )
        .await?;
        if peer.json() {
            let items: Vec<Value> = sales.iter().map(sale_json).collect();
            println!("{}", Value::Array(items));
            return Ok(());
        }
        if sales.is_empty() {
            println!("no sales yet");
            return Ok(());
        }
        let mut table = Table::new(&[
            "PURCHASE", "LISTING", "TITLE", "BUYER", "PRICE", "NET", "STATE", "WHEN",
        ])
        .align_right(0)
        .align_right(1)
        .align_right(4)
        .align_right(5);
        for s in &sales {
            table.row(vec![
                s.id.to_string(),
                s.listing_id.to_string(),
                s.title.chars().take(32).collect(),
                s.buyer.clone(),
                format_amount(s.price),
                format_amount(s.net),
                sale_state(s).into(),
                when(if s.closed_ms > 0 {
                    s.closed_ms
                } else {
                    s.created_ms
                }),
            ]);
        }
        print!("{}", table.render());
        Ok(())
    }
}

fn buyer(signed: &SignedIn) -> Buyer<'_> {
    Buyer {
        client: &signed.client,
        store: &signed.store,
        user_id: signed.session.user_id,
        identity: &signed.session.identity,
    }
}

fn report(peer: &Peer, d: &Download) -> anyhow::Result<()> {
    let count = merkle::chunk_count(d.size, d.chunk_size);
    if peer.json() {
        println!("{}", download_json(d, count));
    } else {
        println!(
            "bought {:?} (purchase {}) for {}: {} written to {}",
            d.title,
            d.purchase_id,
            format_amount(d.price),
            human_size(d.size),
            d.out_path.display()
        );
    }
    Ok(())
}

fn download_json(d: &Download, received: u64) -> Value {
    json!({
        "purchase_id": d.purchase_id,
        "listing_id": d.listing_id,
        "title": d.title,
        "seller": d.seller,
        "state": download_state(d),
        "size": d.size,
        "price": d.price,
        "received_chunks": received,
        "chunk_count": merkle::chunk_count(d.size, d.chunk_size),
        "path": d.out_path.display().to_string(),
        "expires_at_ms": d.expires_at_ms,
        "started_ms": d.started_ms,
        "finished_ms": d.finished_ms,
    })
}

fn sale_json(s: &Purchase) -> Value {
    json!({
        "purchase_id": s.id,
        "listing_id": s.listing_id,
        "title": s.title,
        "buyer": s.buyer,
        "price": s.price,
        "commission": s.commission,
        "net": s.net,
        "state": if s.refunded { "refunded" } else { state_name(s.state()) },
        "proceeds": if s.refunded {
            "refunded"
        } else if s.proceeds_pending {
            "pending"
        } else if s.state() == PurchaseState::Completed {
            "available"
        } else {
            "none"
        },
        "created_ms": s.created_ms,
        "closed_ms": s.closed_ms,
        "refunded": s.refunded,
        "proceeds_pending": s.proceeds_pending,
        "dispute_until_ms": s.dispute_until_ms,
    })
}

/// A sale's state in the table: refunded after a dispute, pending (paid,
/// the proceeds still in the dispute window), or the purchase's state.
fn sale_state(s: &Purchase) -> &'static str {
    if s.refunded {
        "refunded"
    } else if s.proceeds_pending {
        "pending"
    } else {
        state_name(s.state())
    }
}

fn state_name(state: PurchaseState) -> &'static str {
    match state {
        PurchaseState::Unspecified => "unknown",
        PurchaseState::Open => "open",
        PurchaseState::Keyed => "keyed",
        PurchaseState::Completed => "completed",
        PurchaseState::Cancelled => "cancelled",
        PurchaseState::Expired => "expired",
    }
}

/// A download's state, "refunded" once disputed.
fn download_state(d: &Download) -> &'static str {
    if d.disputed {
        "refunded"
    } else {
        d.state.as_str()
    }
}

/// `agora disputes`.
#[derive(Debug, clap::Args)]
pub struct Disputes {}

impl Disputes {
    /// Lists the purchases this account disputed and got refunded.
    pub async fn run(self, peer: &Peer) -> anyhow::Result<()> {
        let signed = peer.signed_in().await?;
        let consistency = read_your_writes(Some(&signed.store)).await?;
        let bought = purchase::list(&signed.client, PurchaseRole::Buyer, 0, consistency).await?;
        let disputed: Vec<&Purchase> = bought.iter().filter(|p| p.refunded).collect();
        if peer.json() {
            let items: Vec<Value> = disputed
                .iter()
                .map(|p| {
                    json!({
                        "purchase_id": p.id,
                        "listing_id": p.listing_id,
                        "title": p.title,
                        "seller": p.seller,
                        "price": p.price,
                        "refunded": p.refunded,
                    })
                })
                .collect();
            println!("{}", Value::Array(items));
            return Ok(());
        }
        if disputed.is_empty() {
            println!("no disputes; `agora buy` files one by itself when a chunk proves bad");
            return Ok(());
        }
        let mut table = Table::new(&["PURCHASE", "LISTING", "TITLE", "SELLER", "REFUNDED"])
            .align_right(0)
            .align_right(1)
            .align_right(4);
        for p in disputed {
            table.row(vec![
                p.id.to_string(),
                p.listing_id.to_string(),
                p.title.chars().take(32).collect(),
                p.seller.clone(),
                format_amount(p.price),
            ]);
        }
        print!("{}", table.render());
        Ok(())
    }
}

/// Chunks of a download received so far (from its leaves file).
fn received_chunks(dir: &std::path::Path, d: &Download) -> u64 {
    match d.state {
        DownloadState::Fetching => std::fs::metadata(dir.join(format!("{}.leaves", d.purchase_id)))
            .map_or(0, |m| m.len() / 32),
        DownloadState::Paid | DownloadState::Done => merkle::chunk_count(d.size, d.chunk_size),
        DownloadState::Cancelled | DownloadState::Expired => 0,
    }
}

/// A Unix time in ms as seconds ago.
fn when(ms: u64) -> String {
    let ago = agora_peer::account::now_ms().saturating_sub(ms) / 1000;
    match ago {
        0..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    }
}

/// The CLI's progress: a bar on a terminal, plain lines (every 10%)
/// otherwise, nothing with `--json`.
struct Bar {
    bar: Option<ProgressBar>,
    plain: bool,
    phase: String,
    total: u64,
    done: u64,
    next_line: u64,
    started: Instant,
    /// Bytes done when the phase started (a resumed download).
    start_done: u64,
}

/// `bytes` over `secs`, as whole bytes per second.
fn per_second(bytes: u64, secs: f64) -> u64 {
    let rate = (bytes as f64 / secs).max(0.0);
    // A rate below 2^64 bytes/s: the cast cannot truncate or lose a sign.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rate = rate as u64;
    rate
}

impl Bar {
    fn new(json: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        Self {
            bar: None,
            plain: !json && !terminal,
            phase: String::new(),
            total: 0,
            done: 0,
            next_line: 0,
            started: Instant::now(),
            start_done: 0,
        }
        .with_terminal(!json && terminal)
    }

    fn with_terminal(mut self, terminal: bool) -> Self {
        if terminal {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
        self
    }
}

impl Progress for Bar {
    fn start(&mut self, phase: &str, total: u64, done: u64) {
        self.phase = phase.to_owned();
        self.total = total;
        self.done = done;
        self.start_done = done;
        self.started = Instant::now();
        self.next_line = done + total / 10;
        if let Some(bar) = &self.bar {
            bar.set_message(phase.to_owned());
            bar.set_length(total);
            bar.set_position(done);
            bar.reset_eta();
        }
        if self.plain && done > 0 {
            eprintln!(
                "{phase}: resuming at {} of {}",
                human_size(done),
                human_size(total)
            );
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        if self.plain && self.done >= self.next_line && self.total > 0 {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "{}: {} of {} ({}%), {}/s",
                self.phase,
                human_size(self.done),
                human_size(self.total),
                self.done * 100 / self.total,
                human_size(per_second(self.done - self.start_done, secs))
            );
            self.next_line = self.done + (self.total / 10).max(1);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
