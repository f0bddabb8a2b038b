//! Replication: the leader's durable log goes to a replicated log (NATS JetStream,
//! behind [`LogPublisher`]), and a standby applies a leader's records.
//!
//! ```text
//! writer --Flush--> sync stage (fdatasync) --PublishMsg--> publish stage --> LogPublisher
//!                                                           | replicated: then release
//!                                                           v  replies, reads, events
//! ```
//!
//! - `replicated` durability: a flush's replies, reads, events and follower records
//!   wait here until the replicated log acknowledged its records ([`PublishMsg::Hold`]).
//! - `sync` with a publisher: the sync stage answers as usual and hands the records
//!   here to publish behind the commit ([`PublishMsg::Trail`]).
//!
//! The stage learns where the replicated log stands ([`LogPublisher::resume`]) when
//! it starts and after every failure, and publishes what the log lacks: records the
//! writer logged before the stage existed come from the WAL (the writer reads them,
//! [`Request::ReadLog`]), the rest from the flushes. Nothing is published twice:
//! records at or below the log's end are skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::follower::FollowerMsg;
use super::sync_stage::Release;
use super::{Error, Inner, Request};

/// Where a leader's durable records are replicated. Implemented over NATS JetStream
/// by the API crate; tests substitute their own. Every call may block.
pub trait LogPublisher: Send + 'static {
    /// The LSN of the last record the replicated log holds (0: none). `Fenced` if
    /// another node published after this one: this node is no longer the leader.
    fn resume(&mut self) -> Result<u64, PublishError>;
    /// Publish records (in log order, each after the log's end) and wait for the
    /// replicated log's acknowledgement.
    fn publish(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), PublishError>;
    /// Once fenced: the last LSN, at most `lsn`, up to which the replicated log
    /// holds this node's own records (`None`: unknown). A node restarted after it
    /// was fenced has published nothing in this process, and without it took its
    /// whole log for unpublished.
    fn published_through(&mut self, lsn: u64) -> Option<u64> {
        let _ = lsn;
        None
    }
}

/// Why a publish did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Another node published after this one (a standby was promoted): this node
    /// must never acknowledge a write again.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The replicated log cannot be reached now; try again.
    #[error("the replicated log is unavailable: {0}")]
    Unavailable(String),
}

/// What a node does with writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes (with or without replication).
    Leader,
    /// Applies a leader's records, serves reads, refuses writes.
    Standby,
    /// A former leader whose publish was refused by a newer leader's fence.
    Fenced,
}

impl Role {
    pub(super) fn from_u8(value: u8) -> Role {
        match value {
            0 => Role::Leader,
            1 => Role::Standby,
            _ => Role::Fenced,
        }
    }

    pub(super) fn as_u8(self) -> u8 {
        match self {
            Role::Leader => 0,
            Role::Standby => 1,
            Role::Fenced => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
            Role::Fenced => "fenced",
        }
    }
}

/// What the sync stage hands to the publish stage, in log order.
pub(super) enum PublishMsg {
    /// `replicated`: durable records and everything that waits for them.
    Hold(Release),
    /// `sync` with a publisher: durable records, already answered.
    Trail(Vec<(u64, Vec<u8>)>),
}

impl PublishMsg {
    fn records_mut(&mut self) -> &mut Vec<(u64, Vec<u8>)> {
        match self {
            PublishMsg::Hold(release) => &mut release.records,
            PublishMsg::Trail(records) => records,
        }
    }
}

/// Bytes of records the writer reads from the WAL per catch-up request.
const CATCH_UP_BYTES_MAX: usize = 4 << 20;
/// Waits between attempts while the replicated log is unavailable.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);

pub(super) struct PublishStage {
    pub(super) shared: Arc<Inner>,
    pub(super) publisher: Box<dyn LogPublisher>,
    /// In `replicated` mode the follower gets records once published (reads then
    /// never see a write that a failover could lose).
    pub(super) to_follower: Option<Sender<FollowerMsg>>,
    pub(super) to_writer: super::queue::Sender<Request>,
    /// Every record at or below this LSN was logged before this stage started: the
    /// flushes carry only later ones, the WAL has these.
    pub(super) logged_before: u64,
    /// The replicated log's end, once known (`None`: ask again before publishing).
    pub(super) log_end: Option<u64>,
    pub(super) fenced: Option<String>,
    /// With nothing to publish for this long, ask the log where it ends
    /// ([`EngineConfig::stream_check_interval_ms`](super::EngineConfig)).
    pub(super) check_every: Duration,
    pub(super) rx: Receiver<PublishMsg>,
    /// Messages taken off the channel while waiting for the replicated log to come
    /// back, handled next (in order).
    pub(super) deferred: VecDeque<PublishMsg>,
}

impl PublishStage {
    pub(super) fn run(mut self) {
        // Publish what was logged before this stage started, at once: a standby
        // should not wait for the next write to see the tail.
        // A failure is kept in `fenced` or `log_end`; the loop below acts on it.
        let _ = self.publish_all(&[]);
        loop {
            let mut msgs: Vec<PublishMsg> = self.deferred.drain(..).collect();
            if msgs.is_empty() {
                match self.rx.recv_timeout(self.check_every) {
                    Ok(first) => msgs.push(first),
                    Err(RecvTimeoutError::Timeout) => {
                        self.check_idle();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            msgs.extend(self.rx.try_iter());
            let mut records = Vec::new();
            let mut counts = Vec::with_capacity(msgs.len());
            for msg in &mut msgs {
                let taken = msg.records_mut();
                counts.push(taken.len());
                records.append(taken);
            }
            let published = self.publish_all(&records);
            let mut records = records.into_iter();
            for (msg, count) in msgs.into_iter().zip(counts) {
                let PublishMsg::Hold(mut release) = msg else {
                    continue;
                };
                release.records = records.by_ref().take(count).collect();
                match &published {
                    Ok(()) => release.release(&self.shared, self.to_follower.as_ref()),
                    Err(refusal) => release.refuse(refusal),
                }
            }
        }
    }

    /// Nothing came to publish for a while: ask the log where it ends, as after a
    /// failure. A newer leader's fence makes this node `fenced`, an unreachable
    /// log sets `replication_down` (and is waited out as any outage), a log back
    /// clears it: `/readyz` tells the truth on an idle leader too, which a load
    /// balancer that took it out of service would otherwise never send a write to
    /// learn.
    fn check_idle(&mut self) {
        if self.fenced.is_some() || self.shared.publish_stopping.load(Ordering::Acquire) {
            return;
        }
        self.log_end = None;
        // The outcome is kept in `fenced`, `log_end` and `replication_down`.
        let _ = self.publish_all(&[]);
    }

    /// Publish everything the replicated log lacks up to and including `records`;
    /// retries while the log is unavailable. `Err`: the records were not published
    /// and never will be by this node (fenced, or shutting down).
    fn publish_all(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), Error> {
        let mut wait = RETRY_FIRST;
        loop {
            if let Some(why) = &self.fenced {
                return Err(Error::NotLeader(why.clone()));
            }
            match self.try_publish(records) {
                Ok(()) => {
                    self.shared.set_replication_down(None);
                    return Ok(());
                }
                Err(PublishError::Fenced(why)) => {
                    let why = format!("fenced by a newer leader: {why}");
                    // Fenced first: the search below asks the stream, and a `sync`
                    // leader must not acknowledge a write meanwhile.
                    self.shared.set_role(super::Role::Fenced);
                    let stats = &self.shared.stats;
                    let held = stats
                        .durable_lsn
                        .load(Ordering::Acquire)
                        .max(stats.recovered_lsn.load(Ordering::Acquire));
                    if let Some(published) = self.publisher.published_through(held) {
                        stats.published_lsn.fetch_max(published, Ordering::AcqRel);
                    }
                    self.fenced = Some(why);
                }
                Err(PublishError::Unavailable(why)) => {
                    self.log_end = None;
                    self.shared.set_replication_down(Some(why.clone()));
                    if self.shared.publish_stopping.load(Ordering::Acquire) {
                        return Err(Error::StorageUnavailable(format!(
                            "shutting down while the replicated log is unavailable: {why}"
                        )));
                    }
                    self.wait_while_down(wait);
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Wait before the next attempt, taking messages off the channel meanwhile so
    /// that an outage costs no memory: trailing records (`sync` mode) are durable in
    /// the WAL, so only their end is kept and they are read back from the log when
    /// the replicated log returns (whose segments are kept until then); held
    /// batches (`replicated`: writes are refused while down, so only those in
    /// flight) wait in order.
    fn wait_while_down(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while let Ok(msg) = self.rx.recv_deadline(until) {
            match msg {
                PublishMsg::Trail(records) => {
                    if let Some(&(last, _)) = records.last() {
                        self.logged_before = self.logged_before.max(last);
                    }
                }
                hold @ PublishMsg::Hold(_) => self.deferred.push_back(hold),
            }
        }
    }

    fn try_publish(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), PublishError> {
        let mut log_end = match self.log_end {
            Some(end) => end,
            None => self.publisher.resume()?,
        };
        self.log_end = Some(log_end);
        self.shared
            .stats
            .published_lsn
            .fetch_max(log_end, Ordering::AcqRel);
        // What was logged before this stage started comes from the WAL.
        while log_end < self.logged_before {
            let from_log = self.read_log(log_end)?;
            let Some(&(last, _)) = from_log.last() else {
                return Err(PublishError::Unavailable(format!(
                    "the local log has no durable record after LSN {log_end}"
                )));
            };
            self.publish_counted(&from_log)?;
            log_end = last;
            self.log_end = Some(log_end);
        }
        let start = records.partition_point(|(lsn, _)| *lsn <= log_end);
        let fresh = &records[start..];
        if let Some(&(last, _)) = fresh.last() {
            self.publish_counted(fresh)?;
            self.log_end = Some(last);
        }
        Ok(())
    }

    fn publish_counted(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        self.publisher.publish(records)?;
        let stats = &self.shared.stats;
        stats.replication_publish.record(started.elapsed());
        if let Some(&(last, _)) = records.last() {
            stats.published_lsn.fetch_max(last, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Durable records after `after` from the local WAL, read by the writer.
    fn read_log(&self, after: u64) -> Result<Vec<(u64, Vec<u8>)>, PublishError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.to_writer
            .send(Request::ReadLog {
                after,
                bytes_max: CATCH_UP_BYTES_MAX,
                reply,
            })
            .map_err(|_| PublishError::Unavailable("the writer has stopped".into()))?;
        match answer.blocking_recv() {
            Ok(Ok(records)) => Ok(records),
            Ok(Err(e)) => Err(PublishError::Unavailable(format!("reading the log: {e}"))),
            Err(_) => Err(PublishError::Unavailable("the writer has stopped".into())),
        }
    }
}
