//! The streaming replica (`DATABASE_READ_URL`): which reads it may answer, and how far behind
//! the primary it is.
//!
//! Lag is measured in WAL positions, then turned into time by this instance's clock: every
//! check reads the primary's position and then the replica's replayed position, and keeps
//! the primary's positions of the last minutes with the time each was read. The replica is
//! as far behind as the oldest of those positions it has not replayed is old; when it has
//! replayed the newest, it is not behind at all. So an idle primary reads as no lag (replay
//! timestamps alone would read as a lag growing with the idle time), and neither server's
//! clock matters.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use observability::db::{Fallback, Pool, PoolState, record_fallback};

use super::ErrorKind;
use super::postgres::{Lane, PgError, Pipelines};
use super::server::PgServer;
use crate::config::{PoolConfig, ReplicaConfig};

/// A WAL position (PostgreSQL's `pg_lsn`), as a byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

/// PostgreSQL's own notation: `16/B374D848`.
impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (high, low) = text.split_once('/').ok_or(())?;
        // Hex digits only (`from_str_radix` would take a sign too).
        let half = |hex: &str| match hex.len() {
            1..=8 if hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u32::from_str_radix(hex, 16).map_err(drop)
            }
            _ => Err(()),
        };
        Ok(Lsn((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Any database within `DB_READ_MAX_LAG_MS`.
    Any,
    /// A database that has applied the commit ending at this position (read-your-writes).
    Since(Lsn),
    /// The primary (what is read there is as new as anything acknowledged).
    Latest,
}

/// The primary's WAL position after everything committed so far: a write's
/// `Consistency-Token`, read after its commit.
pub const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0')::int8 AS position";
/// The column [`PRIMARY_POSITION`] answers in.
pub const POSITION_COLUMN: &str = "position";
/// What the replica has replayed (NULL when it is not replaying: promoted, or not a replica).
const REPLAYED_POSITION: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0')::int8";

/// How long the primary's positions are kept: a replica behind the oldest reads as that far
/// behind (at least), which must be past any sensible `DB_READ_MAX_LAG_MS`.
const HISTORY: Duration = Duration::from_secs(120);

/// What the last check found.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    /// None yet: reads go to the primary until the first check.
    Unchecked,
    /// It answered and replays the primary's WAL.
    Replaying,
    /// It did not answer, is not replaying, or a read failed on it since.
    Unavailable,
}

pub struct Replica {
    pub pipelines: Pipelines,
    max_lag: Duration,
    /// How long a statement on the replica may go unanswered before the replica counts as
    /// hung (see [`Replica::new`]).
    answer_within: Duration,
    /// What the last check found, as a [`Status`].
    status: AtomicU8,
    /// The replayed position at the last check.
    replayed: AtomicU64,
    lag_micros: AtomicU64,
    /// The primary's positions, oldest first, with when they were read.
    history: Mutex<VecDeque<(Instant, Lsn)>>,
    /// Set at shutdown: the checks stop.
    closed: AtomicBool,
}

impl Replica {
    /// The replica's connections open on first use: a replica down at start-up only sends
    /// reads to the primary. A statement it has not answered a second past the statement
    /// timeout (which the server enforces), or within the acquire timeout without one, means
    /// a replica that cannot answer (stopped with its connections open, a network dropping
    /// packets): the read goes to the primary and the replica's connections are dropped.
    pub fn new(server: PgServer, config: &ReplicaConfig, pool: &PoolConfig) -> Self {
        let answer_within = pool.answer_within();
        Self {
            pipelines: Pipelines::new(server, pool),
            max_lag: config.max_lag,
            answer_within,
            status: AtomicU8::new(Status::Unchecked as u8),
            replayed: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            history: Mutex::default(),
            closed: AtomicBool::new(false),
        }
    }

    /// Stops the checks and drops the connections (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.status
            .store(Status::Unavailable as u8, Ordering::Release);
        self.pipelines.close();
    }

    /// How often the lag is checked: four times within the limit, so a replica falling
    /// behind is noticed within a quarter of it past the limit.
    pub fn check_interval(&self) -> Duration {
        (self.max_lag / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Whether the replica may answer a read, one that must see the commit ending at `since`
    /// if given; otherwise why not.
    pub fn admits(&self, since: Option<Lsn>) -> Result<(), Fallback> {
        if self.status.load(Ordering::Acquire) != Status::Replaying as u8 {
            return Err(Fallback::Unavailable);
        }
        if self.lag() > self.max_lag {
            return Err(Fallback::Lag);
        }
        match since {
            Some(lsn) if lsn.0 > self.replayed.load(Ordering::Acquire) => Err(Fallback::Token),
            _ => Ok(()),
        }
    }

    /// A read on the replica failed: reads go to the primary until a check succeeds again.
    pub fn failed(&self) {
        self.status
            .store(Status::Unavailable as u8, Ordering::Release);
    }

    /// The replica did not answer in time: as [`Self::failed`], and its connections are
    /// dropped, so the next check opens new ones instead of queueing behind the silent ones.
    fn hung(&self) {
        self.failed();
        self.pipelines.close();
    }

    /// `statement` on the replica, bounded by `answer_within`; `None` when it did not answer in
    /// time (the replica is then [`Self::hung`]).
    async fn answered<T>(&self, statement: impl Future<Output = T>) -> Option<T> {
        let answer = tokio::time::timeout(self.answer_within, statement)
            .await
            .ok();
        if answer.is_none() {
            self.hung();
        }
        answer
    }

    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_micros.load(Ordering::Relaxed))
    }

    pub fn state(&self) -> PoolState {
        self.pipelines.state()
    }

    /// One check: the primary's position, then the replica's. A failed check marks the replica
    /// unavailable; its lag keeps being measured against the last position it was seen at.
    /// Each change of status is logged once.
    async fn check(&self, primary: &Pipelines) {
        let primary_position = tokio::time::timeout(
            self.answer_within,
            Box::pin(position(primary, PRIMARY_POSITION)),
        )
        .await;
        let Ok(Ok(primary_position)) = primary_position else {
            // The primary is unreachable: nothing to measure against. The replica keeps its
            // last measure (it cannot fall further behind a primary that writes nothing).
            return;
        };
        let now = Instant::now();
        let replayed = self
            .answered(Box::pin(position(&self.pipelines, REPLAYED_POSITION)))
            .await
            .unwrap_or(Err(PgError::NoAnswer(self.answer_within)));
        let replayed = match replayed {
            Ok(Some(replayed)) => {
                self.replayed.store(replayed.0, Ordering::Release);
                if self.set(Status::Replaying) == Status::Unavailable as u8 {
                    tracing::info!("replica back: reads return to it");
                }
                Some(replayed)
            }
            Ok(None) => {
                if self.set(Status::Unavailable) != Status::Unavailable as u8 {
                    tracing::error!(
                        "DATABASE_READ_URL is not replaying WAL (promoted, or not a replica): \
                         reads go to the primary"
                    );
                }
                None
            }
            Err(error) => {
                if self.set(Status::Unavailable) != Status::Unavailable as u8 {
                    tracing::warn!(%error, "replica unavailable: reads go to the primary");
                }
                None
            }
        };
        let replayed = replayed.unwrap_or(Lsn(self.replayed.load(Ordering::Acquire)));
        let lag = {
            let mut history = self.history.lock().expect("not poisoned");
            if let Some(position) = primary_position {
                history.push_back((now, position));
            }
            while history
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > HISTORY)
            {
                history.pop_front();
            }
            lag_at(&history, replayed, now)
        };
        self.lag_micros
            .store(lag.as_micros() as u64, Ordering::Relaxed);
        observability::db::record_replica_lag(lag);
    }

    /// Sets the status; the one before.
    fn set(&self, status: Status) -> u8 {
        self.status.swap(status as u8, Ordering::AcqRel)
    }

    /// Checks the lag every [`Self::check_interval`] until the replica is dropped.
    pub fn watch(replica: &Arc<Self>, primary: &Arc<Pipelines>) {
        let (replica, primary) = (Arc::downgrade(replica), Arc::downgrade(primary));
        tokio::spawn(async move {
            loop {
                let Some((replica, primary)) = upgrade(&replica, &primary) else {
                    return;
                };
                if replica.closed.load(Ordering::Acquire) {
                    return;
                }
                replica.check(&primary).await;
                let interval = replica.check_interval();
                drop((replica, primary));
                tokio::time::sleep(interval).await;
            }
        });
    }
}

/// Runs a read where `freshness` allows: on the replica when it admits the read, else on the
/// primary; a read that fails on the replica runs again on the primary, so a replica going
/// away costs time, never an error. `run` gets the connections and the `pool` label.
pub async fn route<'a, T, F, Fut>(
    primary: &'a Pipelines,
    replica: Option<&'a Replica>,
    freshness: Freshness,
    run: F,
) -> Result<T, ErrorKind>
where
    F: Fn(&'a Pipelines, Option<Pool>) -> Fut,
    Fut: Future<Output = Result<T, ErrorKind>>,
{
    let Some(replica) = replica else {
        return run(primary, None).await;
    };
    let since = match freshness {
        Freshness::Any => None,
        Freshness::Since(lsn) => Some(lsn),
        Freshness::Latest => return run(primary, Some(Pool::Primary)).await,
    };
    match replica.admits(since) {
        Ok(()) => match replica
            .answered(run(&replica.pipelines, Some(Pool::Replica)))
            .await
        {
            Some(Ok(answer)) => return Ok(answer),
            Some(Err(_)) => {
                replica.failed();
                record_fallback(Fallback::Error);
            }
            None => record_fallback(Fallback::Error),
        },
        Err(reason) => record_fallback(reason),
    }
    run(primary, Some(Pool::Primary)).await
}

fn upgrade(
    replica: &Weak<Replica>,
    primary: &Weak<Pipelines>,
) -> Option<(Arc<Replica>, Arc<Pipelines>)> {
    Some((replica.upgrade()?, primary.upgrade()?))
}

/// A one-number statement's answer, as a position.
async fn position(pipelines: &Pipelines, sql: &str) -> Result<Option<Lsn>, PgError> {
    let rows = pipelines.query(Lane::Point, sql, &[]).await?;
    let value: Option<i64> = rows
        .first()
        .map(|row| row.try_get(0))
        .transpose()?
        .flatten();
    Ok(value.map(|position| Lsn(position as u64)))
}

/// How long ago the primary first held something past `replayed`: zero when the replica has
/// everything of the newest position read; the whole history's age (a lower bound) when it
/// lacks even the oldest.
fn lag_at(history: &VecDeque<(Instant, Lsn)>, replayed: Lsn, now: Instant) -> Duration {
    history
        .iter()
        .find(|(_, position)| *position > replayed)
        .map_or(Duration::ZERO, |(at, _)| now.duration_since(*at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_reads_and_writes_postgresql_notation() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        for bad in ["", "16", "/1", "1/", "123456789/0", "g/0", "1/2/3", "+1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_position_not_replayed() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let history: VecDeque<_> = [(at(0), Lsn(100)), (at(250), Lsn(200)), (at(500), Lsn(300))]
            .into_iter()
            .collect();
        let now = at(600);
        assert_eq!(lag_at(&history, Lsn(300), now), Duration::ZERO, "caught up");
        assert_eq!(
            lag_at(&history, Lsn(400), now),
            Duration::ZERO,
            "ahead of the last read"
        );
        assert_eq!(lag_at(&history, Lsn(250), now), Duration::from_millis(100));
        assert_eq!(lag_at(&history, Lsn(150), now), Duration::from_millis(350));
        assert_eq!(lag_at(&history, Lsn(50), now), Duration::from_millis(600));
        // An idle primary: the same position again and again, replayed.
        let idle: VecDeque<_> = (0..10).map(|i| (at(i * 250), Lsn(300))).collect();
        assert_eq!(lag_at(&idle, Lsn(300), at(5000)), Duration::ZERO);
    }
}
