//! The live terminal view of a running daemon: throughput, lag, watermark, commits, latency and
//! the current window's top campaigns. Redraws in place on a terminal, one block per second
//! otherwise (so it reads well in CI logs and `tee`).

use std::fmt::Write;
use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::status::Status;

pub struct Progress {
    started: Instant,
    last: Instant,
    last_messages: u64,
    tty: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            started: Instant::now(),
            last: Instant::now(),
            last_messages: 0,
            tty: std::io::stdout().is_terminal(),
        }
    }

    /// A view whose uptime and rate count from `started` (for the summary frame at the end of a
    /// run: the rate is then the whole run's average).
    pub fn since(started: Instant) -> Self {
        Progress {
            started,
            last: started,
            ..Self::new()
        }
    }

    /// Renders one frame; `produced` is the load generator's count when one runs in-process.
    pub fn render(&mut self, s: &Status, produced: Option<u64>) -> String {
        let now = Instant::now();
        let msgs = s.messages.get();
        let rate = (msgs - self.last_messages) as f64
            / now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        self.last_messages = msgs;
        let wm = s.watermark_ms.load(Relaxed);
        let wm_txt = if wm == i64::MIN {
            "-".to_string()
        } else {
            let delay = chrono::Utc::now().timestamp_millis() - wm;
            format!("{} (delay {:.1}s)", fmt_time(wm), delay as f64 / 1000.0)
        };
        let (p50, p99) = {
            let h = s.latency.lock().unwrap();
            (h.quantile(0.5), h.quantile(0.99))
        };
        let ms = |v: Option<i64>| v.map_or("-".into(), |v| format!("{v} ms"));
        let mut out = String::new();
        if self.tty {
            out.push_str("\x1b[H\x1b[2J");
        }
        let _ = writeln!(
            out,
            "admetrics — up {:.0}s",
            self.started.elapsed().as_secs_f64()
        );
        if let Some(p) = produced {
            let _ = writeln!(out, "  produced      {p:>12}");
        }
        let _ = writeln!(
            out,
            "  consumed      {msgs:>12}   {rate:>9.0} ev/s   lag {}",
            s.lag()
        );
        let _ = writeln!(
            out,
            "  committed     {:>12}   commits {}   last commit {:.1} ms   windows final {}   open {}",
            s.committed_events.get(),
            s.commits.get(),
            s.last_commit_us.load(Relaxed) as f64 / 1000.0,
            s.windows_finalized.get(),
            s.open_windows.get()
        );
        let _ = writeln!(out, "  watermark     {wm_txt}");
        let _ = writeln!(
            out,
            "  produce→visible latency p50 {} p99 {}   late {}   dead letters {}   plugin errors {}",
            ms(p50),
            ms(p99),
            s.late_events.get(),
            s.dead_letters.load(Relaxed),
            s.plugin_errors.load(Relaxed)
        );
        let (window, mut lines) = s.current.lock().unwrap().clone();
        if window != i64::MIN && !lines.is_empty() {
            lines.sort_by(|a, b| {
                b.revenue
                    .total_cmp(&a.revenue)
                    .then(b.impressions.total_cmp(&a.impressions))
            });
            let _ = writeln!(
                out,
                "  window {} — top campaigns by revenue",
                fmt_time(window)
            );
            let _ = writeln!(
                out,
                "    {:<14} {:>9} {:>7} {:>6} {:>7} {:>7} {:>11} {:>11}",
                "campaign", "impr", "clicks", "conv", "CTR", "CVR", "revenue", "attributed"
            );
            for l in lines.iter().take(8) {
                let _ = writeln!(
                    out,
                    "    {:<14} {:>9.0} {:>7.0} {:>6.0} {:>6.2}% {:>6.2}% {:>11.2} {:>11.2}",
                    l.campaign,
                    l.impressions,
                    l.clicks,
                    l.conversions,
                    l.ctr() * 100.0,
                    l.cvr() * 100.0,
                    l.revenue,
                    l.attributed_revenue
                );
            }
        }
        out
    }
}

fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or("?".into(), |t| t.format("%H:%M:%S").to_string())
}
