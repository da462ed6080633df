//! Kafka source: a consumer-group member that hands the pipeline batches of raw messages.
//!
//! `BaseConsumer` (not the async `StreamConsumer`): it is several times faster for small messages
//! and the ingest loop is a dedicated thread anyway. Auto-commit is off: offsets are committed
//! only after the Iceberg commit that contains the messages (see `pipeline`).

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{RawMessage, Source, SourceError};
use crate::config::KafkaConfig;

/// Starts every newly assigned partition at the position recorded in Iceberg (the replay
/// point), not at the group's committed offset: the tables, not Kafka, say what is done. Once
/// this process has read a partition, its entry follows what was handed to the pipeline, so a
/// re-assignment (e.g. the group rebalancing after a broker restart) continues where the
/// in-memory state is instead of replaying into it twice.
/// A just-started partition: the offset it must deliver first, how far the next rewind goes,
/// and whether it has already been rewound to offset 0.
#[derive(Clone, Copy)]
struct Expect {
    want: i64,
    step: i64,
    at_zero: bool,
    /// When the partition was (re)started or last checked: silence past a second is suspect.
    since: std::time::Instant,
}

struct StartFromIceberg {
    topic: String,
    start: Mutex<BTreeMap<i32, i64>>,
    /// Partitions just (re)started: partition → (offset we must see first, rewind step). See
    /// `KafkaSource::poll_batch`.
    expect: Mutex<BTreeMap<i32, Expect>>,
    checking: AtomicBool,
}

impl ClientContext for StartFromIceberg {}

impl ConsumerContext for StartFromIceberg {
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
                let start = self.start.lock().unwrap();
                for e in tpl.elements() {
                    if e.topic() == self.topic
                        && let Some(&o) = start.get(&e.partition())
                    {
                        tracing::info!(
                            partition = e.partition(),
                            offset = o,
                            "assigned; starting at the position recorded in Iceberg"
                        );
                    }
                }
                let mut seeded = tpl.clone();
                let mut expect = self.expect.lock().unwrap();
                for (p, o) in start.iter() {
                    if seeded.find_partition(&self.topic, *p).is_some() {
                        let _ = seeded.set_partition_offset(&self.topic, *p, Offset::Offset(*o));
                        expect.insert(
                            *p,
                            Expect {
                                want: *o,
                                step: 1024,
                                at_zero: *o == 0,
                                since: std::time::Instant::now(),
                            },
                        );
                        self.checking.store(true, Ordering::Relaxed);
                    }
                }
                if cooperative {
                    consumer.incremental_assign(&seeded)
                } else {
                    consumer.assign(&seeded)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
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

pub struct KafkaSource {
    consumer: BaseConsumer<StartFromIceberg>,
    topic: String,
}

impl KafkaSource {
    /// Joins the group; partitions with an entry in `start` begin there when assigned.
    pub fn connect(cfg: &KafkaConfig, start: BTreeMap<i32, i64>) -> Result<Self, SourceError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .set("queued.min.messages", "100000")
            // Caps librdkafka's prefetch buffer (default 64 MB): enough to never starve the loop.
            .set("queued.max.messages.kbytes", "32768");
        for (k, v) in &cfg.consumer {
            cc.set(k, v);
        }
        let ctx = StartFromIceberg {
            topic: cfg.topic.clone(),
            start: Mutex::new(start),
            expect: Mutex::new(BTreeMap::new()),
            checking: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<StartFromIceberg> = cc.create_with_context(ctx)?;
        consumer.subscribe(&[&cfg.topic])?;
        Ok(KafkaSource {
            consumer,
            topic: cfg.topic.clone(),
        })
    }

    /// Polls up to `max` messages, waiting at most `timeout` for the first one, and hands each
    /// to `f` while it is borrowed from the consumer (no copy). Returns how many were handed.
    /// Transient client errors are logged and skipped: librdkafka retries on its own.
    ///
    /// A partition started at offset X must deliver X first. Some Kafka-protocol brokers (tansu
    /// 0.6) answer a fetch from the middle of a record batch with the *next* batch, silently
    /// skipping the rest of the one holding X; seen here, a restart would then lose or half
    /// replay messages. So when the first message is past X, the partition is rewound (1K, 8K,
    /// 64K … offsets back, down to 0) until a batch at or before X arrives, and messages below X
    /// are dropped. A real gap (compaction, transaction markers) ends the search at offset 0.
    pub fn poll_batch(
        &self,
        max: usize,
        timeout: Duration,
        mut f: impl FnMut(RawMessage<'_>),
    ) -> usize {
        let mut n = 0;
        let mut wait = timeout;
        let mut read: Vec<(i32, i64)> = Vec::new();
        while n < max {
            match self.consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    if self.consumer.context().checking.load(Ordering::Relaxed)
                        && !self.check_start(m.partition(), m.offset())
                    {
                        wait = Duration::ZERO;
                        continue;
                    }
                    match read.iter_mut().find(|(p, _)| *p == m.partition()) {
                        Some((_, o)) => *o = m.offset() + 1,
                        None => read.push((m.partition(), m.offset() + 1)),
                    }
                    f(RawMessage {
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload(),
                        timestamp_ms: m.timestamp().to_millis(),
                    });
                    n += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if !read.is_empty() {
            // Never backwards: a re-delivery after a seek is skipped downstream (the processor
            // drops offsets it has seen), and the restart point stays past it.
            let mut start = self.consumer.context().start.lock().unwrap();
            for (p, o) in read {
                let e = start.entry(p).or_insert(o);
                *e = (*e).max(o);
            }
        }
        if self.consumer.context().checking.load(Ordering::Relaxed) {
            self.check_silent_starts();
        }
        n
    }

    /// A just-started partition that has delivered nothing for a second: its start may be inside
    /// the last record batch, which such a broker answers with nothing at all (and tansu's high
    /// watermark cannot tell: it reports the last batch's base). Rewind it like `check_start`
    /// does; reading the message just before the start proves the position either way.
    fn check_silent_starts(&self) {
        let ctx = self.consumer.context();
        let mut seeks = Vec::new();
        {
            let mut expect = ctx.expect.lock().unwrap();
            for (p, e) in expect.iter_mut() {
                if e.since.elapsed() < Duration::from_secs(1) || e.at_zero {
                    continue;
                }
                let to = (e.want - e.step).max(0);
                tracing::info!(
                    partition = *p,
                    expected = e.want,
                    rewind_to = to,
                    "nothing delivered from the start offset; rewinding to check the record batch"
                );
                e.step = e.step.saturating_mul(8);
                e.at_zero = to == 0;
                e.since = std::time::Instant::now();
                seeks.push((*p, to));
            }
        }
        for (p, to) in seeks {
            if let Err(err) =
                self.consumer
                    .seek(&self.topic, p, Offset::Offset(to), Duration::from_secs(5))
            {
                tracing::warn!(partition = p, error = %err, "seek failed; retrying later");
            }
        }
    }

    /// Whether a message at `offset` of a just-started partition may be delivered (see
    /// `poll_batch`); rewinds the partition when the broker skipped its start.
    fn check_start(&self, partition: i32, offset: i64) -> bool {
        let ctx = self.consumer.context();
        let mut expect = ctx.expect.lock().unwrap();
        let Some(&e) = expect.get(&partition) else {
            return true;
        };
        if offset < e.want {
            // Re-read below the start after a rewind. The message just before the start means
            // the consumer now stands exactly at it (the next one, if any, is the start).
            if offset == e.want - 1 {
                expect.remove(&partition);
                if expect.is_empty() {
                    ctx.checking.store(false, Ordering::Relaxed);
                }
            } else if let Some(e) = expect.get_mut(&partition) {
                e.since = std::time::Instant::now();
            }
            return false;
        }
        if offset == e.want || e.at_zero {
            // Found the start (or read from offset 0 and the gap is real).
            expect.remove(&partition);
            if expect.is_empty() {
                ctx.checking.store(false, Ordering::Relaxed);
            }
            if offset != e.want {
                tracing::warn!(
                    partition,
                    expected = e.want,
                    got = offset,
                    "offsets missing before the first message (compaction or retention?)"
                );
            }
            return true;
        }
        let to = (e.want - e.step).max(0);
        tracing::info!(
            partition,
            expected = e.want,
            got = offset,
            rewind_to = to,
            "the broker skipped the start of a record batch; rewinding to read it"
        );
        expect.insert(
            partition,
            Expect {
                want: e.want,
                step: e.step.saturating_mul(8),
                at_zero: to == 0,
                since: std::time::Instant::now(),
            },
        );
        if let Err(e) = self.consumer.seek(
            &self.topic,
            partition,
            Offset::Offset(to),
            Duration::from_secs(5),
        ) {
            tracing::warn!(partition, error = %e, "seek failed; retrying on the next message");
        }
        false
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

    /// Commits `partition → next offset` to the group (after the Iceberg commit).
    pub fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }

    /// Commits synchronously; used on shutdown so the position is durable before exit.
    pub fn commit_sync(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)?;
        Ok(())
    }

    /// High-water marks of the given partitions (for lag).
    pub fn end_offsets(&self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        partitions
            .iter()
            .filter_map(|&p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_millis(200))
                    .ok()
                    .map(|(_, high)| (p, high))
            })
            .collect()
    }

    pub fn topic(&self) -> &str {
        &self.topic
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
}
