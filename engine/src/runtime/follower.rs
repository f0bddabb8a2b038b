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
    Stop,
}

/// How long a snapshot the writer's full queue refused waits before it is offered
/// again (when no record comes first).
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
}

impl Follower {
    pub(super) fn run(mut self) {
        loop {
            let msg = if self.unsent.is_some() {
                match self.rx.recv_timeout(INSTALL_RETRY) {
                    Ok(msg) => msg,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.offer_unsent();
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
            match msg {
                FollowerMsg::Records(records) => {
                    for (lsn, bytes) in records {
                        self.apply(lsn, &bytes);
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
                }
                FollowerMsg::Snapshot { upto } => {
                    self.requested_upto = Some(self.requested_upto.unwrap_or(0).max(upto));
                    self.maybe_snapshot();
                }
                FollowerMsg::Stop => break,
            }
        }
        // Reads still waiting (or queued) are dropped: their tickets say ShuttingDown.
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
