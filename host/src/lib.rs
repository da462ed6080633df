//! admetrics: real-time ad-campaign metrics. Kafka → WebAssembly metric plugins → Iceberg.
//!
//! # Layout
//! One module per pipeline stage, each behind a small surface:
//!
//! | module      | stage                                                                 |
//! |-------------|-----------------------------------------------------------------------|
//! | [`source`]  | Kafka consumer-group member (rdkafka `BaseConsumer`), offset commits   |
//! | [`event`]   | decode + validate JSON events; rejections carry a dead-letter reason   |
//! | [`window`]  | watermarks, tumbling windows, per-user touchpoints, id interning       |
//! | [`dedup`]   | event ids remembered for the dedup horizon: copies count once          |
//! | [`plugin`]  | wasmtime component runtime for the `wit/` metric-plugin world          |
//! | [`sink`]    | Iceberg tables (SQL or REST catalog), fenced fast appends, summaries   |
//! | [`pipeline`]| the processor that chains the stages (per-partition tasks, the plugin  |
//! |             | registry, the live view), and the daemon's threads                    |
//! | [`diff`]    | `admetrics plugin diff`: a shadow plugin's rows against the live version's |
//! | [`restate`] | a period recomputed from `campaign_events` by another plugin build;   |
//! |             | promote / rollback of what readers see                                 |
//! | [`currency`]| conversions' revenue → the reporting currency, by a dated rates table |
//! | [`config`]  | TOML configuration with env overrides and strict keys                  |
//! | [`watch`]   | hot reload: plugin files and config watched, compiled off the event path |
//!
//! Around them: [`loadgen`] (synthetic traffic), [`status`] + [`progress`] (live counters and
//! the terminal view), [`observe`] (`/metrics`, `/health`, `/ready` for operators), [`cli`] (the `admetrics` command; `main.rs` only calls it).

pub mod cli;
pub mod config;
pub mod currency;
pub mod dedup;
pub mod diff;
pub mod fault;
/// Decode + validate lives in its own crate (`host/event`) so the fuzzer builds it alone.
pub use admetrics_event as event;
pub mod loadgen;
pub mod observe;
pub mod pipeline;
pub mod plugin;
pub mod progress;
pub mod restate;
pub mod sink;
pub mod source;
pub mod status;
pub mod watch;
pub mod window;
