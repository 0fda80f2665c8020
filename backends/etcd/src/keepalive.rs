//! The task that keeps a session's lease alive and reports what the holder must assume.
//!
//! It renews the lease every third of its TTL. A renewal not answered within that third makes
//! the session `Suspended`: at that moment at least a third of the TTL remains before the server
//! could expire the lease (it counts from when it received the last renewal, which was after we
//! sent it), so the holder steps down before anyone else can take over. Contact again with the
//! lease alive makes it `Connected`; the server saying the lease is gone makes it `Expired`.

use etcd_client::{Client, Error, LeaseKeepAliveStream, LeaseKeeper};
use rota_core::coordination::SessionState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

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

/// How one renewal went.
enum Renewal {
    Alive,
    Gone,
    NoAnswer,
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
    let mut lease_client = client.lease_client();
    loop {
        let opened = tokio::select! {
            opened = tokio::time::timeout(tick, lease_client.keep_alive(lease)) => opened,
            _ = &mut ended => return,
        };
        match opened {
            Ok(Ok((keeper, stream))) => {
                set_state(state, SessionState::Connected);
                tokio::select! {
                    gone = renew(keeper, stream, tick) => if gone {
                        warn!(lease = format!("{lease:x}"), "etcd lease expired: session over");
                        set_state(state, SessionState::Expired);
                        return;
                    },
                    _ = &mut ended => return,
                }
                debug!(
                    lease = format!("{lease:x}"),
                    "etcd lease renewal unanswered"
                );
                set_state(state, SessionState::Suspended);
            }
            Ok(Err(e)) if lease_gone(&e) => {
                warn!(
                    lease = format!("{lease:x}"),
                    "etcd lease expired: session over"
                );
                set_state(state, SessionState::Expired);
                return;
            }
            Ok(Err(e)) => {
                debug!(lease = format!("{lease:x}"), error = %e, "etcd unreachable");
                set_state(state, SessionState::Suspended);
                tokio::select! {
                    _ = tokio::time::sleep(tick / 2) => {}
                    _ = &mut ended => return,
                }
            }
            Err(_) => set_state(state, SessionState::Suspended),
        }
    }
}

/// Renews every `tick` while the server answers; true if it says the lease is gone, false when
/// it stops answering.
async fn renew(mut keeper: LeaseKeeper, mut stream: LeaseKeepAliveStream, tick: Duration) -> bool {
    loop {
        tokio::time::sleep(tick).await;
        let once = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let renewal = match tokio::time::timeout(tick, once).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => Renewal::Alive,
            Ok(Ok(Some(_))) => Renewal::Gone,
            Ok(Err(e)) if lease_gone(&e) => Renewal::Gone,
            _ => Renewal::NoAnswer,
        };
        match renewal {
            Renewal::Alive => {}
            Renewal::Gone => return true,
            Renewal::NoAnswer => return false,
        }
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
