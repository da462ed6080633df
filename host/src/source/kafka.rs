//! Kafka source: a member of the consumer group that hands the pipeline batches of raw messages
//! and tells it which partitions it owns.
//!
//! `BaseConsumer` (not the async `StreamConsumer`): it is several times faster for small messages
//! and the ingest loop is a dedicated thread anyway. Auto-commit is off: offsets are committed
//! only after the Iceberg commit that contains the messages (see `pipeline`); the group's
//! committed offsets are for lag tools, the tables say where a partition stands.
//!
//! The consumer group is how admetrics scales: partitions move between members on rebalances
//! (cooperative-sticky by default, so only the partitions that move stop; static membership with
//! `kafka.group_instance_id`, so a restarted member gets its partitions back without waiting for
//! its old session to expire). When the group assigns a partition, the member claims it in the
//! tables (raising its epoch, which fences the previous owner's commits) before reading it, and
//! starts it at the replay point the claim returned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Change, RawMessage, Source, SourceError};
use crate::config::KafkaConfig;
use crate::sink::Claimed;

/// Claims partitions in the tables for this member (see `sink::IcebergSink::claim`).
pub type Claimer = Box<dyn Fn(&[i32]) -> Result<Vec<Claimed>, String> + Send + Sync>;

/// What outlives one consumer instance (see `KafkaSource::rebuild`).
struct Shared {
    claimer: Claimer,
    /// Assignment changes not yet handed to the pipeline, in the order they happened.
    changes: Mutex<Vec<Change>>,
    /// Partitions assigned and not revoked since.
    assigned: Mutex<BTreeSet<i32>>,
    /// Why this member cannot go on (a partition the tables cannot resume), once known.
    fatal: Mutex<Option<String>>,
}

struct GroupMember {
    topic: String,
    shared: Arc<Shared>,
    global_errors: Mutex<Repeats>,
    commits: Mutex<Commits>,
}

/// Offset commits sent to the group coordinator and answered by it. Every commit is sent
/// asynchronously; a "synchronous" one polls until all are answered, within a bound.
#[derive(Default)]
struct Commits {
    sent: u64,
    answered: u64,
    /// The latest answer's error (answers come back in the order the commits were sent).
    last_error: Option<KafkaError>,
}

/// An error logged again within this time is counted, not logged.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Which client errors to log: librdkafka reports a broker that stays down on every poll (20
/// times a second while a consumer closes, ~8 while the ingest loop polls), and each report
/// was a log line. The same error is logged again only after `ERROR_LOG_EVERY`, with the count
/// of those left out.
#[derive(Default)]
struct Repeats(Vec<(RDKafkaErrorCode, Instant, u64)>);

impl Repeats {
    /// `Some(left out since the last one logged)` if this error is to be logged.
    fn admit(&mut self, error: &KafkaError) -> Option<u64> {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        let now = Instant::now();
        let Some((_, at, n)) = self.0.iter_mut().find(|(c, ..)| *c == code) else {
            self.0.push((code, now, 0));
            return Some(0);
        };
        if now.duration_since(*at) < ERROR_LOG_EVERY {
            *n += 1;
            return None;
        }
        *at = now;
        Some(std::mem::take(n))
    }
}

impl ClientContext for GroupMember {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(left_out) = self.global_errors.lock().unwrap().admit(&error) {
            tracing::error!(error = %error, left_out, "librdkafka: {reason}");
        }
    }
}

impl GroupMember {
    /// Claims newly assigned partitions and picks each one's start: the recorded replay point,
    /// or the beginning of a partition the tables have never seen. A recorded position the
    /// partition cannot serve is refused loudly: past its end (the topic was recreated or
    /// restored: the offsets no longer name the same messages), or a replay point below its log
    /// start (retention deleted messages that were never read, or that the state needs).
    fn on_assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> TopicPartitionList {
        let parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        let mut seeded = tpl.clone();
        if parts.is_empty() {
            return seeded;
        }
        let claims = {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match (self.shared.claimer)(&parts) {
                    Ok(c) => break c,
                    Err(e) if attempt < 5 => {
                        tracing::warn!(partitions = ?parts, error = %e, attempt, "claiming partitions failed; retrying");
                        std::thread::sleep(Duration::from_millis(500 * attempt));
                    }
                    Err(e) => {
                        self.fail(format!(
                            "claiming partitions {parts:?} in the tables failed: {e}"
                        ));
                        return TopicPartitionList::new();
                    }
                }
            }
        };
        let mut changes = self.shared.changes.lock().unwrap();
        for c in claims {
            let p = c.partition;
            let start = match c.position {
                None => Offset::Beginning,
                Some(pos) => {
                    match consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10)) {
                        Ok((_, high)) if pos.offset > high => {
                            self.fail(format!(
                                "partition {p} of {:?}: the tables record position {} but the partition ends at {high}: \
                                 the topic was recreated or restored, and its offsets no longer name the messages the tables \
                                 hold. Point admetrics at fresh tables (or another namespace), or give this topic its own \
                                 stream name ([source] stream)",
                                self.topic, pos.offset
                            ));
                            return TopicPartitionList::new();
                        }
                        Ok((low, _)) if pos.replay_from < low => {
                            self.fail(format!(
                                "partition {p} of {:?}: retention removed offsets {}..{low} that a restart needs \
                                 (the tables record position {} and replay point {}): {}. Raise the topic's \
                                 retention above the attribution lookback, or start over with fresh tables",
                                self.topic,
                                pos.replay_from,
                                pos.offset,
                                pos.replay_from,
                                if pos.offset < low {
                                    format!("{} messages were never read", low - pos.offset)
                                } else {
                                    "open windows and touchpoints cannot be rebuilt".to_string()
                                }
                            ));
                            return TopicPartitionList::new();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(partition = p, error = %e,
                            "could not read the partition's offsets to check the recorded position"),
                    }
                    tracing::info!(
                        partition = p,
                        epoch = c.epoch,
                        offset = pos.offset,
                        replay_from = pos.replay_from,
                        "assigned; starting at the replay point recorded in Iceberg"
                    );
                    Offset::Offset(pos.replay_from)
                }
            };
            let _ = seeded.set_partition_offset(&self.topic, p, start);
            self.shared.assigned.lock().unwrap().insert(p);
            changes.push(Change::Assigned(c));
        }
        seeded
    }

    fn fail(&self, why: String) {
        tracing::error!("{why}");
        self.shared.fatal.lock().unwrap().get_or_insert(why);
    }
}

impl ConsumerContext for GroupMember {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        let mut c = self.commits.lock().unwrap();
        c.answered += 1;
        c.last_error = result.err();
    }

    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let seeded = self.on_assign(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(&seeded)
                } else {
                    consumer.assign(&seeded)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut changes = self.shared.changes.lock().unwrap();
                    let mut assigned = self.shared.assigned.lock().unwrap();
                    for e in tpl.elements().iter().filter(|e| e.topic() == self.topic) {
                        assigned.remove(&e.partition());
                        changes.push(Change::Revoked(e.partition()));
                    }
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the partition assignment failed");
        }
    }
}

/// How long a shutdown's synchronous commit waits for the group coordinator's answer.
/// librdkafka's own synchronous commit waits with no limit: a broker that stopped between the
/// daemon's last Iceberg commit and this one kept the daemon from exiting (seen: still running
/// minutes after SIGTERM, its ingest thread in `rd_kafka_commit`).
const SYNC_COMMIT_WITHIN: Duration = Duration::from_secs(5);

/// How long dropping a consumer may take: leaving the group and revoking its partitions, a few
/// milliseconds with the broker up.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A consumer whose close is bounded. rdkafka's `BaseConsumer` closes itself when dropped and
/// polls until librdkafka reports it closed, with no limit: with the broker gone that does not
/// happen (seen: SIGTERM after the broker stopped, and the daemon still running a minute later).
/// Here a close gets `CLOSE_WITHIN`; a consumer not closed by then is left to finish on its own
/// thread (the process is exiting, or `rebuild` has a fresh consumer). Nothing is lost by that:
/// the tables hold the offsets a restart resumes from; the group's are for lag tools.
struct Closing(Option<BaseConsumer<GroupMember>>);

impl std::ops::Deref for Closing {
    type Target = BaseConsumer<GroupMember>;
    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("the consumer is taken only when dropped")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = done_tx.send(());
            });
        if closing.is_ok() && done_rx.recv_timeout(CLOSE_WITHIN).is_err() {
            tracing::warn!(
                within = ?CLOSE_WITHIN,
                "the Kafka consumer did not close (broker unreachable?); not waiting for it: the tables hold the offsets"
            );
        }
    }
}

pub struct KafkaSource {
    consumer: Closing,
    cfg: KafkaConfig,
    shared: Arc<Shared>,
    topic: String,
    /// A message polled in the same call that changed the assignment: handed over first next
    /// time, after the change (it may belong to a partition just assigned).
    stash: Option<OwnedMessage>,
    poll_errors: Repeats,
}

impl KafkaSource {
    /// Joins the group. Each partition the group assigns is first claimed with `claimer`.
    pub fn connect(cfg: &KafkaConfig, claimer: Claimer) -> Result<Self, SourceError> {
        let shared = Arc::new(Shared {
            claimer,
            changes: Mutex::new(Vec::new()),
            assigned: Mutex::new(BTreeSet::new()),
            fatal: Mutex::new(None),
        });
        Ok(KafkaSource {
            consumer: Closing(Some(Self::consumer(cfg, &shared)?)),
            cfg: cfg.clone(),
            shared,
            topic: cfg.topic.clone(),
            stash: None,
            poll_errors: Repeats::default(),
        })
    }

    fn consumer(
        cfg: &KafkaConfig,
        shared: &Arc<Shared>,
    ) -> Result<BaseConsumer<GroupMember>, SourceError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("partition.assignment.strategy", &cfg.assignment_strategy)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            // When a partition's prefetch queue is past the thresholds below, librdkafka waits
            // this long before fetching it again: 1 s by default (librdkafka 2.x), which capped
            // a catching-up daemon at about the thresholds per second (2M events on Apache
            // Kafka in ~16 s; the ingest thread idle in `poll` most of the time). 10 ms: 5.5 s.
            .set("fetch.queue.backoff.ms", "10")
            .set("queued.min.messages", "100000")
            // Caps librdkafka's prefetch buffer (default 64 MB): enough to never starve the loop.
            .set("queued.max.messages.kbytes", "32768");
        if let Some(id) = cfg.group_instance_id.as_deref().filter(|s| !s.is_empty()) {
            cc.set("group.instance.id", id);
        }
        for (k, v) in &cfg.consumer {
            cc.set(k, v);
        }
        let ctx = GroupMember {
            topic: cfg.topic.clone(),
            shared: shared.clone(),
            global_errors: Mutex::default(),
            commits: Mutex::default(),
        };
        let consumer: BaseConsumer<GroupMember> = cc.create_with_context(ctx)?;
        consumer.subscribe(&[&cfg.topic])?;
        Ok(consumer)
    }

    /// The consumer hit a fatal error (librdkafka's instance is unusable from then on; seen here:
    /// a static member whose session expired while the broker restarted is fenced by its own
    /// rejoin, `FENCED_INSTANCE_ID`). Every partition it held is given up (the pipeline commits
    /// their positions, which the fence refuses if they were claimed meanwhile) and a new
    /// consumer joins the group; its partitions are claimed again as they are assigned.
    fn rebuild(&mut self, why: &rdkafka::error::KafkaError) {
        tracing::error!(error = %why, "the Kafka consumer failed fatally; giving up its partitions and joining the group again");
        {
            let mut changes = self.shared.changes.lock().unwrap();
            let mut assigned = self.shared.assigned.lock().unwrap();
            for p in std::mem::take(&mut *assigned) {
                changes.push(Change::Revoked(p));
            }
        }
        self.stash = None;
        match Self::consumer(&self.cfg, &self.shared) {
            Ok(c) => self.consumer = Closing(Some(c)),
            Err(e) => {
                self.shared.fatal.lock().unwrap().get_or_insert(format!(
                    "the Kafka consumer failed ({why}) and could not be created again: {e}"
                ));
            }
        }
    }

    fn changed(&self) -> bool {
        !self.shared.changes.lock().unwrap().is_empty()
    }

    /// Polls up to `max` messages, waiting at most `timeout` for the first one, and hands each
    /// to `f` while it is borrowed from the consumer (no copy). Returns how many were handed.
    /// Stops early when the assignment changed (see [`Source::take_changes`]). Transient client
    /// errors are logged and skipped: librdkafka retries on its own.
    pub fn poll_batch(
        &mut self,
        max: usize,
        timeout: Duration,
        mut f: impl FnMut(RawMessage<'_>),
    ) -> usize {
        let mut n = 0;
        if self.changed() {
            return 0;
        }
        if let Some(m) = self.stash.take() {
            f(raw(&m));
            n += 1;
        }
        let mut wait = timeout;
        while n < max {
            let polled = self.consumer.poll(wait);
            if self.changed() {
                if let Some(Ok(m)) = polled {
                    self.stash = Some(m.detach());
                }
                break;
            }
            match polled {
                None => break,
                Some(Ok(m)) => {
                    f(raw(&m));
                    n += 1;
                }
                Some(Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_))) => {
                    self.rebuild(&e);
                    break;
                }
                Some(Err(e)) => {
                    if let Some(left_out) = self.poll_errors.admit(&e) {
                        tracing::warn!(error = %e, left_out, "kafka consumer error");
                    }
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        n
    }

    /// Partitions of our topic currently assigned to this member.
    pub fn assignment(&self) -> Vec<i32> {
        match self.consumer.assignment() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect(),
            Err(_) => vec![],
        }
    }

    fn commit_mode(
        &self,
        offsets: &BTreeMap<i32, i64>,
        mode: CommitMode,
    ) -> Result<(), SourceError> {
        // Only partitions still assigned: committing a revoked one fails with the group's
        // generation error (its new owner commits it).
        let owned = self.assignment();
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets.iter().filter(|(p, _)| owned.contains(p)) {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let commits = &self.consumer.context().commits;
        commits.lock().unwrap().sent += 1;
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            commits.lock().unwrap().sent -= 1; // not sent: no answer will come
            return Err(e.into());
        }
        if matches!(mode, CommitMode::Sync) {
            self.await_commits(SYNC_COMMIT_WITHIN)?;
        }
        Ok(())
    }

    /// Polls the consumer until the coordinator has answered every commit sent, for at most
    /// `within`; the latest answer's error, if any. Only for shutdown: a message this poll
    /// returns is dropped, and since its offset is never committed, whoever reads the partition
    /// next reads it again.
    fn await_commits(&self, within: Duration) -> Result<(), SourceError> {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut c = self.consumer.context().commits.lock().unwrap();
                if c.answered >= c.sent {
                    return c.last_error.take().map_or(Ok(()), |e| Err(e.into()));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SourceError::NoAnswer(within, "the offset commit"));
            }
            // The commit's answer is served by poll (ConsumerContext::commit_callback).
            let _ = self.consumer.poll(left.min(Duration::from_millis(100)));
        }
    }

    /// Commits `partition → next offset` to the group (after the Iceberg commit).
    pub fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        self.commit_mode(offsets, CommitMode::Async)
    }

    /// Commits synchronously; used on shutdown so the position is durable before exit.
    pub fn commit_sync(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        self.commit_mode(offsets, CommitMode::Sync)
    }

    /// High-water marks of the given partitions (for lag), as librdkafka last saw them: it
    /// updates them from every fetch response, so they cost nothing to read. Why not
    /// `fetch_watermarks`: that is a ListOffsets round trip per partition, and this runs on the
    /// ingest thread every second; on Apache Kafka each one waited behind the broker's held
    /// fetches (`fetch.wait.max.ms`), and the thread spent most of its time there (15 of 25
    /// stack samples while catching up; 2M events took ~16 s against ~4 s from a file). A
    /// partition not fetched yet has no mark and is left out until it has one.
    pub fn end_offsets(&self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        // Kafka topic names hold no NUL; an impossible one just leaves the lag out.
        let Ok(topic) = std::ffi::CString::new(self.topic.as_str()) else {
            return BTreeMap::new();
        };
        partitions
            .iter()
            .filter_map(|&p| {
                let (mut low, mut high) = (-1i64, -1i64);
                // SAFETY: the client handle lives as long as `self.consumer`; `topic` is a valid
                // NUL-terminated string for the call; librdkafka only reads its cache and writes
                // the two offsets.
                let err = unsafe {
                    rdkafka::bindings::rd_kafka_get_watermark_offsets(
                        self.consumer.client().native_ptr(),
                        topic.as_ptr(),
                        p,
                        &mut low,
                        &mut high,
                    )
                };
                (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    && high >= 0)
                    .then_some((p, high))
            })
            .collect()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// The pipeline's view of a consumed message (borrowed, no copy).
fn raw<M: Message>(m: &M) -> RawMessage<'_> {
    RawMessage {
        partition: m.partition(),
        offset: m.offset(),
        payload: m.payload(),
        timestamp_ms: m.timestamp().to_millis(),
    }
}

impl Source for KafkaSource {
    fn poll_batch<F: FnMut(RawMessage<'_>)>(
        &mut self,
        max: usize,
        timeout: Duration,
        f: F,
    ) -> usize {
        KafkaSource::poll_batch(self, max, timeout, f)
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut *self.shared.changes.lock().unwrap())
    }

    fn assignment(&self) -> Vec<i32> {
        KafkaSource::assignment(self)
    }

    fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        KafkaSource::commit(self, offsets)
    }

    fn commit_sync(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        KafkaSource::commit_sync(self, offsets)
    }

    fn end_offsets(&self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        KafkaSource::end_offsets(self, partitions)
    }

    fn finished(&mut self) -> Result<bool, SourceError> {
        match self.shared.fatal.lock().unwrap().clone() {
            Some(why) => Err(SourceError::Refused(why)),
            None => Ok(false),
        }
    }
}
