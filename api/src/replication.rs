//! Replication over NATS JetStream (issue 13): the leader's log in the stream
//! `SURGE_LOG`, a standby that follows it, promotion with a fence.
//!
//! - **Messages.** One message per publish of up to [`MESSAGE_BYTES_MAX`] bytes of
//!   records, each record framed as `lsn u64 LE, len u32 LE, bytes` (the record as
//!   the WAL holds it). Headers: `Nats-Msg-Id` = the first LSN (JetStream drops a
//!   repeat inside its duplicate window), `Surge-Node` = the publishing node's id,
//!   `Surge-Last-Lsn` = the last LSN the message carries. A fence is a message
//!   without records.
//! - **Fencing.** Every publish states `Nats-Expected-Last-Sequence`, so the stream
//!   takes a node's message only if nothing was appended since that node's last.
//!   Promotion appends a fence. A deposed leader's next publish is refused, and so
//!   is every later one: at start (and after any refusal) a leader reads the
//!   stream's last message and is fenced unless that message is its own. The node
//!   id is kept in the data dir (`REPLICA_NODE`), so a restart cannot unfence it.
//! - **The standby** reads the stream with an ordered consumer from the first
//!   message after what its own log holds (found by binary search on
//!   `Surge-Last-Lsn`) and hands the records to the engine
//!   ([`EngineHandle::replicate`]), which logs them in its own WAL.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, context, stream};
use futures_util::StreamExt;
use surge_engine::{EngineHandle, LogPublisher, PublishError};
use tokio::sync::{Mutex, watch};

pub const LOG_STREAM: &str = "SURGE_LOG";
pub const LOG_SUBJECT: &str = "surge.log";
/// The leader's durable LSN, on a plain subject every [`HEARTBEAT_EVERY`]: a
/// promoted standby reports how much of it the stream never got (`sync` mode).
pub const HEARTBEAT_SUBJECT: &str = "surge.leader.durable";
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
const HDR_NODE: &str = "Surge-Node";
const HDR_LAST_LSN: &str = "Surge-Last-Lsn";
/// Records per message, in bytes: under the server's default 1 MiB payload limit.
pub const MESSAGE_BYTES_MAX: usize = 768 << 10;
/// How long a publish or a stream request may take before the log counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const NODE_FILE: &str = "REPLICA_NODE";
/// Written (`leader`) before a node first publishes its log: such a data dir may
/// hold records the stream never got, so it must not become a standby's.
const ROLE_FILE: &str = "REPLICA_ROLE";
/// How often a standby following the stream asks where it ends: for its lag, and to
/// notice a feed that stalled (a consumer the server lost in a restart is found out
/// by the client only after some 15 s of retries).
const STREAM_CHECK_EVERY: Duration = Duration::from_secs(1);
/// A feed that delivered nothing for this long while the stream holds messages the
/// standby has not applied is rebuilt.
const FEED_STALLED_AFTER: Duration = Duration::from_secs(3);
/// Stream checks that may fail in a row (a lost answer, a server restarting)
/// before the feed is rebuilt; the lag then tells the silence meanwhile.
const STREAM_CHECKS_FAILED_MAX: u32 = 3;
/// A standby that has not heard from the stream for this long (a check every
/// [`STREAM_CHECK_EVERY`], each given [`REQUEST_TIMEOUT`]) reports its view as old as
/// that silence: it cannot know what it misses.
const STREAM_SILENT_AFTER_MS: u64 = 5_000;
/// Attempts at catching up and fencing before a promotion gives up (another node
/// keeps appending: two promotions at once, or the old leader is alive).
const PROMOTE_ATTEMPTS: usize = 20;
/// How long a promotion's answer waits, after the fence, for the publish stage to
/// open writes (`replicated` mode: it resumes the stream first). Past it the node
/// leads with writes refused until the stream is back, and `/readyz` says so.
const PROMOTE_WRITABLE_WAIT: Duration = Duration::from_secs(5);
/// Messages a fenced node walks back to find its own last one
/// ([`NatsLink::own_records_through`]).
const OWN_RECORDS_SEARCH_MAX: usize = 100_000;
/// How long that search may take before the node counts its publication unknown.
const OWN_RECORDS_SEARCH_WAIT: Duration = Duration::from_secs(10);
/// How long a promotion goes on trying to fence, past [`PROMOTE_ATTEMPTS`], while
/// each attempt loses the race to a leader still publishing.
const PROMOTE_FENCE_RACE_WAIT: Duration = Duration::from_secs(5);
/// How long a promotion waits for the stream's end before it fences anything: a
/// stream out of reach refuses the promotion at once (it answered 503 after the
/// request timeout, then went on in the background and deposed the leader when the
/// stream came back, while `/readyz` said `standby`).
const PROMOTE_REACH_WAIT: Duration = Duration::from_secs(2);

/// A connection to the NATS server and this node's identity in the stream.
pub struct NatsLink {
    js: jetstream::Context,
    client: async_nats::Client,
    node: u64,
    replicas: usize,
    rt: tokio::runtime::Handle,
    data_dir: std::path::PathBuf,
}

impl NatsLink {
    /// Connect (in the background when the server is unreachable now: requests then
    /// fail until it is back) as the node whose id the data dir keeps.
    pub async fn connect(url: &str, replicas: usize, data_dir: &Path) -> anyhow::Result<NatsLink> {
        let node = node_id(data_dir)?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            // Back within a second of the server's return, not the client's
            // default of several.
            .reconnect_delay_callback(reconnect_delay)
            .connection_timeout(REQUEST_TIMEOUT)
            .connect(server_list(url))
            .await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        Ok(NatsLink {
            js,
            client,
            node,
            replicas,
            rt: tokio::runtime::Handle::current(),
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Note in the data dir that this node publishes its log (before it does).
    pub fn mark_leader(&self) -> std::io::Result<()> {
        write_synced(&self.data_dir, ROLE_FILE, "leader\n")
    }

    /// Refuse a data dir that a leader wrote: its log may end in records that were
    /// never published, and the stream's records at those LSNs differ from them.
    pub fn check_standby_dir(data_dir: &Path) -> anyhow::Result<()> {
        match std::fs::read_to_string(data_dir.join(ROLE_FILE)) {
            Ok(role) if role.trim() == "leader" => Err(anyhow::anyhow!(
                "{} was a leader's data dir: its log may hold records the stream never \
                 got; start the standby from an empty data dir",
                data_dir.display()
            )),
            _ => Ok(()),
        }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    async fn log_stream(&self) -> Result<stream::Stream, String> {
        self.js
            .get_or_create_stream(stream::Config {
                name: LOG_STREAM.into(),
                subjects: vec![LOG_SUBJECT.into()],
                num_replicas: self.replicas,
                duplicate_window: Duration::from_secs(120),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("stream {LOG_STREAM}: {e}"))
    }

    /// The stream's last sequence and the last LSN and node its last message names.
    async fn log_end(&self) -> Result<LogEnd, String> {
        log_end_of(&self.log_stream().await?).await
    }

    /// The last LSN, at most `lsn`, up to which the stream holds this node's own
    /// records (`None`: not found within [`OWN_RECORDS_SEARCH_MAX`] messages). A
    /// node leads once, so its messages are one run, in LSN order; those after its
    /// run that carry LSNs up to `lsn` are the next leader's (at most one per LSN
    /// this node logged past its run), so the walk back from the first message at
    /// or past `lsn` is short.
    async fn own_records_through(&self, lsn: u64) -> Result<Option<u64>, String> {
        let stream = self.log_stream().await?;
        let end = log_end_of(&stream).await?;
        let oldest = stream
            .get_info()
            .await
            .map_err(|e| format!("stream info: {e}"))?
            .state
            .first_sequence;
        let first = first_message_after(&stream, lsn.saturating_sub(1), end.seq).await?;
        let mut seq = first.min(end.seq);
        for _ in 0..OWN_RECORDS_SEARCH_MAX {
            if seq == 0 || seq < oldest {
                // None of its records left in the stream (or none published).
                return Ok(Some(0));
            }
            // The stream is trimmed from its start only: no gap to step over, so a
            // message that cannot be read ends the search (unknown).
            let message = stream
                .get_raw_message(seq)
                .await
                .map_err(|e| format!("stream message {seq}: {e}"))?;
            let last = header_u64(&message.headers, HDR_LAST_LSN).unwrap_or(0);
            // Its own message: records it logged, or its fence, which states the
            // stream's end it had caught up with.
            if header_u64(&message.headers, HDR_NODE) == Some(self.node) {
                return Ok(Some(last.min(lsn)));
            }
            seq -= 1;
        }
        Ok(None)
    }

    /// Publish `records` (possibly none: a fence) as messages stating that the
    /// stream's last sequence is `expected`; answers the new last sequence.
    async fn append(
        &self,
        expected: u64,
        records: &[(u64, Vec<u8>)],
        last_lsn: u64,
    ) -> Result<u64, context::PublishError> {
        let mut acks = Vec::new();
        let mut chunks = chunk_records(records);
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        // Each message expects the one before it to have landed right before.
        for (next_expected, chunk) in (expected..).zip(chunks) {
            let (id, chunk_last) = match (chunk.first(), chunk.last()) {
                (Some((first, _)), Some((last, _))) => (first.to_string(), *last),
                _ => (format!("fence-{:016x}-{expected}", self.node), last_lsn),
            };
            let message = jetstream::message::PublishMessage::build()
                .payload(encode_records(chunk).into())
                .message_id(id)
                .expected_last_sequence(next_expected)
                .header(HDR_NODE, self.node.to_string().as_str())
                .header(HDR_LAST_LSN, chunk_last.to_string().as_str());
            acks.push(self.js.send_publish(LOG_SUBJECT, message).await?);
        }
        let mut seq = expected;
        for ack in acks {
            let ack = ack.await?;
            // A repeated id is answered as a success. Ours is a retry whose answer
            // was lost; another node's under the same id would be the next
            // leader's first records after a fence (they start at the same LSN):
            // this node's were not appended, and it must find itself fenced, not go
            // on after them. The server this was tested on (2.15) judges the
            // expected last sequence first, so that answer does not come; a server
            // that judged the id first would give it.
            if ack.duplicate && !self.holds_own_message(ack.sequence).await {
                return Err(context::PublishError::new(
                    context::PublishErrorKind::WrongLastSequence,
                ));
            }
            seq = ack.sequence;
        }
        Ok(seq)
    }

    /// Whether the stream's message `seq` is this node's (false when unknown).
    async fn holds_own_message(&self, seq: u64) -> bool {
        let Ok(stream) = self.log_stream().await else {
            return false;
        };
        stream
            .get_raw_message(seq)
            .await
            .is_ok_and(|message| header_u64(&message.headers, HDR_NODE) == Some(self.node))
    }
}

/// `nats://a:4222,nats://b:4222`: the servers of a cluster, any of which will do.
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Wait between reconnection attempts: 100 ms more each time, at most a second.
pub fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis((attempts as u64 * 100).min(1_000))
}

/// Where the stream ends.
#[derive(Debug, Clone, Copy)]
struct LogEnd {
    seq: u64,
    lsn: u64,
    node: Option<u64>,
}

/// Where `stream` ends: its last sequence and the last LSN and node its last message
/// names.
async fn log_end_of(stream: &stream::Stream) -> Result<LogEnd, String> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    let seq = info.state.last_sequence;
    if seq == 0 {
        return Ok(LogEnd {
            seq: 0,
            lsn: 0,
            node: None,
        });
    }
    let message = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| format!("stream message {seq}: {e}"))?;
    Ok(LogEnd {
        seq,
        lsn: header_u64(&message.headers, HDR_LAST_LSN).unwrap_or(0),
        node: header_u64(&message.headers, HDR_NODE),
    })
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

/// Records in groups of at most [`MESSAGE_BYTES_MAX`] encoded bytes (a record
/// larger than that goes alone: the WAL's record limit is below the server's).
fn chunk_records(records: &[(u64, Vec<u8>)]) -> Vec<&[(u64, Vec<u8>)]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, record)) in records.iter().enumerate() {
        let framed = record.len() + 12;
        if i > start && bytes + framed > MESSAGE_BYTES_MAX {
            chunks.push(&records[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += framed;
    }
    if start < records.len() {
        chunks.push(&records[start..]);
    }
    chunks
}

pub fn encode_records(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|(_, r)| r.len() + 12).sum());
    for (lsn, record) in records {
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

pub fn decode_records(mut bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 12 {
            return Err(format!(
                "{} bytes left, less than a frame header",
                bytes.len()
            ));
        }
        let lsn = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let Some(record) = bytes.get(12..12 + len) else {
            return Err(format!("record {lsn} runs past the message"));
        };
        records.push((lsn, record.to_vec()));
        bytes = &bytes[12 + len..];
    }
    Ok(records)
}

/// This node's id in the stream: read from the data dir, or made once and kept
/// there (written whole and synced, so a crash leaves it or nothing).
fn node_id(data_dir: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join(NODE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return u64::from_str_radix(text.trim(), 16)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
    let id = random_u64();
    write_synced(data_dir, NODE_FILE, &format!("{id:016x}\n"))?;
    Ok(id)
}

/// Write a small file whole: temp, fsync, rename, directory fsync.
fn write_synced(data_dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(name))?;
    std::fs::File::open(data_dir)?.sync_all()
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    // Never 0: a message without a node header reads as 0.
    hasher.finish().max(1)
}

/// The engine's [`LogPublisher`] over the stream. Runs on the engine's publish
/// thread, which blocks on the async calls.
pub struct NatsPublisher {
    link: Arc<NatsLink>,
    /// The stream's last sequence as this node left it (`None`: ask first).
    last_seq: Option<u64>,
}

impl NatsPublisher {
    pub fn new(link: Arc<NatsLink>, last_seq: Option<u64>) -> NatsPublisher {
        NatsPublisher { link, last_seq }
    }

    async fn resume_async(&mut self) -> Result<u64, PublishError> {
        let end = self
            .link
            .log_end()
            .await
            .map_err(PublishError::Unavailable)?;
        match end.node {
            Some(node) if node != self.link.node => Err(PublishError::Fenced(format!(
                "the stream's last message ({}) is node {node:016x}'s, not this node's \
                 ({:016x})",
                end.seq, self.link.node
            ))),
            _ => {
                self.last_seq = Some(end.seq);
                Ok(end.lsn)
            }
        }
    }

    async fn publish_async(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), PublishError> {
        let expected = match self.last_seq {
            Some(seq) => seq,
            None => {
                self.resume_async().await?;
                return Err(PublishError::Unavailable(
                    "resynchronised with the stream: publish again".into(),
                ));
            }
        };
        let last_lsn = records.last().map_or(0, |(lsn, _)| *lsn);
        match self.link.append(expected, records, last_lsn).await {
            Ok(seq) => {
                self.last_seq = Some(seq);
                Ok(())
            }
            Err(e) => {
                self.last_seq = None;
                if e.kind() == context::PublishErrorKind::WrongLastSequence {
                    // Someone appended: a fence (we are deposed) or our own message
                    // whose acknowledgement was lost. Only the stream can say.
                    self.resume_async().await?;
                }
                Err(PublishError::Unavailable(format!("publish: {e}")))
            }
        }
    }
}

impl LogPublisher for NatsPublisher {
    fn resume(&mut self) -> Result<u64, PublishError> {
        let rt = self.link.rt.clone();
        rt.block_on(self.resume_async())
    }

    fn published_through(&mut self, lsn: u64) -> Option<u64> {
        let rt = self.link.rt.clone();
        // The timer is made inside the runtime: this thread is the engine's own.
        let search = async {
            tokio::time::timeout(OWN_RECORDS_SEARCH_WAIT, self.link.own_records_through(lsn))
                .await
                .map_err(|_| format!("no answer within {OWN_RECORDS_SEARCH_WAIT:?}"))?
        };
        rt.block_on(search).unwrap_or_else(|e| {
            tracing::warn!("how far the stream holds this node's records: {e}");
            None
        })
    }

    fn publish(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), PublishError> {
        let rt = self.link.rt.clone();
        rt.block_on(self.publish_async(records))
    }
}

/// What `/readyz`, `/metrics` and promotion read about replication.
#[derive(Default)]
pub struct ReplicaStatus {
    /// The last LSN this standby applied (and logged).
    pub applied_lsn: AtomicU64,
    /// The stream sequence of the last message applied.
    pub applied_seq: AtomicU64,
    /// The last LSN the stream holds, as last seen.
    pub stream_lsn: AtomicU64,
    /// When the last message applied was published (ms since the epoch).
    pub applied_published_ms: AtomicU64,
    /// When this process began to follow (ms since the epoch): while nothing was
    /// applied yet, the view is at least that old.
    pub following_since_ms: AtomicU64,
    /// The highest durable LSN the current leader announced (`sync` mode: may be
    /// ahead of the stream).
    pub leader_durable_lsn: AtomicU64,
    /// When the standby last heard from the stream (a message, or where it ends; ms
    /// since the epoch; 0: not yet, counted from `following_since_ms`).
    pub stream_heard_ms: AtomicU64,
}

impl ReplicaStatus {
    pub fn lag_lsn(&self) -> u64 {
        self.stream_lsn
            .load(Ordering::Acquire)
            .saturating_sub(self.applied_lsn.load(Ordering::Acquire))
    }

    /// How old the standby's view is when it is behind (0 when caught up): since
    /// the last message it applied was published, or, before it applied any, since
    /// it began to follow (not since 1970). A standby that has not heard from the
    /// stream for [`STREAM_SILENT_AFTER_MS`] cannot know what it misses: its view is
    /// then at least as old as that silence, caught up or not.
    pub fn lag_seconds(&self, now_ms: u64) -> f64 {
        let since_ms = self.following_since_ms.load(Ordering::Acquire);
        let behind_ms = if self.lag_lsn() == 0 {
            0
        } else {
            let at = self
                .applied_published_ms
                .load(Ordering::Acquire)
                .max(since_ms);
            now_ms.saturating_sub(at)
        };
        let heard = self.stream_heard_ms.load(Ordering::Acquire).max(since_ms);
        let silent_ms = now_ms.saturating_sub(heard);
        let lag_ms = if silent_ms >= STREAM_SILENT_AFTER_MS {
            behind_ms.max(silent_ms)
        } else {
            behind_ms
        };
        lag_ms as f64 / 1e3
    }

    fn heard_from_the_stream(&self) {
        self.stream_heard_ms
            .fetch_max(unix_now_ms(), Ordering::AcqRel);
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A standby: follows the stream into the engine until promoted.
pub struct Standby {
    link: Arc<NatsLink>,
    engine: EngineHandle,
    pub status: Arc<ReplicaStatus>,
    /// The follow task and its stop switch, while following.
    follower: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

/// What a promotion did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Promotion {
    /// The last LSN the new leader holds (everything the stream had).
    pub lsn: u64,
    /// The stream sequence of the fence.
    pub fence_sequence: u64,
    /// LSNs the old leader announced durable that the stream never got (`sync`
    /// mode may lose them; `replicated` never acknowledged them). A lower bound: the
    /// announcements go over the stream, so what the old leader acknowledged while
    /// cut off from it is not counted.
    pub lost_lsns: u64,
}

impl Standby {
    pub fn start(link: Arc<NatsLink>, engine: EngineHandle) -> Arc<Standby> {
        let status = Arc::new(ReplicaStatus::default());
        status
            .following_since_ms
            .store(unix_now_ms(), Ordering::Release);
        let applied = engine.stats().durable_lsn.load(Ordering::Acquire);
        status.applied_lsn.store(applied, Ordering::Release);
        let standby = Arc::new(Standby {
            link,
            engine,
            status,
            follower: Mutex::new(None),
        });
        if let Ok(mut follower) = standby.follower.try_lock() {
            *follower = Some(Arc::clone(&standby).spawn_follower());
        }
        tokio::spawn(watch_heartbeats(
            Arc::clone(&standby.link),
            Arc::clone(&standby.status),
        ));
        standby
    }

    fn spawn_follower(self: Arc<Self>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop) = watch::channel(false);
        (stop_tx, tokio::spawn(self.follow(stop)))
    }

    /// Follow the stream until stopped; reconnects after failures.
    async fn follow(self: Arc<Self>, stop: watch::Receiver<bool>) {
        retry_until_stopped("standby: following SURGE_LOG", stop, || {
            self.follow_once(None)
        })
        .await;
    }

    /// Apply the stream's messages after what this node holds, up to and
    /// including sequence `through` (`None`: forever). The stream's end is
    /// refreshed as messages come and every [`STREAM_CHECK_EVERY`], for the lag;
    /// a feed that delivers nothing for [`FEED_STALLED_AFTER`] while the stream
    /// holds more is an error (the caller follows afresh).
    async fn follow_once(&self, through: Option<u64>) -> Result<(), String> {
        let stream = self.link.log_stream().await?;
        let end = log_end_of(&stream).await?;
        self.status.stream_lsn.fetch_max(end.lsn, Ordering::AcqRel);
        self.status.heard_from_the_stream();
        let applied = self.status.applied_lsn.load(Ordering::Acquire);
        if through.is_some_and(|t| t <= self.status.applied_seq.load(Ordering::Acquire)) {
            return Ok(());
        }
        let start = first_message_after(&stream, applied, end.seq).await?;
        if through.is_some_and(|t| start > t) {
            return Ok(());
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: LOG_SUBJECT.into(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("messages: {e}"))?;
        let mut check = tokio::time::interval(STREAM_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when the stream is known to hold more than this node and no message
        // came.
        let mut behind_since = None;
        // The stream sequence through which this node holds every record.
        let mut held_through_seq = start.saturating_sub(1);
        // Stream checks failed in a row: one lost answer does not tear the feed down.
        let mut checks_failed = 0;
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = check.tick() => {
                    let end = match log_end_of(&stream).await {
                        Ok(end) => {
                            checks_failed = 0;
                            end
                        }
                        Err(e) => {
                            checks_failed += 1;
                            if checks_failed >= STREAM_CHECKS_FAILED_MAX {
                                return Err(format!("{checks_failed} stream checks failed in a row: {e}"));
                            }
                            continue;
                        }
                    };
                    self.status.stream_lsn.fetch_max(end.lsn, Ordering::AcqRel);
                    self.status.heard_from_the_stream();
                    if end.seq <= held_through_seq {
                        behind_since = None;
                        continue;
                    }
                    let stalled = behind_since.get_or_insert_with(tokio::time::Instant::now).elapsed();
                    if stalled >= FEED_STALLED_AFTER {
                        return Err(format!(
                            "no message for {stalled:?} while the stream holds up to {} and \
                             this standby up to {held_through_seq}",
                            end.seq
                        ));
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
            let message = message.map_err(|e| format!("message: {e}"))?;
            behind_since = None;
            checks_failed = 0;
            self.status.heard_from_the_stream();
            let (seq, published_ms) = {
                let info = message.info().map_err(|e| format!("message info: {e}"))?;
                (
                    info.stream_sequence,
                    (info.published.unix_timestamp_nanos() / 1_000_000) as u64,
                )
            };
            let headers = message.headers.clone().unwrap_or_default();
            let last_lsn = header_u64(&headers, HDR_LAST_LSN).unwrap_or(0);
            self.status.stream_lsn.fetch_max(last_lsn, Ordering::AcqRel);
            let records = decode_records(&message.payload)
                .map_err(|e| format!("stream message {seq}: {e}"))?;
            if !records.is_empty() {
                let applied = self
                    .engine
                    .replicate(records)
                    .map_err(|e| format!("engine: {e}"))?
                    .await
                    .map_err(|e| format!("applying stream message {seq}: {e}"))?;
                self.status.applied_lsn.store(applied, Ordering::Release);
            }
            self.status.applied_seq.store(seq, Ordering::Release);
            held_through_seq = seq;
            self.status
                .applied_published_ms
                .store(published_ms, Ordering::Release);
            if through.is_some_and(|t| seq >= t) {
                return Ok(());
            }
        }
        Err("the stream's message feed ended".into())
    }

    /// Catch up with the stream, fence it, and hand the engine a publisher: from
    /// now on this node is the leader.
    /// A promotion that fails leaves this node a standby, following again.
    pub async fn promote(self: &Arc<Self>) -> Result<Promotion, PromoteError> {
        // On a task of its own: the request's timeout drops the caller's future, and
        // a promotion dropped between stopping the follow task and restarting it left
        // the standby following nothing, for good. It runs to its end either way.
        let this = Arc::clone(self);
        tokio::spawn(async move { this.promote_to_the_end().await })
            .await
            .map_err(|e| PromoteError::Unavailable(format!("the promotion task failed: {e}")))?
    }

    async fn promote_to_the_end(self: Arc<Self>) -> Result<Promotion, PromoteError> {
        let Ok(mut follower) = self.follower.try_lock() else {
            return Err(PromoteError::NotNow(
                "a promotion of this node is already under way".into(),
            ));
        };
        if self.engine.role() != surge_engine::Role::Standby {
            // Another promotion finished just before this one.
            return Err(PromoteError::NotNow(
                "this node is no longer a standby".into(),
            ));
        }
        // What would make the promotion fail after its fence is checked before it:
        // a fence without a new leader leaves no node taking writes (an outside
        // probe: a standby on a full disk fenced a healthy leader, then could not
        // apply what came before the fence).
        if let Some(problem) = self.engine.storage_problem() {
            return Err(PromoteError::Unavailable(format!(
                "this standby cannot write ({problem}): promoting it would fence the \
                 leader and leave no node taking writes; nothing was fenced"
            )));
        }
        match tokio::time::timeout(PROMOTE_REACH_WAIT, self.link.log_end()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(PromoteError::Unavailable(format!(
                    "the replicated log cannot be read ({e}); nothing was fenced"
                )));
            }
            Err(_) => {
                return Err(PromoteError::Unavailable(format!(
                    "the replicated log did not answer within {PROMOTE_REACH_WAIT:?}; \
                     nothing was fenced"
                )));
            }
        }
        if let Some((stop, task)) = follower.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let promoted = self
            .catch_up_and_fence()
            .await
            .map_err(PromoteError::Unavailable);
        if promoted.is_err() {
            *follower = Some(Arc::clone(&self).spawn_follower());
        }
        promoted
    }

    /// Fence the stream at its end, then catch up with everything before the
    /// fence, then lead. Fencing first: catching up first (it used to) takes a
    /// consumer's set-up and the messages, and a leader still writing moved the
    /// stream's end meanwhile, so under load every attempt's fence was refused
    /// (an outside probe: 20 of 20 at 1,800 writes/s). Now only the two requests
    /// between reading the end and appending race the leader's publishes.
    async fn catch_up_and_fence(&self) -> Result<Promotion, String> {
        let mut last_error = String::new();
        let mut fenced = None;
        let started = tokio::time::Instant::now();
        let mut attempts = 0;
        // Past the attempts, a race lost to a leader still publishing is tried
        // again for a while: on a busy box each round trip is slow, and a leader
        // under load publishes every millisecond or two (CI lost 20 of 20 once).
        let mut raced = false;
        while attempts < PROMOTE_ATTEMPTS || (raced && started.elapsed() < PROMOTE_FENCE_RACE_WAIT)
        {
            attempts += 1;
            raced = false;
            let end = match self.link.log_end().await {
                Ok(end) => end,
                Err(e) => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // The fence states the last LSN before it, as every message does.
            match self.link.append(end.seq, &[], end.lsn).await {
                Ok(fence_sequence) => {
                    fenced = Some((end, fence_sequence));
                    break;
                }
                Err(e) if e.kind() == context::PublishErrorKind::WrongLastSequence => {
                    last_error = "the stream moved on while fencing".into();
                    raced = true;
                }
                Err(e) => last_error = format!("fence: {e}"),
            }
        }
        let Some((end, fence_sequence)) = fenced else {
            return Err(format!(
                "could not fence the stream in {attempts} attempts over {:?}: {last_error}",
                started.elapsed()
            ));
        };
        // Nothing can be added before the fence now: take all of it.
        let mut caught_up = false;
        for _ in 0..PROMOTE_ATTEMPTS {
            match self.follow_once(Some(end.seq)).await {
                Ok(()) => {
                    caught_up = true;
                    break;
                }
                Err(e) => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let applied = self.status.applied_lsn.load(Ordering::Acquire);
        if !caught_up || applied < end.lsn {
            // The stream is fenced (the old leader takes no write now) and this
            // node is still a standby: a promotion asked again fences after this
            // fence and catches up the same way.
            return Err(format!(
                "fenced the stream at sequence {fence_sequence} but could not take \
                 everything before it (applied LSN {applied} of {}): {last_error}; \
                 promote again",
                end.lsn
            ));
        }
        self.link
            .mark_leader()
            .map_err(|e| format!("{ROLE_FILE}: {e}"))?;
        let publisher = NatsPublisher::new(Arc::clone(&self.link), Some(fence_sequence));
        let lsn = self
            .engine
            .promote(Box::new(publisher))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // Answer once writes are taken: in `replicated` mode the publish stage opens
        // them when it has resumed the stream, a moment after the fence. A stream
        // gone again meanwhile leaves them refused (`/readyz` says why); the
        // promotion itself is done either way.
        let _ =
            tokio::time::timeout(PROMOTE_WRITABLE_WAIT, self.engine.wait_until_writable()).await;
        let announced = self.status.leader_durable_lsn.load(Ordering::Acquire);
        let promotion = Promotion {
            lsn,
            fence_sequence,
            lost_lsns: announced.saturating_sub(lsn),
        };
        tracing::warn!(?promotion, "promoted to leader");
        Ok(promotion)
    }
}

/// Why a promotion did not happen.
#[derive(Debug)]
pub enum PromoteError {
    /// This node cannot be promoted now (not a standby, or a promotion of it is
    /// under way): 409 `invalid_transition`. Nothing was fenced.
    NotNow(String),
    /// This standby cannot write, the stream cannot be reached, or the fence or
    /// the catch-up after it failed: 503 `storage_unavailable`. The message says
    /// whether the stream was fenced.
    Unavailable(String),
}

impl std::fmt::Display for PromoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromoteError::NotNow(why) | PromoteError::Unavailable(why) => f.write_str(why),
        }
    }
}

/// Run `attempt` until it succeeds or `stop` turns true, waiting a little longer
/// after each failure (NATS down, a consumer gone).
pub async fn retry_until_stopped<F, Fut>(
    what: &str,
    mut stop: watch::Receiver<bool>,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut wait = Duration::from_millis(50);
    loop {
        let result = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            result = attempt() => result,
        };
        match result {
            Ok(()) => return,
            Err(e) => tracing::warn!("{what}: {e}; retrying"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// The first stream sequence whose message carries a record after `applied`
/// (`last + 1` when none does): messages are in LSN order, so a binary search
/// on their `Surge-Last-Lsn`.
async fn first_message_after(
    stream: &stream::Stream,
    applied: u64,
    last: u64,
) -> Result<u64, String> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    let (mut low, mut high) = (info.state.first_sequence.max(1), last + 1);
    while low < high {
        let mid = low + (high - low) / 2;
        let lsn = match stream.get_raw_message(mid).await {
            Ok(message) => header_u64(&message.headers, HDR_LAST_LSN).unwrap_or(0),
            // A gap in the sequence (a deleted message): look right of it.
            Err(_) => 0,
        };
        if lsn > applied {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Ok(low)
}

/// Remember the highest durable LSN the leader announces.
async fn watch_heartbeats(link: Arc<NatsLink>, status: Arc<ReplicaStatus>) {
    let Ok(mut beats) = link.client.subscribe(HEARTBEAT_SUBJECT).await else {
        return;
    };
    while let Some(beat) = beats.next().await {
        if let Some(lsn) = std::str::from_utf8(&beat.payload)
            .ok()
            .and_then(|text| text.parse().ok())
        {
            status.leader_durable_lsn.fetch_max(lsn, Ordering::AcqRel);
        }
    }
}

/// A leader announces its durable LSN while it leads.
pub async fn announce_durable(link: Arc<NatsLink>, engine: EngineHandle) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        if engine.role() != surge_engine::Role::Leader {
            continue;
        }
        let lsn = engine.stats().durable_lsn.load(Ordering::Acquire);
        let _ = link
            .client
            .publish(HEARTBEAT_SUBJECT, lsn.to_string().into())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_chunk_under_the_limit() {
        let records: Vec<(u64, Vec<u8>)> = (1..=40)
            .map(|lsn| (lsn * 3, vec![lsn as u8; 50_000]))
            .collect();
        let chunks = chunk_records(&records);
        assert!(chunks.len() > 1);
        let mut again = Vec::new();
        for chunk in chunks {
            let bytes = encode_records(chunk);
            assert!(bytes.len() <= MESSAGE_BYTES_MAX);
            again.extend(decode_records(&bytes).expect("decodes"));
        }
        assert_eq!(again, records);
        assert!(decode_records(&[1, 2, 3]).is_err());
        let mut cut = encode_records(&records[..1]);
        cut.pop();
        assert!(decode_records(&cut).is_err());
    }

    /// A standby that applied nothing yet is as far behind as it has been
    /// following (it used to report the seconds since 1970); then since the last
    /// message it applied was published; caught up, 0.
    #[test]
    fn the_lag_in_seconds_counts_from_what_the_standby_knows() {
        let status = ReplicaStatus::default();
        status
            .following_since_ms
            .store(1_000_000, Ordering::Release);
        status.stream_lsn.store(50, Ordering::Release);
        assert_eq!(status.lag_seconds(1_004_000), 4.0);
        status.applied_lsn.store(20, Ordering::Release);
        status
            .applied_published_ms
            .store(1_003_000, Ordering::Release);
        assert_eq!(status.lag_seconds(1_004_000), 1.0);
        status.applied_lsn.store(50, Ordering::Release);
        assert_eq!(status.lag_seconds(1_004_000), 0.0);
    }

    /// Caught up as far as it knows, a standby that has not heard from the stream
    /// for a while reports that silence as its lag (it reported 0 through an
    /// outage); a silence shorter than a few checks is no lag.
    #[test]
    fn a_standby_that_cannot_hear_the_stream_reports_the_silence() {
        let status = ReplicaStatus::default();
        status
            .following_since_ms
            .store(1_000_000, Ordering::Release);
        status.stream_lsn.store(50, Ordering::Release);
        status.applied_lsn.store(50, Ordering::Release);
        status.stream_heard_ms.store(1_010_000, Ordering::Release);
        let silent = |ms: u64| status.lag_seconds(1_010_000 + ms);
        assert_eq!(silent(STREAM_SILENT_AFTER_MS - 1), 0.0);
        assert_eq!(silent(STREAM_SILENT_AFTER_MS), 5.0);
        assert_eq!(silent(12_000), 12.0);
        // Behind as well: the older of the two.
        status.applied_lsn.store(40, Ordering::Release);
        status
            .applied_published_ms
            .store(1_001_000, Ordering::Release);
        assert_eq!(silent(1_000), 10.0);
        assert_eq!(silent(12_000), 21.0);
    }
}
