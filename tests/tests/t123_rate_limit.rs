//! Per-user request rate limits (`agora-server node --user-rate-limit N`)
//! on a one-node cluster: a user whose sessions together call faster than
//! the rate gets `RESOURCE_EXHAUSTED` with a sentence saying to slow down
//! (a second session does not double the rate), while another user's
//! session and calls without a session are untouched; a moment later the
//! user is served again.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::{Duration, Instant};

use agora_peer::account;
use agora_proto::market::account_service_client::AccountServiceClient;
use agora_proto::market::WhoAmIRequest;
use agora_tests::{peer_client, wait_for, MarketUser, Probe, TestCluster, TestOptions};
use tonic::Code;

/// Calls per second per user in this test.
const RATE: u32 = 5;
/// Calls sent at once: well beyond the burst (two seconds' worth).
const FLOOD: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_beyond_their_rate_is_told_to_slow_down_and_others_are_not() -> anyhow::Result<()> {
    let cluster = TestCluster::start(
        1,
        TestOptions {
            extra_args: vec![
                "--load-test-ksf".into(),
                "--user-rate-limit".into(),
                RATE.to_string(),
            ],
            ..TestOptions::default()
        },
    )
    .await?;
    let everyone = peer_client(&cluster)?;
    let dir = cluster.dir().to_path_buf();
    let alice = MarketUser::register(&everyone, &dir, "alice", "rate limit password").await?;
    let bob = MarketUser::register(&everyone, &dir, "bob", "rate limit password").await?;
    // A second session of alice's, on another client.
    let second = account::login(&everyone, "alice", b"rate limit password").await?;
    let alice_again = everyone.clone().with_token(&second.token)?;
    let call = |client: &agora_peer::ClusterClient| {
        let client = client.clone();
        async move {
            let channel = client.channel(1)?;
            let request = client.authorize(WhoAmIRequest {});
            anyhow::Ok(AccountServiceClient::new(channel).who_am_i(request).await)
        }
    };

    let who_am_i = |user: &MarketUser| call(&user.client);

    // Alice floods from both sessions: one burst passes between them, the
    // rest is refused plainly.
    let started = Instant::now();
    let answers = futures::future::join_all((0..FLOOD).map(|n| {
        if n % 2 == 0 {
            call(&alice.client)
        } else {
            call(&alice_again)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut refused = 0;
    for answer in answers {
        match answer? {
            Ok(_) => {}
            Err(status) if status.code() == Code::ResourceExhausted => {
                anyhow::ensure!(
                    status.message().contains("slow down"),
                    "the refusal does not say what to do: {:?}",
                    status.message()
                );
                refused += 1;
            }
            Err(status) => anyhow::bail!("unexpected answer: {status}"),
        }
    }
    let burst = usize::try_from(RATE * 2)?;
    // What one bucket can admit while the flood lasted (its refill, plus
    // one for rounding); two buckets (one per session) would admit twice
    // the burst.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let refill = (elapsed.as_secs_f64() * f64::from(RATE)).ceil() as usize + 1;
    let admitted = FLOOD - refused;
    anyhow::ensure!(
        admitted <= burst + refill,
        "{admitted} of {FLOOD} calls from alice's two sessions passed in {elapsed:?} at \
         {RATE}/s per user: more than one bucket's {burst} + {refill}"
    );
    anyhow::ensure!(refused < FLOOD, "every call was refused, even the burst");

    // Bob, and calls without a session (a registration), are untouched.
    who_am_i(&bob).await??;
    MarketUser::register(&everyone, &dir, "carol", "rate limit password").await?;
    // A moment later, alice is served again.
    wait_for("alice to be served again", Duration::from_secs(10), || {
        let call = who_am_i(&alice);
        async move {
            Ok(match call.await? {
                Ok(_) => Probe::Ready(()),
                Err(status) => Probe::NotYet(status.to_string()),
            })
        }
    })
    .await?;
    Ok(())
}
