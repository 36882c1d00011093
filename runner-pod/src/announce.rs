//! Telling the gateway where this pod listens (`POST wire::ANNOUNCE_PATH`): as soon as it
//! listens, again every [`INTERVAL`] (a restarted gateway learns the pod back), quickly again
//! while the gateway cannot be reached, and with `draining: true` when the pod stops.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::{Gateway, TokenError, refusal_message, with_causes};
use crate::identity::AnnouncedToken;
use crate::wire::{self, Announce};

/// Between announcements that got through.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// After a failed one: the first retry, doubled up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the gateway at {url} is unreachable: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the gateway refused the announcement ({status}): {message}")]
    Refused { status: u16, message: String },
}

/// When the next announcement goes, and whether this one is worth a log line: failures are
/// logged once per streak, and the recovery once.
#[derive(Debug, Default)]
struct Retry {
    failures: u32,
}

#[derive(Debug, PartialEq)]
enum Note {
    Quiet,
    FirstFailure,
    Recovered { failures: u32 },
}

impl Retry {
    fn after(&mut self, succeeded: bool) -> (Duration, Note) {
        if succeeded {
            let note = match std::mem::take(&mut self.failures) {
                0 => Note::Quiet,
                failures => Note::Recovered { failures },
            };
            return (INTERVAL, note);
        }
        self.failures += 1;
        let note = if self.failures == 1 {
            Note::FirstFailure
        } else {
            Note::Quiet
        };
        (backoff(self.failures), note)
    }
}

/// The wait after the `failures`-th failure in a row: 100 ms, 200 ms, … up to 2 s.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

pub struct Announcer {
    gateway: Gateway,
    ip: IpAddr,
    port: u16,
    announced: Arc<AnnouncedToken>,
}

impl Announcer {
    /// Announces `ip:port`; records each token it sends in `announced` (the identity route
    /// proves with it).
    pub fn new(gateway: Gateway, ip: IpAddr, port: u16, announced: Arc<AnnouncedToken>) -> Self {
        Announcer {
            gateway,
            ip,
            port,
            announced,
        }
    }

    /// One announcement. The token is recorded before it is sent: the gateway may challenge
    /// the pod before it answers.
    pub async fn announce(&self, draining: bool) -> Result<(), AnnounceError> {
        let token = self.gateway.token().read().await?;
        self.announced.set(token.clone());
        let body = Announce {
            ip: self.ip,
            port: self.port,
            draining,
        };
        let resp = self
            .gateway
            .post(wire::ANNOUNCE_PATH, &token, &body)
            .send()
            .await
            .map_err(|e| AnnounceError::Unreachable {
                url: self.gateway.url(wire::ANNOUNCE_PATH),
                cause: with_causes(&e),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(AnnounceError::Refused {
            status: status.as_u16(),
            message: refusal_message(&body),
        })
    }

    /// Announces now and every [`INTERVAL`] until `stop` resolves, then announces that the pod
    /// is draining, retrying until that gets through (or the process ends).
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut retry = Retry::default();
        loop {
            let result = tokio::select! {
                result = self.announce(false) => result,
                () = &mut stop => break,
            };
            let delay = self.note(&mut retry, result, "announcing this pod");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut stop => break,
            }
        }
        let mut retry = Retry::default();
        loop {
            let result = self.announce(true).await;
            let succeeded = result.is_ok();
            let delay = self.note(&mut retry, result, "announcing that this pod drains");
            if succeeded {
                tracing::info!("told the gateway that this pod drains");
                return;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Logs what is worth it of an announcement's `result`; the wait before the next.
    fn note(&self, retry: &mut Retry, result: Result<(), AnnounceError>, what: &str) -> Duration {
        let (delay, note) = retry.after(result.is_ok());
        match (note, result) {
            (Note::FirstFailure, Err(e)) => {
                tracing::warn!("{what} failed (retrying until it works, quietly): {e}")
            }
            (Note::Recovered { failures }, _) => {
                tracing::info!("{what} worked again after {failures} failed attempts")
            }
            _ => {}
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_starts_at_100_ms_and_doubles_up_to_2_s() {
        let delays: Vec<_> = (1..=7).map(backoff).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000),
                ms(2000)
            ]
        );
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn a_success_waits_the_interval() {
        assert_eq!(Retry::default().after(true), (INTERVAL, Note::Quiet));
    }

    #[test]
    fn failures_are_noted_once_per_streak_and_the_recovery_once() {
        let mut retry = Retry::default();
        assert_eq!(retry.after(false).1, Note::FirstFailure);
        assert_eq!(retry.after(false).1, Note::Quiet);
        assert_eq!(
            retry.after(false),
            (Duration::from_millis(400), Note::Quiet)
        );
        assert_eq!(
            retry.after(true),
            (INTERVAL, Note::Recovered { failures: 3 })
        );
        assert_eq!(retry.after(true).1, Note::Quiet);
        assert_eq!(
            retry.after(false),
            (RETRY_FIRST, Note::FirstFailure),
            "a new streak"
        );
    }
}
