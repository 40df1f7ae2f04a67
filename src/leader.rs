//! Leader election of the `gitdev-operator` binary (a module of `src/main.rs`, not of the
//! library): the coordination.k8s.io/v1 Lease, held with kube-lease-manager, and on top of it
//! the renew deadline that decides whether this replica may write right now.
//!
//! kube-lease-manager reports a change of holder only. While its renewals fail (API server
//! unreachable, process frozen and woken), it logs the error, backs off and keeps reporting this
//! replica as the leader until a read of the Lease shows another holder, which can come after the
//! Lease has expired for the others. So this module also follows the renewals themselves: while
//! leading it reads the Lease back, and this replica leads only while the manager says so **and**
//! its last renewal (the Lease's `renewTime`, which it wrote) is younger than the renew deadline,
//! which is shorter than the Lease duration after which another replica takes over. The first
//! time that stops being true, the replica stops for good: its fence closes (no more API writes)
//! and it exits, to be restarted as a standby.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease as LeaseObject;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
// Tokio's clock: the same as the system's monotonic clock, but one the tests can pause.
use tokio::time::Instant;

/// The longest Lease accepted: beyond it a crashed leader would block its standbys for longer
/// than anyone would wait, and kube-lease-manager adds it to wall-clock times unchecked.
const MAX_LEASE_SECONDS: u64 = 3600;

/// How long the Lease lasts and how soon its holder must have renewed it to keep acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    duration_seconds: u64,
    deadline_seconds: u64,
}

impl Timing {
    /// Checks `--lease-duration-seconds` and `--lease-renew-deadline-seconds` (two thirds of the
    /// duration when not given).
    pub fn new(
        duration_seconds: u64,
        renew_deadline_seconds: Option<u64>,
    ) -> Result<Timing, String> {
        if !(3..=MAX_LEASE_SECONDS).contains(&duration_seconds) {
            return Err(format!(
                "--lease-duration-seconds {duration_seconds}: use 3 to {MAX_LEASE_SECONDS} seconds (a renew deadline of at least 2 seconds must fit below it); 15 is the default"
            ));
        }
        let suggested = duration_seconds - duration_seconds / 3;
        let deadline_seconds = renew_deadline_seconds.unwrap_or(suggested);
        if deadline_seconds < 2 {
            return Err(format!(
                "--lease-renew-deadline-seconds {deadline_seconds}: use at least 2 seconds (the Lease is renewed every half deadline, in whole seconds); e.g. {suggested}"
            ));
        }
        if deadline_seconds >= duration_seconds {
            return Err(format!(
                "--lease-renew-deadline-seconds {deadline_seconds} must be less than --lease-duration-seconds {duration_seconds}, so that a replica that cannot renew stops acting before its Lease can expire for the others; e.g. {suggested}"
            ));
        }
        Ok(Timing {
            duration_seconds,
            deadline_seconds,
        })
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_seconds)
    }

    /// Renewals come every half deadline, so that one failed renewal can be retried before
    /// the deadline passes.
    fn renew_every_seconds(&self) -> u64 {
        (self.deadline_seconds / 2).max(1)
    }

    /// kube-lease-manager renews when `grace` seconds of the Lease are left.
    fn grace_seconds(&self) -> u64 {
        self.duration_seconds - self.renew_every_seconds()
    }

    /// How often the leader reads its Lease back: a renewal must be seen well before the
    /// deadline of the one before it.
    fn read_every(&self) -> Duration {
        (self.deadline() / 5).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }
}

/// Whether a replica whose last renewal was at `last_renewal` may still write at `now`.
pub fn may_write(last_renewal: Instant, deadline: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_renewal) < deadline
}

/// When this replica renewed, on the monotonic clock (which also runs while the process is
/// stopped): `renew_time` is its own wall-clock time of the renewal, and the Lease was read with
/// a request sent at `read_at` (`read_at_wall` on the wall clock). A `renew_time` after
/// `read_at_wall` (the wall clock stepped back) counts as a renewal at the read. `None` when the
/// renewal is older than this process's clock can express: too old to write anyway.
fn renewed_at(read_at: Instant, read_at_wall: Timestamp, renew_time: Timestamp) -> Option<Instant> {
    let age = Duration::try_from(read_at_wall.duration_since(renew_time)).unwrap_or_default();
    read_at.checked_sub(age)
}

/// Where the Lease is and who this replica is.
pub struct Lease {
    pub name: String,
    pub namespace: String,
    pub timing: Timing,
}

/// The Lease while this replica holds it.
pub struct Held {
    /// `true` while this replica leads (see the module doc); once `false`, never `true` again.
    leading: watch::Receiver<bool>,
    /// Until when this replica may write: see `publish_until`.
    until: watch::Receiver<Option<Instant>>,
    guard: JoinHandle<()>,
    manager:
        JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

impl Lease {
    /// Waits until this replica holds the Lease (`Some`) or is told to stop first (`None`).
    pub async fn acquire(
        self,
        client: Client,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Option<Held>, String> {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&identity)
            .with_duration(self.timing.duration_seconds)
            .with_grace(self.timing.grace_seconds())
            .build()
            .await
            .map_err(|e| {
                format!(
                    "leader election on Lease {}/{}: {e}",
                    self.namespace, self.name
                )
            })?;
        let (holder, manager) = manager.watch().await;
        let (tx, mut leading) = watch::channel(false);
        let (until_tx, until) = watch::channel(None);
        let follow = Follow {
            api: Api::namespaced(client, &self.namespace),
            name: self.name.clone(),
            identity: identity.clone(),
            timing: self.timing,
        };
        let guard = tokio::spawn(follow.run(holder, tx, until_tx));
        tracing::info!(lease = %self.name, namespace = %self.namespace, %identity, renew_deadline = ?self.timing.deadline(), "waiting to hold the leader Lease");
        let outcome = tokio::select! {
            held = leading.wait_for(|leading| *leading) => held.map(|_| true),
            _ = shutdown => Ok(false),
        };
        let held = Held {
            leading,
            until,
            guard,
            manager,
        };
        match outcome {
            Ok(true) => {
                tracing::info!(%identity, "holding the leader Lease; acting");
                Ok(Some(held))
            }
            Ok(false) => {
                held.release().await;
                Ok(None)
            }
            Err(_) => {
                held.release().await;
                Err("leader election stopped before the Lease was held".into())
            }
        }
    }
}

impl Held {
    /// Until when this replica may write: the gate of the API fence.
    pub fn valid_until(&self) -> watch::Receiver<Option<Instant>> {
        self.until.clone()
    }

    /// Resolves when this replica stops leading.
    pub fn lost(&self) -> impl Future<Output = ()> + use<> {
        let mut leading = self.leading.clone();
        async move {
            let _ = leading.wait_for(|leading| !*leading).await;
        }
    }

    pub fn is_lost(&self) -> bool {
        !*self.leading.borrow()
    }

    /// Gives the Lease up at once, so that a standby takes over without waiting for it to expire
    /// (kube-lease-manager releases it once nobody follows its reports any more).
    pub async fn release(self) {
        self.guard.abort();
        let _ = self.guard.await;
        match tokio::time::timeout(Duration::from_secs(5), self.manager).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            other => tracing::warn!(?other, "releasing the leader Lease did not complete"),
        }
    }
}

/// Follows this replica's renewals of the Lease and turns them, with the manager's reports,
/// into "leading now".
struct Follow {
    api: Api<LeaseObject>,
    name: String,
    identity: String,
    timing: Timing,
}

impl Follow {
    async fn run(
        self,
        holder: watch::Receiver<bool>,
        leading: watch::Sender<bool>,
        until: watch::Sender<Option<Instant>>,
    ) {
        let (renewed, renewals) = watch::channel(None);
        let deadline = self.timing.deadline();
        // The reads run beside the guard, so that a read hanging on an unreachable API server
        // never keeps the guard from closing the fence on time.
        tokio::select! {
            _ = self.read_renewals(holder.clone(), renewed) => {}
            _ = guard(holder.clone(), renewals.clone(), deadline, leading) => {}
            _ = publish_until(holder, renewals, deadline, &until) => {}
        }
        until.send_replace(None);
    }

    /// While the manager says this replica holds the Lease: the latest renewal seen in it.
    async fn read_renewals(
        &self,
        mut holder: watch::Receiver<bool>,
        renewed: watch::Sender<Option<Instant>>,
    ) {
        let mut tick = tokio::time::interval(self.timing.read_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Also read at once when the Lease is taken, so that acting starts without delay.
            tokio::select! {
                _ = tick.tick() => {}
                changed = holder.changed() => if changed.is_err() {
                    return;
                }
            }
            if !*holder.borrow_and_update() {
                continue;
            }
            if let Some(at) = self.read_renewal().await {
                renewed.send_if_modified(|last| {
                    let newer = last.is_none_or(|last| at > last);
                    if newer {
                        *last = Some(at);
                    }
                    newer
                });
            }
        }
    }

    /// This replica's last renewal as the Lease shows it; `None` if another replica holds it
    /// or it cannot be read within the deadline.
    async fn read_renewal(&self) -> Option<Instant> {
        let read_at = Instant::now();
        let read_at_wall = Timestamp::now();
        let lease = match tokio::time::timeout(self.timing.deadline(), self.api.get(&self.name))
            .await
        {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = %self.name, "cannot read the leader Lease back");
                return None;
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "reading the leader Lease back timed out");
                return None;
            }
        };
        let spec = lease.spec?;
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return None;
        }
        renewed_at(read_at, read_at_wall, spec.renew_time?.0)
    }
}

/// Keeps `until` at the instant this replica may write until: its last renewal plus the
/// deadline while the manager says it holds the Lease, else `None`. The fence compares it with
/// the clock at each write, so that no task has to run in time for the fence to close.
async fn publish_until(
    mut holder: watch::Receiver<bool>,
    mut renewals: watch::Receiver<Option<Instant>>,
    deadline: Duration,
    until: &watch::Sender<Option<Instant>>,
) {
    loop {
        let holds = *holder.borrow_and_update();
        let last_renewal = *renewals.borrow_and_update();
        until.send_replace(
            last_renewal
                .filter(|_| holds)
                .and_then(|at| at.checked_add(deadline)),
        );
        tokio::select! {
            changed = holder.changed() => if changed.is_err() {
                return;
            },
            changed = renewals.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// Keeps `leading` at "the manager says this replica holds the Lease, and its last renewal is
/// younger than the deadline"; returns (with `leading` false) the first time that stops being
/// true after it was.
async fn guard(
    mut holder: watch::Receiver<bool>,
    mut renewals: watch::Receiver<Option<Instant>>,
    deadline: Duration,
    leading: watch::Sender<bool>,
) {
    let mut led = false;
    loop {
        let holds = *holder.borrow_and_update();
        let last_renewal = *renewals.borrow_and_update();
        let now = Instant::now();
        let fresh = last_renewal.is_some_and(|at| may_write(at, deadline, now));
        let leads = holds && fresh;
        leading.send_if_modified(|value| std::mem::replace(value, leads) != leads);
        if led && !leads {
            if holds {
                let since = last_renewal.map(|at| now.saturating_duration_since(at));
                tracing::error!(
                    ?deadline,
                    ?since,
                    "the leader Lease was not renewed within the renew deadline; stopping before it can expire for another replica"
                );
            } else {
                tracing::error!("lost the leader Lease to another replica; stopping");
            }
            return;
        }
        led = leads;
        // Wake at the deadline itself, so that the fence closes then and not at the next report.
        let expires = last_renewal
            .filter(|_| leads)
            .and_then(|at| at.checked_add(deadline));
        let at_deadline = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = holder.changed() => if changed.is_err() {
                leading.send_replace(false);
                if led {
                    tracing::error!("leader election stopped; stopping");
                }
                return;
            },
            _ = renewals.changed() => {}
            _ = at_deadline => {}
            _ = leading.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_may_write_only_until_its_last_renewal_is_as_old_as_the_deadline() {
        let renewed = Instant::now();
        let deadline = Duration::from_secs(10);
        let at = |ms: u64| renewed + Duration::from_millis(ms);
        for (now, expected) in [
            (renewed, true),
            (at(9_999), true),
            (at(10_000), false),
            (at(60_000), false),
        ] {
            assert_eq!(may_write(renewed, deadline, now), expected, "{now:?}");
        }
        // A renewal seen "after" now (clock readings across threads) is as fresh as can be.
        assert!(may_write(at(500), deadline, renewed));
    }

    #[test]
    fn the_renewal_is_dated_from_the_renew_time_the_replica_wrote_not_from_when_it_was_read() {
        let read_at = Instant::now() + Duration::from_secs(100);
        let wall = Timestamp::from_second(1_800_000_000).unwrap();
        let three_seconds_before = Timestamp::from_second(1_799_999_997).unwrap();
        assert_eq!(
            renewed_at(read_at, wall, three_seconds_before),
            Some(read_at - Duration::from_secs(3))
        );
        // The wall clock stepped back since the renewal: it counts as renewed at the read.
        let later = Timestamp::from_second(1_800_000_005).unwrap();
        assert_eq!(renewed_at(read_at, wall, later), Some(read_at));
    }

    #[test]
    fn lease_timing_renews_twice_per_deadline_and_reads_the_lease_back_in_between() {
        for (duration, deadline, renew_every, grace, read_every_ms) in [
            (15, None, 5, 10, 2_000),
            (6, None, 2, 4, 800),
            (3, None, 1, 2, 400),
            (30, Some(10), 5, 25, 2_000),
        ] {
            let t = Timing::new(duration, deadline).unwrap();
            assert_eq!(t.renew_every_seconds(), renew_every, "{t:?}");
            assert_eq!(t.grace_seconds(), grace, "{t:?}");
            assert_eq!(
                t.read_every(),
                Duration::from_millis(read_every_ms),
                "{t:?}"
            );
            // A renewal, then its read, land well before the deadline of the renewal before.
            let seen = Duration::from_secs(t.renew_every_seconds()) + t.read_every();
            assert!(seen < t.deadline(), "{t:?}");
            assert!(t.deadline() < Duration::from_secs(duration), "{t:?}");
        }
    }

    #[test]
    fn a_renew_deadline_that_does_not_fit_below_the_lease_is_refused_naming_both_flags() {
        for (duration, deadline, message) in [
            (
                15,
                Some(15),
                "--lease-renew-deadline-seconds 15 must be less than --lease-duration-seconds 15",
            ),
            (
                15,
                Some(20),
                "must be less than --lease-duration-seconds 15, so that a replica that cannot renew stops acting before its Lease can expire for the others; e.g. 10",
            ),
            (
                15,
                Some(1),
                "--lease-renew-deadline-seconds 1: use at least 2 seconds",
            ),
            (
                15,
                Some(0),
                "--lease-renew-deadline-seconds 0: use at least 2 seconds",
            ),
            (2, None, "--lease-duration-seconds 2: use 3 to 3600 seconds"),
            (0, None, "--lease-duration-seconds 0: use 3 to 3600 seconds"),
            (u64::MAX, None, "use 3 to 3600 seconds"),
        ] {
            let err = Timing::new(duration, deadline).unwrap_err();
            assert!(err.contains(message), "{duration} {deadline:?}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_closes_the_fence_at_the_renew_deadline_while_the_manager_still_reports_leader()
     {
        let (_holder_tx, holder) = watch::channel(true);
        let (renewed, renewals) = watch::channel(Some(Instant::now()));
        let (tx, mut leading) = watch::channel(false);
        let deadline = Duration::from_secs(4);
        let guard = tokio::spawn(guard(holder, renewals, deadline, tx));
        leading.wait_for(|l| *l).await.unwrap();
        // Renewals keep it leading past the first deadline.
        tokio::time::sleep(Duration::from_secs(3)).await;
        renewed.send_replace(Some(Instant::now()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(*leading.borrow());
        // Then they stop: the fence closes at the deadline, and for good.
        let stopped = tokio::time::Instant::now();
        leading.wait_for(|l| !*l).await.unwrap();
        assert_eq!(stopped.elapsed(), Duration::from_secs(1));
        guard.await.unwrap();
        renewed.send_replace(Some(Instant::now()));
        assert!(!*leading.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_is_given_the_deadline_of_the_last_renewal_and_none_without_the_lease() {
        let (holder_tx, holder) = watch::channel(true);
        let t0 = Instant::now();
        let (renewed, renewals) = watch::channel(Some(t0));
        let (until_tx, mut until) = watch::channel(None);
        let deadline = Duration::from_secs(4);
        let task = tokio::spawn(async move {
            publish_until(holder, renewals, deadline, &until_tx).await;
        });
        until.wait_for(|u| *u == Some(t0 + deadline)).await.unwrap();
        let t1 = t0 + Duration::from_secs(2);
        renewed.send_replace(Some(t1));
        until.wait_for(|u| *u == Some(t1 + deadline)).await.unwrap();
        holder_tx.send_replace(false);
        until.wait_for(|u| u.is_none()).await.unwrap();
        drop(holder_tx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_guard_closes_the_fence_when_the_manager_reports_another_holder() {
        let (holder_tx, holder) = watch::channel(true);
        let (_renewed, renewals) = watch::channel(Some(Instant::now()));
        let (tx, mut leading) = watch::channel(false);
        let guard = tokio::spawn(guard(holder, renewals, Duration::from_secs(10), tx));
        leading.wait_for(|l| *l).await.unwrap();
        holder_tx.send_replace(false);
        leading.wait_for(|l| !*l).await.unwrap();
        guard.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_does_not_lead_until_a_fresh_renewal_of_its_own_is_seen() {
        let (holder_tx, holder) = watch::channel(false);
        let (renewed, renewals) = watch::channel(None);
        let (tx, mut leading) = watch::channel(false);
        let _guard = tokio::spawn(guard(holder, renewals, Duration::from_secs(4), tx));
        holder_tx.send_replace(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*leading.borrow(), "the manager's word alone is not enough");
        // A renewal older than the deadline (a Lease taken, then the process frozen) neither.
        renewed.send_replace(Instant::now().checked_sub(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!*leading.borrow());
        renewed.send_replace(Some(Instant::now()));
        leading.wait_for(|l| *l).await.unwrap();
    }
}
