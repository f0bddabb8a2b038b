//! Events to downstream over NATS JetStream (`--events-to`): every event of the
//! feed, as the JSON `/v1/events` serves, on `surge.events.<type>` in the stream
//! `SURGE_EVENTS`, message id = the event's seq.
//!
//! Publishing resumes after the stream's last message (its `Surge-Seq` header), so
//! a restart leaves no gap and no duplicate: the feed is rebuilt from the snapshot
//! and the log with the same seqs, and JetStream drops a repeated message id inside
//! its duplicate window besides. Events older than what the feed keeps in memory
//! (`events_kept`) cannot be sent again; a gap is logged.
//!
//! Only a leader publishes: a standby started with `--events-to` waits, and once
//! promoted resumes after the stream's last event, which its old leader published;
//! a fenced node stops. So the leader and its standby can be started alike.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use surge_engine::{EngineHandle, Role};
use tokio::sync::watch;

pub const EVENTS_STREAM: &str = "SURGE_EVENTS";
pub const EVENTS_SUBJECTS: &str = "surge.events.>";
const HDR_SEQ: &str = "Surge-Seq";
/// Events published before their acknowledgements are awaited.
const EVENTS_PER_ROUND: usize = 512;
/// How often a standby looks whether it was promoted.
const ROLE_POLL: Duration = Duration::from_millis(200);

/// Publish the engine's events until `stop` turns true; reconnects after failures.
pub async fn publish_events(
    js: jetstream::Context,
    replicas: usize,
    engine: EngineHandle,
    stop: watch::Receiver<bool>,
) {
    crate::replication::retry_until_stopped("events to SURGE_EVENTS", stop, || {
        publish_from_stream_end(&js, replicas, &engine)
    })
    .await;
}

async fn publish_from_stream_end(
    js: &jetstream::Context,
    replicas: usize,
    engine: &EngineHandle,
) -> Result<(), String> {
    loop {
        match engine.role() {
            Role::Leader => break,
            Role::Standby => tokio::time::sleep(ROLE_POLL).await,
            // Deposed: a newer leader publishes.
            Role::Fenced => return Ok(()),
        }
    }
    let stream = js
        .get_or_create_stream(stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![EVENTS_SUBJECTS.into()],
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {EVENTS_STREAM}: {e}"))?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    let mut after = match info.state.last_sequence {
        0 => 0,
        last => stream
            .get_raw_message(last)
            .await
            .map_err(|e| format!("stream message {last}: {e}"))?
            .headers
            .get(HDR_SEQ)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0),
    };
    let log = engine.events();
    loop {
        let page = log.read_after(after, EVENTS_PER_ROUND);
        if page.truncated {
            tracing::error!(
                after,
                "events after seq {after} were dropped from memory before they were \
                 published to {EVENTS_STREAM}: downstream misses them"
            );
        }
        if engine.role() != Role::Leader {
            // Fenced: what it holds past the stream is not the newer leader's.
            return Ok(());
        }
        if page.events.is_empty() {
            log.wait_after(after).await;
            continue;
        }
        let mut acks = Vec::with_capacity(page.events.len());
        for event in &page.events {
            let body = crate::events::event_json(log, event).to_string();
            let subject = format!("surge.events.{}", event.kind.type_name());
            let message = jetstream::message::PublishMessage::build()
                .payload(body.into())
                .message_id(event.seq.to_string())
                .header(HDR_SEQ, event.seq.to_string().as_str());
            acks.push(
                js.send_publish(subject, message)
                    .await
                    .map_err(|e| format!("publish event {}: {e}", event.seq))?,
            );
        }
        for ack in acks {
            ack.await
                .map_err(|e| format!("event acknowledgement: {e}"))?;
        }
        after = page.next;
    }
}

/// The JetStream context for events: its own connection, so a slow consumer of
/// the log never holds events back.
pub async fn connect(url: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        // Back within a second of the server's return, not the client's default.
        .reconnect_delay_callback(crate::replication::reconnect_delay)
        .connect(crate::replication::server_list(url))
        .await?;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    Ok(js)
}
