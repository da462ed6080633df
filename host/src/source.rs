//! Kafka source stage: a consumer-group member that hands the pipeline batches of raw messages.
//!
//! `BaseConsumer` (not the async `StreamConsumer`): it is several times faster for small messages
//! and the ingest loop is a dedicated thread anyway. Auto-commit is off: offsets are committed
//! only after the Iceberg commit that contains the messages (see `pipeline`).

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Mutex;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// One message as the pipeline sees it.
pub struct RawMessage<'a> {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
    /// Producer (create) timestamp, ms, when the broker has one.
    pub timestamp_ms: Option<i64>,
}

/// Starts every newly assigned partition at the position recorded in Iceberg (the replay
/// point), not at the group's committed offset: the tables, not Kafka, say what is done. Once
/// this process has read a partition, its entry follows what was handed to the pipeline, so a
/// re-assignment (e.g. the group rebalancing after a broker restart) continues where the
/// in-memory state is instead of replaying into it twice.
struct StartFromIceberg {
    topic: String,
    start: Mutex<BTreeMap<i32, i64>>,
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
                for (p, o) in start.iter() {
                    if seeded.find_partition(&self.topic, *p).is_some() {
                        let _ = seeded.set_partition_offset(&self.topic, *p, Offset::Offset(*o));
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
            self.consumer.context().start.lock().unwrap().extend(read);
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
