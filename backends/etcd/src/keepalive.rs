//! The task that keeps a session's lease alive and reports what the holder must assume.
//!
//! It renews the lease every third of its TTL. etcd expires a lease a TTL after it received the
//! last renewal, which is after we sent it; so as long as a renewal sent at `t` was answered,
//! the lease lives until at least `t + TTL`. The session turns `Suspended` once no renewal sent
//! in the last two thirds of the TTL has been answered: a full third of the TTL still remains
//! then before etcd could expire the lease, for the holder to step down before anyone else can
//! take over. A failed renewal is retried at once (a connection to a member that stopped fails
//! quickly, and another member answers), so a rolling restart of etcd does not suspend anyone.
//! Contact again with the lease alive makes the session `Connected`; etcd saying the lease is
//! gone makes it `Expired`.

use etcd_client::{Client, Error, LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use rota_cluster::coordination::SessionState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

/// Pause between failed renewals.
const RETRY: Duration = Duration::from_millis(100);

/// Sets the state unless it is already final (final states never change).
pub(crate) fn set_state(state: &watch::Sender<SessionState>, next: SessionState) {
    state.send_if_modified(|s| {
        if s.is_final() || *s == next {
            return false;
        }
        *s = next;
        true
    });
}

/// Keeps `lease` alive until the session's state is final, or until every handle of the
/// session is dropped (`dropped` closes): then, like a crashed process, it stops renewing, and
/// reports the session expired once the lease has run out (for watches still held).
pub(crate) async fn run(
    client: Client,
    lease: i64,
    ttl: Duration,
    state: Arc<watch::Sender<SessionState>>,
    dropped: oneshot::Receiver<()>,
) {
    tokio::select! {
        _ = keep(client, lease, ttl, &state) => {}
        _ = dropped => {
            set_state(&state, SessionState::Suspended);
            let mut watched = state.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(ttl) => set_state(&state, SessionState::Expired),
                _ = watched.wait_for(|s| s.is_final()) => {}
            }
        }
    }
}

/// Renews the lease and reports the session's state until it is final.
async fn keep(client: Client, lease: i64, ttl: Duration, state: &watch::Sender<SessionState>) {
    let tick = (ttl / 3).max(Duration::from_millis(200));
    let mut watched = state.subscribe();
    let ended = async move {
        let _ = watched.wait_for(|s| s.is_final()).await;
    };
    tokio::pin!(ended);
    let mut leases = client.lease_client();
    let mut stream = None;
    // The lease was granted (or renewed) just before this task started.
    let mut last_answered = Instant::now();
    loop {
        let sent = Instant::now();
        let attempt = tokio::time::timeout(tick, renew(&mut leases, lease, &mut stream));
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = &mut ended => return,
        };
        let pause = match outcome {
            Ok(Ok(true)) => {
                last_answered = sent;
                set_state(state, SessionState::Connected);
                (sent + tick).saturating_duration_since(Instant::now())
            }
            Ok(Ok(false)) => {
                warn!(
                    lease = format!("{lease:x}"),
                    "etcd lease expired: session over"
                );
                set_state(state, SessionState::Expired);
                return;
            }
            failed => {
                // A late answer must not be taken for the next renewal's: start a new stream.
                stream = None;
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".to_owned(),
                };
                debug!(
                    lease = format!("{lease:x}"),
                    error, "etcd lease renewal failed"
                );
                if Instant::now() >= last_answered + 2 * tick {
                    set_state(state, SessionState::Suspended);
                }
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut ended => return,
        }
    }
}

/// Sends one renewal, opening a keep-alive stream first if there is none, and waits for its
/// answer: true if the lease lives, false if etcd says it is gone.
async fn renew(
    leases: &mut LeaseClient,
    lease: i64,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<bool, Error> {
    let Some((keeper, answers)) = stream else {
        // Opening sends the first renewal and waits for its answer.
        return match leases.keep_alive(lease).await {
            Ok(opened) => {
                *stream = Some(opened);
                Ok(true)
            }
            Err(e) if lease_gone(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    keeper.keep_alive().await?;
    match answers.message().await? {
        Some(answer) => Ok(answer.ttl() > 0),
        None => Err(Error::LeaseKeepAliveError("keep-alive stream ended".into())),
    }
}

/// Whether the server says the lease does not exist (any more).
pub(crate) fn lease_gone(e: &Error) -> bool {
    match e {
        Error::LeaseKeepAliveError(message) => message.contains("not found"),
        Error::GRpcStatus(status) => {
            status.code() == tonic::Code::NotFound && status.message().contains("lease not found")
        }
        _ => false,
    }
}
