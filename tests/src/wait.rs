//! Waiting for a condition with a deadline, never for a fixed time.
//!
//! A busy two-core CI machine makes every fixed sleep either too short
//! (flaky) or too long (slow). Polling a condition is neither; the deadline
//! only bounds how long a broken cluster takes to fail the test, so it is
//! generous, and the error says what was last seen.

use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two probes of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One look at a condition.
#[derive(Debug)]
pub enum Probe<T> {
    /// The condition holds; here is what the caller waited for.
    Ready(T),
    /// Not yet, and why (reported if the deadline passes).
    NotYet(String),
}

/// Probes until `probe` is [`Probe::Ready`] or `timeout` passes.
///
/// # Errors
/// When the deadline passes (naming `what` and the last reason), or when
/// `probe` fails (which stops the wait at once).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Probe<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await? {
            Probe::Ready(value) => return Ok(value),
            Probe::NotYet(reason) => {
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "timed out after {:.0}s waiting for {what}; last seen: {reason}",
                        timeout.as_secs_f64()
                    );
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_when_ready_and_explains_a_timeout() -> anyhow::Result<()> {
        let mut n = 0;
        let value = wait_for("three probes", Duration::from_secs(5), || {
            n += 1;
            let seen = n;
            async move {
                Ok(if seen >= 3 {
                    Probe::Ready(seen)
                } else {
                    Probe::NotYet(format!("{seen} probes"))
                })
            }
        })
        .await?;
        assert_eq!(value, 3);

        let err = wait_for::<(), _, _>("nothing", Duration::from_millis(250), || async {
            Ok(Probe::NotYet("still nothing".to_owned()))
        })
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("waiting for nothing"), "{err}");
        assert!(err.contains("still nothing"), "{err}");
        Ok(())
    }
}
