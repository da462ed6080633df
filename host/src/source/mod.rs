//! Source stage: where raw messages come from, behind one small trait.
//!
//! * [`KafkaSource`]: the daemon's normal source, a consumer-group member of the topic.
//! * [`FileSource`]: JSON lines from a file or stdin, for backfills, offline demos and the
//!   side-by-side benchmark. Same message shape (partition 0, offset = line number), so the
//!   rest of the pipeline, the exactly-once bookkeeping included, cannot tell them apart.

use std::collections::BTreeMap;
use std::time::Duration;

pub mod file;
pub mod kafka;

pub use file::FileSource;
pub use kafka::KafkaSource;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The source cannot go on without losing or repeating data; the message says why and what
    /// to do.
    #[error("{0}")]
    Refused(String),
    /// The broker did not answer in time (it may be gone); what was asked is named.
    #[error("kafka: no answer to {1} within {0:?}")]
    NoAnswer(std::time::Duration, &'static str),
}

/// A change of the partitions this reader owns, in the order it happened relative to messages.
#[derive(Debug)]
pub enum Change {
    /// The group gave this member a partition, already claimed in the tables: the source reads
    /// it from the claim's replay point.
    Assigned(crate::sink::Claimed),
    /// The group took a partition away (messages of it handed over before stay valid).
    Revoked(i32),
}

/// One message as the pipeline sees it.
pub struct RawMessage<'a> {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
    /// Producer (create) timestamp, ms, when the broker has one.
    pub timestamp_ms: Option<i64>,
}

/// What the ingest loop needs from a source. Offsets handed to [`commit`](Source::commit) are
/// already in Iceberg: a source may store them (Kafka's group) or ignore them (a file is
/// positioned from the tables alone).
pub trait Source {
    /// Hands up to `max` messages to `f`, waiting at most `timeout` for the first one; returns
    /// how many were handed.
    fn poll_batch<F: FnMut(RawMessage<'_>)>(
        &mut self,
        max: usize,
        timeout: Duration,
        f: F,
    ) -> usize;

    /// Assignment changes since the last call. `poll_batch` stops at a change, so every
    /// message it handed over before belongs to the old assignment and every later one to the
    /// new.
    fn take_changes(&mut self) -> Vec<Change> {
        Vec::new()
    }

    /// Partitions this reader currently owns.
    fn assignment(&self) -> Vec<i32>;

    /// Stores `partition → next offset` after the Iceberg commit that holds them.
    fn commit(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError>;

    /// Like `commit`, but durable on return (used at shutdown).
    fn commit_sync(&self, offsets: &BTreeMap<i32, i64>) -> Result<(), SourceError>;

    /// Known end of each partition, for lag.
    fn end_offsets(&self, partitions: &[i32]) -> BTreeMap<i32, i64>;

    /// `Ok(true)` once a bounded source has handed out its last message; an error when reading
    /// failed (the run stops without committing past what was read).
    fn finished(&mut self) -> Result<bool, SourceError> {
        Ok(false)
    }
}
