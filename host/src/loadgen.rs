//! Load generator: realistic ad-funnel traffic (impressions → some clicks → some conversions)
//! as JSON messages keyed by user id.
//!
//! [`EventGen`] is deterministic for a seed and a sequence of `now` values, so tests and benchmarks
//! can reproduce a stream; [`produce`] sends it to Kafka at a target rate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Events per second to produce (all kinds together).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Number of campaigns.
    #[arg(long, default_value_t = 20)]
    pub campaigns: u32,
    /// Ads per campaign.
    #[arg(long, default_value_t = 5)]
    pub ads_per_campaign: u32,
    /// Number of distinct users.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Mean click-through rate (per campaign it varies ±50% around this).
    #[arg(long, default_value_t = 0.05)]
    pub ctr: f64,
    /// Mean conversion rate of clicks.
    #[arg(long, default_value_t = 0.10)]
    pub cvr: f64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Maximum event-time disorder, milliseconds (events are sent up to this much out of order).
    #[arg(long, default_value_t = 2_000)]
    pub disorder_ms: u64,
    /// Stop after this many events (default: run until stopped).
    #[arg(long)]
    pub total: Option<u64>,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`). Longer means fewer,
    /// bigger produce requests and fewer record batches for the daemon to fetch, at the cost of
    /// up to this much added produce→visible latency.
    #[arg(long, default_value_t = 10)]
    pub linger_ms: u64,
    /// Give events an `attributes` object (custom string attributes): `creative_size` on three
    /// of every four events (one of three sizes), `experiment` on some of them, none on the
    /// fourth. Such events take the decoder's general path.
    #[arg(long)]
    pub attributes: bool,
}

impl Default for LoadgenArgs {
    fn default() -> Self {
        LoadgenArgs {
            rate: 2_000,
            campaigns: 20,
            ads_per_campaign: 5,
            users: 100_000,
            ctr: 0.05,
            cvr: 0.10,
            seed: 42,
            disorder_ms: 2_000,
            total: None,
            linger_ms: 10,
            attributes: false,
        }
    }
}

const DEVICES: [&str; 3] = ["ios", "android", "web"];
const COUNTRIES: [&str; 6] = ["US", "DE", "GB", "FR", "JP", "BR"];
const PLACEMENTS: [&str; 4] = ["feed", "search", "stories", "partner"];

/// A follow-up event scheduled for later event time (a click after an impression, ...).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    due_ms: i64,
    seq: u64,
    kind: u8, // 1 click, 2 conversion
    user: u64,
    campaign: u32,
    ad: u32,
}

/// Deterministic funnel generator.
pub struct EventGen {
    args: LoadgenArgs,
    rng: fastrand::Rng,
    campaign_ctr: Vec<f64>,
    campaign_cvr: Vec<f64>,
    pending: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    id_prefix: String,
}

impl EventGen {
    pub fn new(args: LoadgenArgs) -> Self {
        let mut rng = fastrand::Rng::with_seed(args.seed);
        let campaign_ctr = (0..args.campaigns)
            .map(|_| args.ctr * (0.5 + rng.f64()))
            .collect();
        let campaign_cvr = (0..args.campaigns)
            .map(|_| args.cvr * (0.5 + rng.f64()))
            .collect();
        let id_prefix = format!("s{}-", args.seed);
        EventGen {
            args,
            rng,
            campaign_ctr,
            campaign_cvr,
            pending: BinaryHeap::new(),
            seq: 0,
            id_prefix,
        }
    }

    /// The next event at (simulated or real) time `now_ms`: a due follow-up if there is one,
    /// else a new impression. Returns (key, JSON payload).
    pub fn next(&mut self, now_ms: i64) -> (String, String) {
        if let Some(Reverse(p)) = self.pending.peek()
            && p.due_ms <= now_ms
        {
            let Reverse(p) = self.pending.pop().expect("peeked");
            return self.follow_up(p, now_ms);
        }
        let user = self.rng.u64(0..self.args.users);
        let campaign = self.rng.u32(0..self.args.campaigns);
        let ad = self.rng.u32(0..self.args.ads_per_campaign);
        if self.rng.f64() < self.campaign_ctr[campaign as usize] {
            let due_ms = now_ms + self.rng.i64(200..3_000);
            self.schedule(Pending {
                due_ms,
                seq: 0,
                kind: 1,
                user,
                campaign,
                ad,
            });
        }
        let t = self.jitter(now_ms);
        self.render("impression", t, user, campaign, ad, None)
    }

    fn follow_up(&mut self, p: Pending, now_ms: i64) -> (String, String) {
        let t = self.jitter(p.due_ms.min(now_ms));
        if p.kind == 1 {
            if self.rng.f64() < self.campaign_cvr[p.campaign as usize] {
                let due_ms = p.due_ms + self.rng.i64(1_000..20_000);
                self.schedule(Pending {
                    due_ms,
                    seq: 0,
                    kind: 2,
                    ..p
                });
            }
            self.render("click", t, p.user, p.campaign, p.ad, None)
        } else {
            // Revenue: 5.00–200.00 in whole cents, skewed towards small baskets.
            let cents = 500 + (self.rng.f64().powi(3) * 19_500.0) as i64;
            self.render("conversion", t, p.user, p.campaign, p.ad, Some(cents))
        }
    }

    fn schedule(&mut self, mut p: Pending) {
        self.seq += 1;
        p.seq = self.seq;
        self.pending.push(Reverse(p));
    }

    fn jitter(&mut self, t: i64) -> i64 {
        if self.args.disorder_ms == 0 {
            t
        } else {
            t - self.rng.i64(0..=self.args.disorder_ms as i64)
        }
    }

    fn render(
        &mut self,
        kind: &str,
        t_ms: i64,
        user: u64,
        campaign: u32,
        ad: u32,
        cents: Option<i64>,
    ) -> (String, String) {
        self.seq += 1;
        let time = chrono::DateTime::from_timestamp_millis(t_ms)
            .expect("valid time")
            .format("%Y-%m-%dT%H:%M:%S%.3fZ");
        // A user's device and country are fixed, and independent of each other over the users
        // (every pair occurs), so a country x device breakdown has all 18 cells.
        let device = DEVICES[(user % 3) as usize];
        let country = COUNTRIES[((user / 3) % 6) as usize];
        let placement = PLACEMENTS[self.rng.usize(0..PLACEMENTS.len())];
        let key = format!("user-{user:07}");
        let revenue = match cents {
            Some(c) => format!(
                r#","revenue":"{}.{:02}","currency":"USD""#,
                c / 100,
                c % 100
            ),
            None => String::new(),
        };
        let attributes = if self.args.attributes {
            // A function of the sequence number, so that the rng's draws (and with them the rest
            // of the traffic) are those of the same seed without attributes.
            match self.seq % 4 {
                0 => "",
                1 => r#","attributes":{"creative_size":"300x250"}"#,
                2 => r#","attributes":{"experiment":"b","creative_size":"728x90"}"#,
                _ => r#","attributes":{"creative_size":"320x50"}"#,
            }
        } else {
            ""
        };
        let json = format!(
            r#"{{"event_id":"{}{:012}","event_type":"{kind}","event_time":"{time}","campaign_id":"campaign-{campaign:03}","ad_id":"ad-{campaign:03}-{ad:02}","user_id":"{key}","device":"{device}","country":"{country}","placement":"{placement}"{revenue}{attributes}}}"#,
            self.id_prefix, self.seq
        );
        (key, json)
    }
}

/// Writes `args.total` events (default 1M) as JSON lines to `out` in simulated time: event time
/// starts at `start_ms` and advances `1000 / args.rate` ms per event, so the file spans
/// `total / rate` seconds of event time whatever the wall clock does. Deterministic for a seed
/// (the side-by-side benchmark's input). Returns how many lines were written.
pub fn write_events(
    out: &mut impl std::io::Write,
    args: &LoadgenArgs,
    start_ms: i64,
) -> std::io::Result<u64> {
    let mut generator = EventGen::new(args.clone());
    let total = args.total.unwrap_or(1_000_000);
    let step = 1000.0 / args.rate.max(1) as f64;
    for i in 0..total {
        let now_ms = start_ms + (i as f64 * step) as i64;
        let (_, payload) = generator.next(now_ms);
        out.write_all(payload.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(total)
}

/// Counters the producer updates while it runs.
#[derive(Debug, Default)]
pub struct LoadgenStats {
    /// Handed to the client (queued).
    pub produced: AtomicU64,
    /// Acknowledged by the broker.
    pub delivered: AtomicU64,
    /// Given up by the client after its retries: these events are not on the topic.
    pub failed: AtomicU64,
}

/// A producer context that counts broker acknowledgements and failures: the default context
/// drops delivery reports, which would hide lost events.
#[derive(Clone, Default)]
pub struct DeliveryCounter(pub Arc<LoadgenStats>);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Relaxed);
            }
            Err((e, _)) => {
                if self.0.failed.fetch_add(1, Relaxed).is_power_of_two() {
                    tracing::error!(error = %e, "delivery failed (logged at powers of two)");
                }
            }
        }
    }
}

/// A producer whose delivery reports land in `stats`.
pub fn producer(
    brokers: &str,
    stats: &Arc<LoadgenStats>,
    linger_ms: u64,
) -> anyhow::Result<BaseProducer<DeliveryCounter>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .create_with_context(DeliveryCounter(stats.clone()))?)
}

/// Produces generated events to `topic` at `args.rate` per second until `stop` is set or
/// `args.total` events were sent; returns how many were acknowledged by the broker and fails if
/// any delivery failed.
pub fn produce(
    brokers: &str,
    topic: &str,
    args: &LoadgenArgs,
    stop: &AtomicBool,
    stats: &Arc<LoadgenStats>,
) -> anyhow::Result<u64> {
    let producer = producer(brokers, stats, args.linger_ms)?;
    let mut generator = EventGen::new(args.clone());
    let started = Instant::now();
    let mut sent: u64 = 0;
    let total = args.total.unwrap_or(u64::MAX);
    while !stop.load(Relaxed) && sent < total {
        // Rate control: how many events should have been sent by now.
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        if sent >= due {
            // Send in 10 ms ticks: waking every millisecond cost the generator most of a core at
            // 5 000 events/s, taken from the daemon it is meant to measure.
            producer.poll(Duration::from_millis(10));
            continue;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        while sent < due {
            let (key, payload) = generator.next(now_ms);
            loop {
                match producer.send(BaseRecord::to(topic).key(&key).payload(&payload)) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        stats.failed.fetch_add(1, Relaxed);
                        return Err(e.into());
                    }
                }
            }
            sent += 1;
            stats.produced.fetch_add(1, Relaxed);
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30))?;
    let failed = stats.failed.load(Relaxed);
    anyhow::ensure!(failed == 0, "{failed} of {sent} events were not delivered");
    Ok(stats.delivered.load(Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_keep_their_device_and_country_and_every_pair_occurs() {
        let mut g = EventGen::new(LoadgenArgs {
            users: 1_000,
            seed: 3,
            ..Default::default()
        });
        let mut of_user = std::collections::HashMap::new();
        let mut pairs = std::collections::HashSet::new();
        for i in 0..20_000 {
            let (key, json) = g.next(1_700_000_000_000 + i);
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let pair = (
                v["device"].as_str().unwrap().to_string(),
                v["country"].as_str().unwrap().to_string(),
            );
            assert_eq!(of_user.entry(key).or_insert_with(|| pair.clone()), &pair);
            pairs.insert(pair);
        }
        assert_eq!(pairs.len(), DEVICES.len() * COUNTRIES.len());
    }
}
