//! The follower: a second copy of the state, on its own thread, that applies each
//! batch once it is durable. It answers reads and encodes periodic snapshots, so
//! that neither waits on the writer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::Receiver;

use super::{Inner, ReplySender, Request};
use crate::Rejection;
use crate::codec;
use crate::command::Query;
use crate::event::Event;
use crate::query::QueryReply;
use crate::state::State;

/// What the follower receives: durable records (from the sync stage, in log
/// order) and reads (from handles).
pub(super) enum FollowerMsg {
    Records(Vec<(u64, Vec<u8>)>),
    Read {
        query: Query,
        /// The durable LSN when the read arrived: it is answered once applied.
        read_index: u64,
        reply: ReplySender<Result<QueryReply, Rejection>>,
    },
    /// A snapshot was requested (`EngineHandle::snapshot`): encode one once this
    /// copy has applied the record at `upto` (the last one logged when it was
    /// requested), whether or not anything is new since the last snapshot.
    Snapshot {
        upto: u64,
    },
    /// The writer could not install the last snapshot this follower sent (it
    /// answered its requests with the error): a later request is encoded afresh.
    InstallFailed,
    Stop,
}

/// How long a snapshot the writer's full queue refused waits at most before it is
/// offered again (any message the follower takes offers it too).
const INSTALL_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// A read waiting at the follower for its read index to be applied.
type WaitingRead = (u64, Query, ReplySender<Result<QueryReply, Rejection>>);

/// A second copy of the state that applies each batch once it is durable. It
/// serves reads (so they never queue behind the writer) and encodes periodic
/// snapshots (so the writer never does). It sees only durable records: a batch
/// whose sync failed never reaches it.
pub(super) struct Follower {
    pub(super) state: State,
    pub(super) rx: Receiver<FollowerMsg>,
    pub(super) to_writer: super::queue::Sender<Request>,
    pub(super) shared: Arc<Inner>,
    /// Reads waiting for their read index, in arrival order.
    pub(super) waiting: std::collections::VecDeque<WaitingRead>,
    pub(super) events_scratch: Vec<Event>,
    pub(super) last_record_lsn: u64,
    pub(super) records_since_snapshot: u64,
    /// The highest `upto` of the snapshot requests not yet served.
    pub(super) requested_upto: Option<u64>,
    /// An encoded snapshot the writer's queue refused (full): offered again.
    pub(super) unsent: Option<(u64, surge_wal::SnapshotImage)>,
    /// The LSN of the last snapshot encoded here (sent, or `unsent`): a request it
    /// covers is answered by it, not encoded again.
    pub(super) encoded_upto: u64,
}

/// The writer's side of its follower: the channel, and who runs it.
pub(super) struct FollowerLink {
    pub(super) tx: crossbeam_channel::Sender<FollowerMsg>,
    pub(super) runs: FollowerRuns,
}

pub(super) enum FollowerRuns {
    /// On a thread of its own (the engine).
    Thread(std::thread::JoinHandle<()>),
    /// Stepped on the owner's thread (the step-driven core, `Core::follow`).
    Inline(Box<Follower>),
}

impl FollowerLink {
    /// A follower thread that stopped (it panicked) answers nothing.
    pub(super) fn alive(&self) -> bool {
        match &self.runs {
            FollowerRuns::Thread(thread) => !thread.is_finished(),
            FollowerRuns::Inline(_) => true,
        }
    }

    /// Stop it once it has taken what was sent before.
    pub(super) fn stop(self) {
        let _ = self.tx.send(FollowerMsg::Stop);
        drop(self.tx);
        match self.runs {
            FollowerRuns::Thread(thread) => {
                let _ = thread.join();
            }
            // What it was sent and has not taken goes with it: nothing waits on it
            // once the writer stops (reads get ShuttingDown, as with the thread).
            FollowerRuns::Inline(mut follower) => follower.finish(),
        }
    }
}

impl Follower {
    pub(super) fn run(mut self) {
        loop {
            let msg = if self.unsent.is_some() {
                match self.rx.recv_timeout(INSTALL_RETRY) {
                    Ok(msg) => msg,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        // Offered again, then what waited behind it (a request).
                        self.maybe_snapshot();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            };
            if !self.take(msg) {
                break;
            }
        }
        self.finish();
    }

    /// The step-driven core's turn of the loop above: a snapshot the writer's
    /// queue refused is offered again (the thread does it on a timer), then every
    /// message queued is taken, without waiting. Answers how many were taken.
    pub(super) fn step_queued(&mut self) -> usize {
        if self.unsent.is_some() {
            self.maybe_snapshot();
        }
        let mut taken = 0;
        while let Ok(msg) = self.rx.try_recv() {
            taken += 1;
            if !self.take(msg) {
                break;
            }
        }
        taken
    }

    /// One message; `false` to stop.
    fn take(&mut self, msg: FollowerMsg) -> bool {
        match msg {
            FollowerMsg::Records(records) => {
                let last_record = records.last().map(|(lsn, _)| *lsn);
                for (lsn, bytes) in records {
                    self.apply(lsn, &bytes);
                }
                if let Some(lsn) = last_record {
                    self.shared
                        .stats
                        .follower_record_lsn
                        .fetch_max(lsn, Ordering::AcqRel);
                }
                self.shared
                    .board
                    .publish(self.state.take_touched_sku_views(), self.applied());
                self.answer_ready();
                self.maybe_snapshot();
            }
            FollowerMsg::Read {
                query,
                read_index,
                reply,
            } => {
                if read_index <= self.applied() {
                    self.answer(&query, reply);
                } else {
                    self.waiting.push_back((read_index, query, reply));
                }
                if self.unsent.is_some() {
                    // Reads must not keep a refused snapshot here: each message
                    // restarts the retry's wait.
                    self.maybe_snapshot();
                }
            }
            FollowerMsg::Snapshot { upto } => {
                self.requested_upto = Some(self.requested_upto.unwrap_or(0).max(upto));
                self.maybe_snapshot();
            }
            FollowerMsg::InstallFailed => self.encoded_upto = 0,
            FollowerMsg::Stop => return false,
        }
        true
    }

    /// Reads still waiting (or queued) are dropped: their tickets say ShuttingDown.
    fn finish(&mut self) {
        self.shared.board.close();
        self.waiting.clear();
        while self.rx.try_recv().is_ok() {}
    }

    fn apply(&mut self, lsn: u64, bytes: &[u8]) {
        let record = codec::decode_record(bytes)
            .unwrap_or_else(|e| panic!("follower: record {lsn} does not decode: {e}"));
        self.events_scratch.clear();
        let applied = self.state.apply(
            &record.command,
            record.key.as_ref(),
            record.now_ms,
            &mut self.events_scratch,
        );
        // Pair assertion with the writer: the same record lands on the same LSN.
        assert_eq!(
            applied.lsn,
            Some(lsn),
            "follower diverged from the writer at record {lsn} ({})",
            record.command.name()
        );
        self.last_record_lsn = lsn;
        self.records_since_snapshot += 1;
    }

    /// How far this copy has applied, in the measure of the durable LSN a read
    /// notes: a record's LSN is at most `next_seq - 1` once it is applied, and the
    /// next record's LSN is `next_seq`.
    fn applied(&self) -> u64 {
        self.state.next_seq().saturating_sub(1)
    }

    fn answer(&self, query: &Query, reply: ReplySender<Result<QueryReply, Rejection>>) {
        self.shared.follower_reads.fetch_sub(1, Ordering::AcqRel);
        let _ = reply.send(Ok(self.state.query(query)));
    }

    fn answer_ready(&mut self) {
        while self
            .waiting
            .front()
            .is_some_and(|(index, _, _)| *index <= self.applied())
        {
            let (_, query, reply) = self.waiting.pop_front().expect("checked");
            self.answer(&query, reply);
        }
    }

    /// The snapshot of this copy, encoded on a thread of background priority
    /// (`surge_wal::lower_this_thread_priority`) while this one waits: encoding
    /// walks the whole state in one stretch, and at this thread's priority it
    /// would take that stretch of a core from the writer and the HTTP workers.
    /// Inline if the thread cannot be started.
    fn encode_snapshot(&self) -> surge_wal::SnapshotImage {
        let (state, events) = (&self.state, &self.shared.events);
        let encode = move |mut image| {
            codec::encode_engine_snapshot(state, events, &mut image);
            image
        };
        let image = self.shared.snapshot_image();
        std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new()
                .name("surge-encoder".into())
                .spawn_scoped(scope, move || {
                    let _ = surge_wal::lower_this_thread_priority();
                    encode(image)
                });
            match spawned {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // The image went with the closure: encode into a new one.
                Err(_) => encode(self.shared.snapshot_image()),
            }
        })
    }

    /// Encode a snapshot here when the writer asks: for a request (once the record
    /// it names is applied), or because one is due (it alone judges that: it
    /// knows the log's length; and only if something is new here). The writer
    /// writes and publishes it.
    fn maybe_snapshot(&mut self) {
        if self.unsent.is_some() {
            // The one encoded last is offered first: it may answer what is asked.
            self.offer_unsent();
            if self.unsent.is_some() {
                return;
            }
        }
        if self
            .requested_upto
            .is_some_and(|upto| upto <= self.encoded_upto)
        {
            // The snapshot encoded last covers it: it is with the writer, or
            // `unsent` and offered first.
            self.requested_upto = None;
        }
        let requested = self
            .requested_upto
            .is_some_and(|upto| upto <= self.last_record_lsn);
        // The periodic ask is taken before the snapshot is sent: once the writer
        // has it, it may ask again, and a flag cleared after the send could erase
        // that. A requested snapshot serves a periodic ask too.
        let periodic = self.records_since_snapshot > 0
            && self.shared.snapshot_wanted.swap(false, Ordering::AcqRel);
        if !requested && !periodic {
            return;
        }
        if requested {
            self.shared.snapshot_wanted.store(false, Ordering::Release);
            self.requested_upto = None;
        }
        // Answer the reads that are ready first: encoding pauses this thread, and
        // reads that arrive meanwhile take the writer's queue.
        self.answer_ready();
        self.shared.follower_encoding.store(true, Ordering::Release);
        // Readers waiting for the board take the writer's queue instead.
        self.shared.board.wake_readers();
        let body = self.encode_snapshot();
        self.shared
            .follower_encoding
            .store(false, Ordering::Release);
        self.records_since_snapshot = 0;
        self.encoded_upto = self.last_record_lsn;
        self.unsent = Some((self.last_record_lsn, body));
        self.offer_unsent();
    }

    /// Hand the encoded snapshot to the writer; while its queue is full (or it is
    /// gone) the snapshot stays here, offered again after the next batch or
    /// [`INSTALL_RETRY`].
    fn offer_unsent(&mut self) {
        let Some((lsn, body)) = self.unsent.take() else {
            return;
        };
        if let Err(refused) = self
            .to_writer
            .try_send(Request::InstallSnapshot { lsn, body })
            && let Request::InstallSnapshot { lsn, body } = refused.into_inner()
        {
            self.unsent = Some((lsn, body));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The follower's side of requested snapshots against a writer's queue that is
    //! full, then has room. A read is the barrier: its answer comes after every
    //! message sent before it was taken (the channel is in order).
    use std::time::Duration;

    use super::*;
    use crate::command::Command;
    use crate::feed::EventLog;
    use crate::runtime::{Durability, Role, queue};

    /// `n` records as the writer logs them (SKU definitions), with their LSNs.
    fn records(n: usize) -> Vec<(u64, Vec<u8>)> {
        let mut state = State::new();
        let mut events = Vec::new();
        (0..n)
            .map(|i| {
                let command = Command::DefineSku {
                    sku: format!("S{i}"),
                    name: format!("S{i}"),
                    on_hand: 10,
                    low_stock_threshold: 0,
                };
                let applied = state.apply(&command, None, 1, &mut events);
                let mut bytes = Vec::new();
                let record = codec::LogRecord {
                    now_ms: 1,
                    command,
                    key: None,
                };
                codec::encode_record(&record, &mut bytes);
                (applied.lsn.expect("logged"), bytes)
            })
            .collect()
    }

    struct Running {
        to_follower: crossbeam_channel::Sender<FollowerMsg>,
        thread: std::thread::JoinHandle<()>,
        shared: Arc<Inner>,
        writer_queue: queue::Receiver<Request>,
    }

    /// A follower whose writer's queue holds one request and is full already.
    fn start() -> Running {
        let (to_writer, writer_queue) = queue::bounded::<Request>(1);
        assert!(to_writer.try_send(Request::Shutdown).is_ok());
        let shared = Arc::new(Inner::new(
            EventLog::new(1_000),
            Role::Leader,
            Durability::Sync,
        ));
        let (to_follower, rx) = crossbeam_channel::unbounded();
        let follower = Follower {
            state: State::new(),
            rx,
            to_writer,
            shared: Arc::clone(&shared),
            waiting: std::collections::VecDeque::new(),
            events_scratch: Vec::new(),
            last_record_lsn: 0,
            records_since_snapshot: 0,
            requested_upto: None,
            unsent: None,
            encoded_upto: 0,
        };
        let thread = std::thread::spawn(move || follower.run());
        Running {
            to_follower,
            thread,
            shared,
            writer_queue,
        }
    }

    impl Running {
        fn send(&self, msg: FollowerMsg) {
            self.to_follower.send(msg).expect("follower running");
        }

        /// Returns once the follower has taken every message sent before.
        fn barrier(&self) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.send(FollowerMsg::Read {
                query: Query::Digest,
                read_index: 0,
                reply,
            });
            assert!(matches!(
                answer.blocking_recv().expect("answered"),
                Ok(Ok(QueryReply::Digest(_)))
            ));
        }

        /// Reads (barriers) until the writer has taken installs that `done` accepts,
        /// at most `reads` of them: the installs' LSNs, in order.
        fn installs_after_reads(&self, reads: usize, done: impl Fn(&[u64]) -> bool) -> Vec<u64> {
            let mut lsns = Vec::new();
            for _ in 0..reads {
                self.barrier();
                lsns.extend(self.take_installs());
                if done(&lsns) {
                    break;
                }
            }
            lsns
        }

        /// The writer takes what its queue holds: the installs' LSNs.
        fn take_installs(&self) -> Vec<u64> {
            let mut lsns = Vec::new();
            while let Ok(request) = self.writer_queue.try_recv() {
                if let Request::InstallSnapshot { lsn, .. } = request {
                    lsns.push(lsn);
                }
            }
            lsns
        }

        fn stop(self) {
            self.send(FollowerMsg::Stop);
            self.thread.join().expect("the follower did not panic");
        }
    }

    /// ReadIndex: a read whose index is past what the follower applied is not
    /// answered from the state it has; it waits, and is answered once the records
    /// up to its index are applied, with the state they make.
    #[test]
    fn a_read_ahead_of_the_follower_waits_for_the_records_up_to_its_index() {
        let follower = start();
        let records = records(3);
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        follower.send(FollowerMsg::Read {
            query: Query::Digest,
            read_index: records[2].0,
            reply,
        });
        follower.barrier();
        assert!(answer.try_recv().is_err(), "answered before its records");
        follower.send(FollowerMsg::Records(records[..2].to_vec()));
        follower.barrier();
        assert!(answer.try_recv().is_err(), "answered one record short");
        follower.send(FollowerMsg::Records(records[2..].to_vec()));
        follower.barrier();
        let mut expected = State::new();
        for (_, bytes) in &records {
            let record = codec::decode_record(bytes).expect("decodes");
            expected.apply(&record.command, None, record.now_ms, &mut Vec::new());
        }
        match answer.try_recv() {
            Ok(Ok(Ok(QueryReply::Digest(digest)))) => assert_eq!(digest, expected.digest()),
            other => panic!("not answered with the digest: {other:?}"),
        }
        follower.stop();
    }

    /// A follower with one record that was asked for a snapshot of it: encoded, and
    /// refused by the writer's full queue (nothing went out). The record's LSN.
    fn refused_request_of_one_record() -> (Running, u64) {
        let follower = start();
        let records = records(1);
        follower.send(FollowerMsg::Records(records.clone()));
        follower.send(FollowerMsg::Snapshot { upto: records[0].0 });
        follower.barrier();
        assert_eq!(follower.take_installs(), Vec::<u64>::new());
        (follower, records[0].0)
    }

    /// A request taken while an older snapshot waited for room in the writer's
    /// queue is encoded once that one went out, without a new record to wake the
    /// follower (an idle engine): the next message it takes (here a read) offers
    /// the older one, then encodes the request.
    #[test]
    fn a_request_behind_a_refused_install_is_encoded_once_that_one_goes_out() {
        let follower = start();
        let records = records(3);
        let (first, last) = (records[0].0, records[2].0);
        follower.send(FollowerMsg::Records(records[..1].to_vec()));
        follower.send(FollowerMsg::Snapshot { upto: first });
        follower.send(FollowerMsg::Records(records[1..].to_vec()));
        follower.send(FollowerMsg::Snapshot { upto: last });
        follower.barrier();
        // Full all along: nothing went out yet. Now the writer takes its queue.
        assert_eq!(follower.take_installs(), Vec::<u64>::new());
        let installs = follower.installs_after_reads(100, |lsns| lsns.contains(&last));
        assert_eq!(installs, vec![first, last]);
        follower.stop();
    }

    /// Reads arriving faster than the retry's wait do not keep a refused snapshot
    /// from the writer: each message the follower takes offers it.
    #[test]
    fn reads_do_not_keep_a_refused_snapshot_from_the_writer() {
        let (follower, lsn) = refused_request_of_one_record();
        // Reads a few microseconds apart, far under the retry's wait.
        let installs = follower.installs_after_reads(100, |lsns| !lsns.is_empty());
        assert_eq!(installs, vec![lsn]);
        follower.stop();
    }

    /// A request the snapshot just encoded covers (a periodic one, at the same LSN)
    /// is answered by that one, not encoded again; after the writer failed to
    /// install it, the same request is encoded afresh.
    #[test]
    fn a_request_the_last_snapshot_covers_is_not_encoded_again() {
        let follower = start();
        assert!(matches!(
            follower.writer_queue.try_recv(),
            Ok(Request::Shutdown)
        ));
        let records = records(1);
        let lsn = records[0].0;
        follower
            .shared
            .snapshot_wanted
            .store(true, Ordering::Release);
        follower.send(FollowerMsg::Records(records));
        follower.barrier();
        assert_eq!(follower.take_installs(), vec![lsn], "the periodic one");
        follower.send(FollowerMsg::Snapshot { upto: lsn });
        follower.barrier();
        assert_eq!(follower.take_installs(), Vec::<u64>::new(), "encoded twice");
        follower.send(FollowerMsg::InstallFailed);
        follower.send(FollowerMsg::Snapshot { upto: lsn });
        follower.barrier();
        assert_eq!(
            follower.take_installs(),
            vec![lsn],
            "after a failed install"
        );
        follower.stop();
    }

    /// The retry's wait is a bound, not the only way out: with no message at all,
    /// a refused snapshot goes out once the queue has room.
    #[test]
    fn a_refused_snapshot_goes_out_on_its_own_once_there_is_room() {
        let (follower, _) = refused_request_of_one_record();
        let install = follower
            .writer_queue
            .recv_timeout(Duration::from_secs(30))
            .expect("offered again within the deadline");
        assert!(matches!(install, Request::InstallSnapshot { .. }));
        follower.stop();
    }
}
