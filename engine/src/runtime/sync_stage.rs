//! The durable half of the pipelined group commit: the writer hands each batch over
//! as a [`Flush`]; the [`SyncStage`] makes it durable (one merged fdatasync for
//! every flush queued meanwhile) and then releases what waited for it ([`Release`]:
//! follower records, events, replies as [`Pending`] answers, reads).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Sender;
use surge_wal::CommitJob;

use super::follower::FollowerMsg;
use super::replication::PublishMsg;
use super::{Error, Inner, ReadAnswer, ReplySender};
use crate::command::Acked;
use crate::event::Event;

/// A batch handed from the writer to durability: its commit job (if it logged
/// anything) and everything to release once that job and every job before it
/// are durable.
pub(super) struct Flush {
    pub(super) job: Option<CommitJob>,
    pub(super) release: Release,
    /// The releases of the batches that joined this flush, in order, each released
    /// after the one before. Kept whole rather than appended to `release`: under a
    /// deep pipeline a queued flush gathers thousands of answers, and growing its
    /// vectors copied them over and over, into fresh pages, on the writer.
    pub(super) joined: Vec<Release>,
    /// Where the records go once durable, when this node publishes its log; `true`:
    /// the release waits for the publish too (`replicated`).
    pub(super) publish: Option<(Sender<PublishMsg>, bool)>,
}

/// What a batch releases once it is durable (and, in `replicated` mode, published).
pub(super) struct Release {
    /// The records of this batch as logged, for the follower and the publisher.
    pub(super) records: Vec<(u64, Vec<u8>)>,
    pub(super) events: Vec<Event>,
    pub(super) replies: Vec<Pending>,
    pub(super) reads: Vec<ReadAnswer>,
}

impl Release {
    /// A later batch's release joins this one: everything keeps its order. Only for
    /// a flush that waits for the publish (one `Hold` per flush, one publish round),
    /// and on the sync thread, not the writer.
    fn absorb(&mut self, later: Release) {
        self.records.extend(later.records);
        self.events.extend(later.events);
        self.replies.extend(later.replies);
        self.reads.extend(later.reads);
    }

    /// The batch is safe: feed the follower, publish the events, answer.
    pub(super) fn release(self, shared: &Inner, to_follower: Option<&Sender<FollowerMsg>>) {
        let Release {
            records,
            mut events,
            replies,
            reads,
        } = self;
        shared.events.publish(&mut events);
        for p in replies {
            p.answer(None);
        }
        for (reply, answer) in reads {
            let _ = reply.send(Ok(answer));
        }
        if let Some(follower) = to_follower
            && !records.is_empty()
        {
            let _ = follower.send(FollowerMsg::Records(records));
        }
    }

    /// The batch will never be safe: every waiter gets `error`.
    pub(super) fn refuse(self, error: &Error) {
        for p in self.replies {
            p.answer(Some(error));
        }
        for (reply, _) in self.reads {
            let _ = reply.send(Err(error.duplicate()));
        }
    }
}

/// The flushes handed to the sync thread and not yet taken by it. A queue under a
/// lock rather than a channel, so that the writer can add a batch to the flush
/// still waiting here, commit job included (`Wal::continue_commit`): while the
/// writer holds the lock, the sync thread cannot take that flush and begin its
/// sync.
#[derive(Default)]
pub(super) struct FlushQueue {
    state: parking_lot::Mutex<FlushQueueState>,
    ready: parking_lot::Condvar,
}

#[derive(Default)]
pub(super) struct FlushQueueState {
    pub(super) flushes: Vec<Flush>,
    /// No more flushes: the writer has stopped, or the sync thread has.
    pub(super) closed: bool,
}

impl FlushQueue {
    pub(super) fn lock(&self) -> parking_lot::MutexGuard<'_, FlushQueueState> {
        self.state.lock()
    }

    /// Wake the sync thread after a flush was pushed.
    pub(super) fn notify(&self) {
        self.ready.notify_one();
    }

    /// No more flushes will come: the sync thread ends once the queue is empty.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }

    /// Everything queued, waiting until there is something; `None` once closed
    /// and empty.
    fn take(&self) -> Option<Vec<Flush>> {
        let mut state = self.state.lock();
        while state.flushes.is_empty() && !state.closed {
            self.ready.wait(&mut state);
        }
        if state.flushes.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut state.flushes))
    }
}

/// Closes the queue when the sync thread ends, even by a panic, so that the writer
/// runs flushes inline instead of queueing them for nobody.
struct CloseOnExit<'a>(&'a FlushQueue);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Flush {
    /// A batch's flush, nothing joined yet.
    pub(super) fn new(
        job: Option<CommitJob>,
        release: Release,
        publish: Option<(Sender<PublishMsg>, bool)>,
    ) -> Flush {
        Flush {
            job,
            release,
            joined: Vec::new(),
            publish,
        }
    }

    /// A later batch joins this flush: its commit job merged into this one's
    /// (`Wal::continue_commit` began it in the place of this job's commit mark),
    /// its release after this one's.
    pub(super) fn extend(&mut self, job: Option<CommitJob>, release: Release) {
        match (self.job.as_mut(), job) {
            (Some(mine), Some(later)) => mine.merge(later),
            (None, Some(later)) => self.job = Some(later),
            (_, None) => {}
        }
        self.joined.push(release);
    }
}

/// The durable half of the pipelined group commit. On its own thread it syncs
/// batch N while the writer applies and appends N+1; flushes that queue up while
/// a sync runs are merged into the next one. Replies, reads and events of a flush
/// are released only when it and everything before it is durable. After a failed
/// sync nothing more is acknowledged: that flush and every later one fail.
pub(super) struct SyncStage {
    pub(super) shared: Arc<Inner>,
    pub(super) failed: Option<String>,
    /// Durable records go on to the follower, in log order; failed ones never do.
    pub(super) to_follower: Option<Sender<FollowerMsg>>,
}

impl SyncStage {
    pub(super) fn run(
        mut self,
        queue: Arc<FlushQueue>,
        done: Sender<Result<u64, surge_wal::Error>>,
    ) {
        let _close = CloseOnExit(&queue);
        while let Some(flushes) = queue.take() {
            if let Some(result) = self.process(flushes) {
                // The writer may be gone at shutdown; nothing waits for this then.
                let _ = done.send(result);
            }
        }
    }

    /// Sync what the flushes carry (one merged sync) and release them. Returns the
    /// commit's result for the writer's log, if there was a commit.
    pub(super) fn process(
        &mut self,
        mut flushes: Vec<Flush>,
    ) -> Option<Result<u64, surge_wal::Error>> {
        let mut job: Option<CommitJob> = None;
        for flush in &mut flushes {
            if let Some(next) = flush.job.take() {
                match job.as_mut() {
                    Some(job) => job.merge(next),
                    None => job = Some(next),
                }
            }
        }
        let stats = &self.shared.stats;
        let result = match (&self.failed, job) {
            (Some(_), job) => job.map(|_| Err(surge_wal::Error::Poisoned)),
            (None, Some(job)) => {
                let started = Instant::now();
                let synced = job.run().map(|()| job.target());
                let elapsed = started.elapsed();
                let micros = elapsed.as_micros() as u64;
                stats.flushes.fetch_add(1, Ordering::Relaxed);
                stats.flush_latency_us_last.store(micros, Ordering::Relaxed);
                stats
                    .flush_latency_us_total
                    .fetch_add(micros, Ordering::Relaxed);
                stats.wal_commit.record(elapsed);
                Some(synced)
            }
            (None, None) => None,
        };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        match &result {
            Some(Err(e)) if self.failed.is_none() => {
                // Never retry a failed flush and trust it.
                let why = format!("flush failed: {e}");
                self.shared.refuse_writes(why.clone());
                self.failed = Some(why);
            }
            Some(Ok(durable)) => stats.durable_lsn.store(*durable, Ordering::Release),
            _ => {}
        }
        for flush in flushes {
            let Flush {
                mut release,
                joined,
                publish,
                ..
            } = flush;
            if let Some(why) = &self.failed {
                let error = Error::StorageUnavailable(why.clone());
                for release in std::iter::once(release).chain(joined) {
                    release.refuse(&error);
                }
                continue;
            }
            match publish {
                Some((to_publisher, true)) => {
                    // One hold, one publish round for the whole flush.
                    for later in joined {
                        release.absorb(later);
                    }
                    if let Err(crossbeam_channel::SendError(PublishMsg::Hold(release))) =
                        to_publisher.send(PublishMsg::Hold(release))
                    {
                        release.refuse(&Error::StorageUnavailable(
                            "the publish stage has stopped".into(),
                        ));
                    }
                }
                publish => {
                    // Every answer of the flush first, then the follower's records
                    // (and the publisher's trail), in log order.
                    let mut records = Vec::with_capacity(1 + joined.len());
                    for mut release in std::iter::once(release).chain(joined) {
                        records.push(std::mem::take(&mut release.records));
                        release.release(&self.shared, None);
                    }
                    for batch in records.into_iter().filter(|r| !r.is_empty()) {
                        match (&publish, &self.to_follower) {
                            (Some((to_publisher, _)), Some(follower)) => {
                                let _ = follower.send(FollowerMsg::Records(batch.clone()));
                                let _ = to_publisher.send(PublishMsg::Trail(batch));
                            }
                            (Some((to_publisher, _)), None) => {
                                let _ = to_publisher.send(PublishMsg::Trail(batch));
                            }
                            (None, Some(follower)) => {
                                let _ = follower.send(FollowerMsg::Records(batch));
                            }
                            (None, None) => {}
                        }
                    }
                }
            }
        }
        result
    }
}

/// An answer that waits for its batch to be durable.
pub(super) enum Pending {
    One {
        reply: ReplySender<Acked>,
        outcome: Acked,
    },
    Batch {
        reply: ReplySender<Vec<Result<Acked, Error>>>,
        outcomes: Vec<Result<Acked, Error>>,
    },
    /// A standby's records from its leader, applied through `lsn`.
    Replicated { reply: ReplySender<u64>, lsn: u64 },
}

impl Pending {
    /// Send the answer: the outcomes once durable, `Err(refused)` for each when
    /// the batch could not be made durable (or published).
    pub(super) fn answer(self, refused: Option<&Error>) {
        match (self, refused) {
            (Pending::One { reply, outcome }, None) => {
                let _ = reply.send(Ok(outcome));
            }
            (Pending::One { reply, .. }, Some(error)) => {
                let _ = reply.send(Err(error.duplicate()));
            }
            (Pending::Batch { reply, outcomes }, None) => {
                let _ = reply.send(Ok(outcomes));
            }
            (Pending::Batch { reply, outcomes }, Some(error)) => {
                let _ = reply.send(Ok(outcomes
                    .iter()
                    .map(|_| Err(error.duplicate()))
                    .collect()));
            }
            (Pending::Replicated { reply, lsn }, None) => {
                let _ = reply.send(Ok(lsn));
            }
            (Pending::Replicated { reply, .. }, Some(error)) => {
                let _ = reply.send(Err(error.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Acked, Reply};
    use crate::feed::EventLog;
    use crate::runtime::{Durability, Role};

    type Answer = tokio::sync::oneshot::Receiver<Result<Acked, Error>>;

    fn stage(durability: Durability, to_follower: Option<Sender<FollowerMsg>>) -> SyncStage {
        SyncStage {
            shared: Arc::new(Inner::new(EventLog::new(16), Role::Leader, durability)),
            failed: None,
            to_follower,
        }
    }

    /// A batch with one record (LSN `lsn`, body `[lsn]`) and one answer that carries `lsn`.
    fn batch(lsn: u64) -> (Release, Answer) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let outcome = Acked {
            outcome: Ok(Reply::Expired {
                reservations: lsn,
                orders: 0,
            }),
            lsn: Some(lsn),
        };
        let release = Release {
            records: vec![(lsn, vec![lsn as u8])],
            events: Vec::new(),
            replies: vec![Pending::One { reply, outcome }],
            reads: Vec::new(),
        };
        (release, answer)
    }

    fn answered(answer: &mut Answer) -> Option<u64> {
        match answer.try_recv() {
            Ok(Ok(Acked { lsn, .. })) => lsn,
            Ok(Err(e)) => panic!("refused: {e}"),
            Err(_) => None,
        }
    }

    fn records_of(msg: FollowerMsg) -> Vec<(u64, Vec<u8>)> {
        match msg {
            FollowerMsg::Records(records) => records,
            _ => panic!("the sync stage sends the follower records only"),
        }
    }

    /// A flush of three batches (two joined) and a flush after it: every answer
    /// of a flush goes out before the follower gets that flush's records, the
    /// next flush's answers only after, and the records keep log order, one
    /// message per batch. The follower's channel is a rendezvous, so the stage
    /// stops at each record message while the test looks at the answers.
    #[test]
    fn a_flush_answers_its_joined_batches_before_the_follower_gets_their_records() {
        let (to_follower, follower) = crossbeam_channel::bounded(0);
        let mut stage = stage(Durability::Sync, Some(to_follower));
        let [(r1, mut a1), (r2, mut a2), (r3, mut a3), (r4, mut a4)] = [1, 2, 3, 4].map(batch);
        let mut first = Flush::new(None, r1, None);
        first.extend(None, r2);
        first.extend(None, r3);
        let second = Flush::new(None, r4, None);
        let stage_thread = std::thread::spawn(move || stage.process(vec![first, second]));

        assert_eq!(
            records_of(follower.recv().expect("records")),
            vec![(1, vec![1])]
        );
        assert_eq!(
            [answered(&mut a1), answered(&mut a2), answered(&mut a3)],
            [Some(1), Some(2), Some(3)],
            "the whole flush is answered before its records go on"
        );
        assert_eq!(answered(&mut a4), None, "the next flush waits its turn");
        assert_eq!(
            records_of(follower.recv().expect("records")),
            vec![(2, vec![2])]
        );
        assert_eq!(
            records_of(follower.recv().expect("records")),
            vec![(3, vec![3])]
        );
        assert_eq!(
            records_of(follower.recv().expect("records")),
            vec![(4, vec![4])]
        );
        assert!(
            stage_thread.join().expect("stage").is_none(),
            "no commit job, no result"
        );
        assert_eq!(answered(&mut a4), Some(4));
        assert!(follower.try_recv().is_err(), "one message per batch");
    }

    fn refused(answer: &mut Answer) -> bool {
        matches!(answer.try_recv(), Ok(Err(Error::StorageUnavailable(_))))
    }

    /// Issue 8's pipelined commit, deterministically on the simulated disk: batch N
    /// (records 1-3) is appended and its commit job begun; batch N+1 (records 4-6)
    /// is appended and its own job begun while N's has not run. N's sync fails.
    /// Both batches are refused, nothing of either reaches the follower, N+1's job
    /// is never run (no storage step after the failure), the durable LSN stays at
    /// 0, and a later flush is refused too.
    #[test]
    fn a_failed_sync_of_n_refuses_n_and_the_batch_appended_behind_it() {
        use surge_wal::{SimStorage, Wal, WalConfig};

        let disk = SimStorage::new();
        let (mut wal, _) = Wal::open(
            disk.clone(),
            WalConfig {
                segment_bytes: 64 * 1024,
                snapshots_kept: 2,
            },
        )
        .expect("open");
        let append = |wal: &mut Wal<SimStorage>, lsns: std::ops::RangeInclusive<u64>| {
            for lsn in lsns {
                wal.append(lsn, &[lsn as u8; 100]).expect("append");
            }
            wal.begin_commit().expect("begin").expect("a job")
        };
        let job_n = append(&mut wal, 1..=3);
        let job_after = append(&mut wal, 4..=6);
        assert_eq!((job_n.target(), job_after.target()), (3, 6));
        assert_eq!(wal.durable_lsn(), 0, "neither job has run");

        let (to_follower, follower) = crossbeam_channel::unbounded();
        let mut stage = stage(Durability::Sync, Some(to_follower));
        let [
            (r_n, mut a_n),
            (r_after, mut a_after),
            (r_later, mut a_later),
        ] = [3, 6, 7].map(batch);
        disk.fail_next_sync();
        let result = stage.process(vec![Flush::new(Some(job_n), r_n, None)]);
        assert!(matches!(result, Some(Err(_))), "N's sync failed");
        let ops_after_failure = disk.op_count();

        let result = stage.process(vec![Flush::new(Some(job_after), r_after, None)]);
        assert!(
            matches!(result, Some(Err(surge_wal::Error::Poisoned))),
            "N+1 is refused without running"
        );
        assert_eq!(
            disk.op_count(),
            ops_after_failure,
            "N+1's job touched the disk"
        );
        assert!(
            stage
                .process(vec![Flush::new(None, r_later, None)])
                .is_none()
        );

        assert!(refused(&mut a_n), "N was acknowledged");
        assert!(refused(&mut a_after), "N+1 was acknowledged");
        assert!(refused(&mut a_later), "a flush after them was acknowledged");
        assert!(
            follower.try_recv().is_err(),
            "the follower got failed records"
        );
        assert_eq!(stage.shared.stats.durable_lsn.load(Ordering::Acquire), 0);
        assert!(stage.failed.is_some());
    }

    /// In `replicated` mode a flush and the batches joined to it become one `Hold`
    /// for the publish stage (one publish round), records in log order, and
    /// nothing is answered until the publish stage releases it.
    #[test]
    fn a_replicated_flush_is_one_hold_with_its_joined_batches_in_order() {
        let (to_publisher, publisher) = crossbeam_channel::unbounded();
        let mut stage = stage(Durability::Replicated, None);
        let [(r1, mut a1), (r2, mut a2), (r3, mut a3)] = [1, 2, 3].map(batch);
        let mut flush = Flush::new(None, r1, Some((to_publisher, true)));
        flush.extend(None, r2);
        flush.extend(None, r3);
        assert!(stage.process(vec![flush]).is_none());

        let Ok(PublishMsg::Hold(hold)) = publisher.try_recv() else {
            panic!("one Hold for the flush");
        };
        assert!(publisher.try_recv().is_err(), "one Hold, not one per batch");
        assert_eq!(hold.records, vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]);
        assert_eq!(
            [answered(&mut a1), answered(&mut a2), answered(&mut a3)],
            [None, None, None],
            "nothing is answered before the publish"
        );
        hold.release(&stage.shared, None);
        assert_eq!(
            [answered(&mut a1), answered(&mut a2), answered(&mut a3)],
            [Some(1), Some(2), Some(3)]
        );
    }

    /// In `sync` mode with a publisher and a follower, each batch's records go to
    /// both, one message per batch, in log order. (That the answers go first is the
    /// test above.)
    #[test]
    fn a_published_flush_trails_its_records_and_feeds_the_follower() {
        let (to_follower, follower) = crossbeam_channel::unbounded();
        let (to_publisher, publisher) = crossbeam_channel::unbounded();
        let mut stage = stage(Durability::Sync, Some(to_follower));
        let [(r1, mut a1), (r2, mut a2)] = [1, 2].map(batch);
        let mut flush = Flush::new(None, r1, Some((to_publisher, false)));
        flush.extend(None, r2);
        assert!(stage.process(vec![flush]).is_none());

        assert_eq!([answered(&mut a1), answered(&mut a2)], [Some(1), Some(2)]);
        for lsn in [1, 2] {
            assert_eq!(
                records_of(follower.try_recv().expect("records")),
                [(lsn, vec![lsn as u8])]
            );
            let Ok(PublishMsg::Trail(records)) = publisher.try_recv() else {
                panic!("a trail per batch");
            };
            assert_eq!(records, [(lsn, vec![lsn as u8])]);
        }
        assert!(follower.try_recv().is_err() && publisher.try_recv().is_err());
    }
}
