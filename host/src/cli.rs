//! The `admetrics` command line. `main.rs` calls [`main`]; everything here is thin glue over the
//! library, with `anyhow` errors printed once at the edge.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::loadgen::{LoadgenArgs, LoadgenStats};
use crate::pipeline::{self, Clock, Processor};
use crate::plugin::PluginRuntime;
use crate::progress::Progress;
use crate::source::RawMessage;
use crate::status::Status;

/// Real-time ad-campaign metrics: Kafka → WebAssembly metric plugins → Iceberg.
#[derive(Parser)]
#[command(name = "admetrics", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    /// The level comes from ADMETRICS_LOG (e.g. `info`, `admetrics=debug`).
    #[arg(long, global = true, env = "ADMETRICS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: consume the topic, compute metrics, commit to Iceberg, until SIGINT/SIGTERM.
    /// With --file: process a JSON-lines file (or stdin) to its end, commit and exit.
    Run {
        /// Configuration file (TOML). `ADMETRICS__SECTION__KEY` environment variables override it.
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
        /// Read events from this JSON-lines file (`-` = stdin) instead of Kafka: same validation,
        /// windows, plugins and tables; every window is closed at the end of the input.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The stream this input is recorded under (default: the topic; for a file
        /// `file:<file name>@<digest of its first line>`, so another file of the same name is
        /// another stream and a grown file resumes; `stdin` must be named to run twice). A
        /// second run with the same name resumes after what is committed; streams sharing the
        /// tables are counted apart and their metrics add up.
        #[arg(long)]
        stream: Option<String>,
        /// What `validation.max_past_ms` / `max_future_ms` are measured from. `wall-clock`
        /// (default): the host clock, right for live traffic; a backfill of older events (say
        /// last month's file) would dead-letter every event as `time_out_of_range`. For a
        /// backfill: `off` (no event-time bound) or an RFC 3339 instant, e.g.
        /// `2026-11-01T00:00:00Z` (the events are validated as if read at that time: the bounds
        /// still catch corrupt timestamps). Applies to --file and to Kafka alike.
        #[arg(
            long,
            value_name = "wall-clock|off|RFC3339",
            default_value = "wall-clock"
        )]
        event_time_bounds: crate::event::TimeBounds,
    },
    /// Run the daemon and a load generator together, with a live view of the results.
    Demo {
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        #[command(flatten)]
        load: LoadgenArgs,
    },
    /// Produce synthetic ad events to the topic (or, with --out, write them to a file).
    Loadgen {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "campaign-events")]
        topic: String,
        /// Write `--total` events (default 1M) as JSON lines to this file (`-` = stdout)
        /// instead of producing to Kafka, in simulated time: `--rate` events per second of event
        /// time from `--start-time`. Deterministic for a seed.
        #[arg(long)]
        out: Option<PathBuf>,
        /// First event time of `--out` (RFC 3339).
        #[arg(long, default_value = "2026-01-01T00:00:00Z")]
        start_time: String,
        #[command(flatten)]
        load: LoadgenArgs,
    },
    /// Recompute a period of metrics with another build of a plugin, from `campaign_events` (not
    /// Kafka), as a restatement: rows tagged with its id, never shown until promoted; live rows
    /// are never modified. Killed, the same command (or --resume ID) continues it and every
    /// window is written once. Then --promote ID / --rollback ID switch what readers of the
    /// current value (sql/current_metrics.sql, the dashboard) see, in one commit.
    Restate {
        /// Configuration file (TOML): the tables, window size, attribution lookback, plugin limits.
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
        /// The plugin build to restate with (.wasm); its name says which plugin's rows it restates.
        #[arg(long, required_unless_present_any = ["promote", "rollback", "list"])]
        plugin: Option<PathBuf>,
        /// Start of the period (RFC 3339, a window boundary).
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// End of the period, exclusive (RFC 3339, a window boundary).
        #[arg(long, value_name = "RFC3339")]
        to: Option<String>,
        /// Continue restatement ID (the same --plugin) after a crash.
        #[arg(long, value_name = "ID")]
        resume: Option<String>,
        /// Attribution lookback for this restatement (default: `attribution.lookback_secs`).
        #[arg(long)]
        lookback_secs: Option<u64>,
        /// Commit after this many closed windows of a partition (and at each partition's end).
        #[arg(long, default_value_t = 1000)]
        commit_windows: usize,
        /// Make readers of the current value show restatement ID for its plugin and period.
        #[arg(long, value_name = "ID", conflicts_with_all = ["plugin", "rollback", "list", "resume"])]
        promote: Option<String>,
        /// Make readers show the live rows again instead of restatement ID.
        #[arg(long, value_name = "ID", conflicts_with_all = ["plugin", "promote", "list", "resume"])]
        rollback: Option<String>,
        /// List the restatements in the tables and whether each is promoted.
        #[arg(long, conflicts_with_all = ["plugin", "promote", "rollback", "resume"])]
        list: bool,
    },
    /// Plugin author tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run a plugin over events from a JSON-lines file with the daemon's limits and print its rows.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Events, one JSON object per line, in the topic's format.
        #[arg(long)]
        events: PathBuf,
        /// Window size in seconds.
        #[arg(long, default_value_t = 60)]
        window_secs: u64,
        /// A plugin parameter, as `[plugins.config.NAME]` would give it (repeatable; a list is
        /// comma-separated: `--param dimensions=country,device`).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// A campaign's time zone for `day` windows (repeatable): `--time-zone spring-sale=Europe/Berlin`.
        #[arg(long = "time-zone", value_name = "CAMPAIGN=IANA_ZONE")]
        time_zones: Vec<String>,
    },
    /// Compare a shadow plugin's rows (plugins.shadow_dir) with the live version's, window by
    /// window, from campaign_metrics: a deploy gate.
    ///
    /// The unit compared is a window of one (stream, Kafka partition), each key at its latest
    /// revision. Only windows final on both sides are compared; windows only one side has (a
    /// shadow computes only the windows opened after it loaded) or still open are reported as
    /// not compared. Within a compared window, a key that differs (numerator or denominator
    /// beyond --tolerance, or withheld on one side only) or that one side lacks is a difference.
    ///
    /// Exit status: 0 when the differing windows are within the thresholds, 1 past them, 2 on
    /// errors, including an unknown or ambiguous version and nothing compared at all (no window
    /// final on both sides: a gate that compared nothing has shown nothing).
    #[command(verbatim_doc_comment)]
    Diff {
        /// The live version: a .wasm file (its sha256 is computed), a sha256 prefix (4+ hex
        /// digits) or NAME@VERSION. Live rows: shadow IS NOT TRUE, no restatement.
        live: String,
        /// The shadow version, named the same ways. Shadow rows: shadow = true. It may be
        /// compared with any live version of the same plugin.
        shadow: String,
        /// Configuration file (TOML): which tables to read.
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
        /// Only windows starting at or after T (RFC 3339 or epoch milliseconds).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Pass with at most N differing windows (default 0 when no threshold is given).
        #[arg(long, value_name = "N")]
        max_differing_windows: Option<usize>,
        /// Pass with at most this fraction of the compared windows differing (0..1). With
        /// --max-differing-windows too, both must hold.
        #[arg(long, value_name = "F")]
        max_differing_fraction: Option<f64>,
        /// Relative tolerance for numerators and denominators: equal when
        /// |a - b| <= tolerance * max(|a|, |b|).
        #[arg(long, default_value_t = 1e-9)]
        tolerance: f64,
        /// Example differing keys shown per metric.
        #[arg(long, default_value_t = 5)]
        examples: usize,
        /// Print the report as JSON (one object) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Demo { .. });
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("ADMETRICS_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" })
        });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    if let Command::Plugin {
        command: PluginCommand::Diff { .. },
    } = &cli.command
    {
        return plugin_diff(cli.command);
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `plugin diff`: exit 0 within the thresholds, 1 past them, 2 on any error.
fn plugin_diff(command: Command) -> ExitCode {
    let Command::Plugin {
        command:
            PluginCommand::Diff {
                live,
                shadow,
                config,
                since,
                max_differing_windows,
                max_differing_fraction,
                tolerance,
                examples,
                json,
            },
    } = command
    else {
        unreachable!("called for plugin diff only")
    };
    let run = || -> anyhow::Result<crate::diff::Report> {
        if let Some(f) = max_differing_fraction {
            anyhow::ensure!(
                (0.0..=1.0).contains(&f),
                "--max-differing-fraction {f}: not within 0..1"
            );
        }
        anyhow::ensure!(
            tolerance >= 0.0 && tolerance.is_finite(),
            "--tolerance {tolerance}: not a non-negative number"
        );
        let req = crate::diff::Request {
            live: crate::diff::VersionSpec::parse(&live)?,
            shadow: crate::diff::VersionSpec::parse(&shadow)?,
            since_ms: since.as_deref().map(crate::diff::parse_since).transpose()?,
            options: crate::diff::Options {
                tolerance,
                examples,
            },
            thresholds: crate::diff::Thresholds {
                max_differing_windows,
                max_differing_fraction,
            },
        };
        let cfg = Config::load(&config)?;
        Ok(tokio_runtime()?.block_on(crate::diff::diff(&cfg, &req))?)
    };
    match run() {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("plain data")
                );
            } else {
                print!("{}", crate::diff::render(&report));
            }
            if report.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            file,
            stream,
            event_time_bounds,
        } => {
            let cfg = run_config(Config::load(&config)?, file, stream, event_time_bounds)?;
            let started = std::time::Instant::now();
            let rt = tokio_runtime()?;
            let status = Arc::new(Status::default());
            // Handlers installed before anything else: a SIGTERM during start-up (catalog, plugin
            // compilation, group join) is a graceful stop too, not the default kill.
            let signal = rt.block_on(async { shutdown_signal() })?;
            let summary = rt.block_on(pipeline::run(cfg, status.clone(), signal))?;
            // `run --file` has no `/metrics` to scrape: what it folded is said here.
            tracing::info!(messages = summary.messages, commits = summary.commits, offsets = ?summary.committed_offsets,
                dimension_values_folded = status.dimension_values_folded.get(),
                seconds = started.elapsed().as_secs_f64(), "stopped");
            Ok(())
        }
        Command::Demo {
            config,
            duration,
            load,
        } => demo(&config, duration, load),
        Command::Loadgen {
            out: Some(out),
            start_time,
            load,
            ..
        } => {
            let start = chrono::DateTime::parse_from_rfc3339(&start_time)
                .with_context(|| format!("--start-time {start_time:?}"))?
                .timestamp_millis();
            let n = if out == std::path::Path::new("-") {
                let stdout = std::io::stdout();
                crate::loadgen::write_events(
                    &mut std::io::BufWriter::with_capacity(1 << 20, stdout.lock()),
                    &load,
                    start,
                )?
            } else {
                let f = std::fs::File::create(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                crate::loadgen::write_events(
                    &mut std::io::BufWriter::with_capacity(1 << 20, f),
                    &load,
                    start,
                )?
            };
            eprintln!("wrote {n} events to {}", out.display());
            Ok(())
        }
        Command::Loadgen {
            brokers,
            topic,
            load,
            ..
        } => {
            let stop = Arc::new(AtomicBool::new(false));
            let stats = Arc::new(LoadgenStats::default());
            {
                let stop = stop.clone();
                ctrlc_flag(stop);
            }
            let n = crate::loadgen::produce(&brokers, &topic, &load, &stop, &stats)?;
            println!("produced {n} events to {topic}");
            Ok(())
        }
        Command::Restate {
            config,
            plugin,
            from,
            to,
            resume,
            lookback_secs,
            commit_windows,
            promote,
            rollback,
            list,
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(l) = lookback_secs {
                cfg.attribution.lookback_secs = l;
            }
            let rt = tokio_runtime()?;
            if let Some(id) = promote {
                let withdrawn = rt.block_on(crate::restate::promote(&cfg, &id))?;
                println!("promoted {id}");
                for w in withdrawn {
                    println!("withdrew {w} (same plugin, overlapping period)");
                }
                return Ok(());
            }
            if let Some(id) = rollback {
                rt.block_on(crate::restate::rollback(&cfg, &id))?;
                println!("rolled back {id}");
                return Ok(());
            }
            if list {
                return rt.block_on(restate_list(&cfg));
            }
            let time = |t: Option<String>, name: &str| -> anyhow::Result<Option<i64>> {
                t.map(|t| {
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|d| d.timestamp_millis())
                        .with_context(|| format!("--{name} {t:?}"))
                })
                .transpose()
            };
            let req = crate::restate::Request {
                plugin: plugin.context("--plugin")?,
                from_ms: time(from, "from")?,
                to_ms: time(to, "to")?,
                resume,
                commit_windows: commit_windows.max(1),
            };
            use std::io::Write;
            // First the id (to resume by), then one line per commit: where it stands.
            let mut first = true;
            let mut started = |r: &crate::restate::Record| {
                if std::mem::take(&mut first) {
                    println!(
                        "restatement {} of {} {} (sha256 {}), events snapshot {}",
                        r.id, r.plugin, r.version, r.sha256, r.events_snapshot
                    );
                } else {
                    println!(
                        "restatement {} commit {}: done {}",
                        r.id,
                        r.seq,
                        serde_json::to_string(&r.done).unwrap_or_default()
                    );
                }
                let _ = std::io::stdout().flush();
            };
            let rep = rt.block_on(crate::restate::restate(&cfg, &req, &mut started))?;
            if rep.already_complete {
                println!("restatement {} is already complete", rep.id);
            } else {
                let secs = rep.total.as_secs_f64();
                println!(
                    "restatement {} complete{}: {} events read, {} rows written in {} commits; \
                     {:.3} s (read {:.3} s, compute {:.3} s, commit {:.3} s), {:.0} events/s",
                    rep.id,
                    if rep.resumed { " (resumed)" } else { "" },
                    rep.events_read,
                    rep.rows_written,
                    rep.commits,
                    secs,
                    rep.read.as_secs_f64(),
                    rep.compute.as_secs_f64(),
                    rep.commit.as_secs_f64(),
                    rep.events_read as f64 / secs.max(1e-9)
                );
            }
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Test {
                    plugin,
                    events,
                    window_secs,
                    params,
                    time_zones,
                },
        } => plugin_test(&plugin, &events, window_secs, &params, &time_zones),
        Command::Plugin {
            command: PluginCommand::Diff { .. },
        } => unreachable!("main runs plugin diff itself (its own exit statuses)"),
    }
}

/// `restate --list`: every restatement, newest first, and whether readers see it.
async fn restate_list(cfg: &Config) -> anyhow::Result<()> {
    let sink = crate::sink::IcebergSink::open(
        &cfg.iceberg,
        "restate:list",
        "restate-list",
        cfg.commit.target_file_bytes,
    )
    .await?;
    let (rows, _) = crate::restate::promotions(sink.metrics_table()).await?;
    let t = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).map_or("?".into(), |d| d.to_rfc3339())
    };
    let mut listed = std::collections::HashSet::new();
    // From the summaries (incomplete ones too), then complete ones whose summaries were expired.
    let summaries = crate::restate::restatements(sink.metrics_table());
    let entries = summaries
        .iter()
        .map(|r| {
            (
                r.id.clone(),
                r.plugin.clone(),
                r.version.clone(),
                r.from_ms,
                r.to_ms,
            )
        })
        .chain(rows.values().map(|(r, _)| {
            (
                r.id.clone(),
                r.plugin.clone(),
                r.version.clone(),
                r.from_ms,
                r.to_ms,
            )
        }));
    for (id, plugin, version, from, to) in entries {
        if !listed.insert(id.clone()) {
            continue;
        }
        let state = rows.get(&id);
        println!(
            "{id}\t{plugin} {version}\t{} .. {}\t{}\t{}",
            t(from),
            t(to),
            if state.is_some() {
                "complete"
            } else {
                "incomplete"
            },
            if state.is_some_and(|s| s.1) {
                "promoted"
            } else {
                "-"
            }
        );
    }
    Ok(())
}

/// The configuration of `run`: the file's, with the command line's input and validation
/// reference applied.
fn run_config(
    mut cfg: Config,
    file: Option<PathBuf>,
    stream: Option<String>,
    event_time_bounds: crate::event::TimeBounds,
) -> anyhow::Result<Config> {
    if let Some(path) = file {
        cfg.source.kind = crate::config::SourceKind::File;
        cfg.source.path = Some(crate::source::file::resolve(
            &std::env::current_dir()?,
            &path,
        ));
    }
    if stream.is_some() {
        cfg.source.stream = stream;
    }
    cfg.validation.time_bounds = event_time_bounds;
    Ok(cfg)
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Installs the SIGINT/SIGTERM handlers now (call inside the runtime) and returns a future that
/// completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested: committing what we hold");
    })
}

fn ctrlc_flag(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let signal = rt
            .block_on(async { shutdown_signal() })
            .expect("signal handler");
        rt.block_on(signal);
        stop.store(true, Relaxed);
    });
}

fn demo(config: &std::path::Path, duration: Option<u64>, load: LoadgenArgs) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let rt = tokio_runtime()?;
    let status = Arc::new(Status::default());
    let stop_load = Arc::new(AtomicBool::new(false));
    let load_stats = Arc::new(LoadgenStats::default());
    let producer = {
        let (brokers, topic) = (cfg.kafka.brokers.clone(), cfg.kafka.topic.clone());
        let (stop, stats) = (stop_load.clone(), load_stats.clone());
        std::thread::spawn(move || crate::loadgen::produce(&brokers, &topic, &load, &stop, &stats))
    };
    let signal = rt.block_on(async { shutdown_signal() })?;
    let started = std::time::Instant::now();
    let shutdown = {
        let status = status.clone();
        let load_stats = load_stats.clone();
        async move {
            let mut progress = Progress::new();
            let deadline = duration.map(|d| tokio::time::Instant::now() + Duration::from_secs(d));
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let signal = signal;
            tokio::pin!(signal);
            loop {
                tokio::select! {
                    _ = &mut signal => break,
                    _ = every.tick() => {
                        print!("{}", progress.render(&status, Some(load_stats.produced.load(Relaxed))));
                        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) { break; }
                    }
                }
            }
        }
    };
    let summary = rt.block_on(pipeline::run(cfg.clone(), status.clone(), shutdown));
    stop_load.store(true, Relaxed);
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))??;
    let summary = summary?;
    print!(
        "{}",
        Progress::since(started).render(&status, Some(produced))
    );
    println!(
        "\nstopped: {produced} events acknowledged by the broker, {} messages consumed, {} commits. Tables: {} (catalog {}).",
        summary.messages,
        summary.commits,
        cfg.iceberg.warehouse.display(),
        cfg.iceberg.catalog_uri
    );
    if summary.messages > produced {
        println!(
            "More messages were consumed than acknowledged: the producer retried batches the broker had already\n\
             stored, so the topic holds duplicates; deduplication by event_id kept each event once in the tables."
        );
    }
    Ok(())
}

fn plugin_test(
    plugin: &std::path::Path,
    events: &std::path::Path,
    window_secs: u64,
    params: &[String],
    time_zones: &[String],
) -> anyhow::Result<()> {
    let mut cfg = Config::default();
    cfg.plugins.paths = vec![plugin.to_path_buf()];
    cfg.window.size_secs = window_secs;
    // Sample files are old: accept any event time.
    cfg.validation.max_past_ms = i64::MAX / 4;
    cfg.validation.max_future_ms = i64::MAX / 4;
    for z in time_zones {
        let (c, tz) = z
            .split_once('=')
            .with_context(|| format!("--time-zone {z:?}: expected CAMPAIGN=IANA_ZONE"))?;
        cfg.campaigns.time_zones.insert(c.into(), tz.into());
    }
    let mut runtime = PluginRuntime::new(&cfg.plugins)?;
    if !params.is_empty() {
        // The plugin's name (from `init([])`) says which `[plugins.config.NAME]` these are.
        let name = runtime.load(plugin)?.info.name;
        let mut table = toml::Table::new();
        for kv in params {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--param {kv:?}: expected KEY=VALUE"))?;
            let value = match v.parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => toml::Value::String(v.into()),
            };
            table.insert(k.into(), value);
        }
        cfg.plugins.config.insert(name, table);
    }
    cfg.validate()?;
    runtime = runtime.with_config(&cfg.plugins);
    let p = runtime.load(plugin)?;
    println!(
        "# {} {} (sha256 {})  metrics: {}",
        p.info.name,
        p.info.version,
        p.info.sha256,
        p.info.metrics.join(", ")
    );
    let status = Arc::new(Status::default());
    let mut proc = Processor::new(&cfg, vec![p], status.clone());
    proc.build_tables = false;
    let text =
        std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let clock = Clock::now();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        proc.process(
            RawMessage {
                partition: 0,
                offset: i as i64,
                payload: Some(line.as_bytes()),
                timestamp_ms: None,
            },
            &clock,
        );
    }
    let rows = proc.publish(&clock);
    println!(
        "window_start\tcampaign_id\tad_id\tmetric\tvalue\tnumerator\tdenominator\tdimensions\twindow_end"
    );
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).map_or("?".into(), |t| t.to_rfc3339())
    };
    for r in &rows {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            time(r.window_start_ms),
            r.campaign_id,
            r.ad_id.as_deref().unwrap_or("-"),
            r.metric,
            r.value,
            r.numerator,
            r.denominator,
            r.dimensions.as_deref().unwrap_or("-"),
            time(r.window_end_ms),
        );
    }
    let dl = status.dead_letters.load(Relaxed);
    let errs = status.plugin_errors.load(Relaxed);
    println!(
        "# {} events, {} rows, {dl} rejected, {errs} plugin errors",
        status.valid_events.get(),
        rows.len()
    );
    for (code, n) in status
        .dead_letter_counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
    {
        println!("#   rejected {code}: {n}");
    }
    if errs > 0 {
        anyhow::bail!("the plugin failed on {errs} call(s); see the log above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_cfg(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Run {
            file,
            stream,
            event_time_bounds,
            ..
        } = cli.command
        else {
            panic!("not run")
        };
        run_config(Config::default(), file, stream, event_time_bounds).unwrap()
    }

    /// Issue 14, defect 7: `run --file` of 40-day-old events dead-letters every one of them as
    /// `time_out_of_range` by default (bounds from the wall clock) and accepts them with
    /// `--event-time-bounds off` or an instant near the data; through the processor, as a file
    /// run does.
    #[test]
    fn a_backfill_of_old_events_is_accepted_with_event_time_bounds() {
        use crate::event::{Reason, TimeBounds};
        let now = chrono::Utc::now().timestamp_millis();
        let t = now - 40 * 86_400_000;
        let line = format!(
            r#"{{"event_id":"e","event_type":"click","event_time":{t},"campaign_id":"c","ad_id":"a","user_id":"u"}}"#
        );
        let day_after = chrono::DateTime::from_timestamp_millis(t + 86_400_000)
            .unwrap()
            .to_rfc3339();
        for (flags, accepted) in [
            (&[][..], false),
            (&["--event-time-bounds", "wall-clock"][..], false),
            (&["--event-time-bounds", "off"][..], true),
            (&["--event-time-bounds", day_after.as_str()][..], true),
        ] {
            let mut args = vec!["admetrics", "run", "--file", "old.jsonl"];
            args.extend_from_slice(flags);
            let cfg = run_cfg(&args);
            let status = Arc::new(Status::default());
            let mut p = Processor::new(&cfg, Vec::new(), status.clone());
            p.process(
                RawMessage {
                    partition: 0,
                    offset: 0,
                    payload: Some(line.as_bytes()),
                    timestamp_ms: None,
                },
                &Clock::now(),
            );
            let dead = status.dead_by_reason[Reason::TimeOutOfRange as usize].get();
            let valid = status.valid_events.get();
            assert_eq!(
                (valid, dead),
                if accepted { (1, 0) } else { (0, 1) },
                "{flags:?}: {:?}",
                cfg.validation.time_bounds
            );
        }
        assert_eq!(
            run_cfg(&["admetrics", "run", "--file", "f"])
                .validation
                .time_bounds,
            TimeBounds::WallClock
        );
        assert!(
            Cli::try_parse_from(["admetrics", "run", "--event-time-bounds", "last month"]).is_err()
        );
    }
}
