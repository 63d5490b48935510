//! Per-session request rate limits (`agora-server node
//! --session-rate-limit N`) on a one-node cluster: a session that calls
//! faster than its rate gets `RESOURCE_EXHAUSTED` with a sentence saying to
//! slow down, while another user's session and calls without a session are
//! untouched; a moment later the session is served again.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::time::Duration;

use agora_proto::market::account_service_client::AccountServiceClient;
use agora_proto::market::WhoAmIRequest;
use agora_tests::{peer_client, wait_for, MarketUser, Probe, TestCluster, TestOptions};
use tonic::Code;

/// Calls per second per session in this test.
const RATE: u32 = 5;
/// Calls sent at once: well beyond the burst (two seconds' worth).
const FLOOD: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_beyond_its_rate_is_told_to_slow_down_and_others_are_not() -> anyhow::Result<()> {
    let cluster = TestCluster::start(
        1,
        TestOptions {
            extra_args: vec![
                "--load-test-ksf".into(),
                "--session-rate-limit".into(),
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
    let who_am_i = |user: &MarketUser| {
        let client = user.client.clone();
        async move {
            let channel = client.channel(1)?;
            let request = client.authorize(WhoAmIRequest {});
            anyhow::Ok(AccountServiceClient::new(channel).who_am_i(request).await)
        }
    };

    // Alice floods: the burst passes, the rest is refused plainly.
    let answers = futures::future::join_all((0..FLOOD).map(|_| who_am_i(&alice))).await;
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
    anyhow::ensure!(
        refused >= FLOOD - burst - usize::try_from(RATE)?,
        "only {refused} of {FLOOD} calls were refused at {RATE}/s"
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
