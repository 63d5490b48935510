//! How a `run` shows what it measured: the live progress line, the summary
//! table, and the picture (throughput and p99 over time, crashes marked).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::prelude::*;

use crate::run::Report;

/// How often the progress line redraws itself.
const TICK: Duration = Duration::from_millis(250);

/// The live progress line (drawn on stderr when it is a terminal; hidden
/// with `quiet`).
#[must_use]
pub fn progress(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(TICK);
    bar
}

/// Prints the summary table and the verdicts.
pub fn print(report: &Report) {
    let s = &report.settings;
    println!();
    println!(
        "{} users as {} accounts, {} sellers, {} for {:.0} s{}{}",
        s.users,
        s.accounts,
        s.sellers,
        match s.rate {
            Some(rate) => match s.rate_to {
                Some(to) => format!("open loop ramping from {rate} to {to} requests/s"),
                None => format!("open loop at {rate} requests/s"),
            },
            None => format!("closed loop, think {} ms", s.think_ms),
        },
        report.seconds,
        if s.spawned_nodes > 0 {
            format!(", {} spawned nodes", s.spawned_nodes)
        } else {
            String::new()
        },
        if s.argon2_lowered {
            " (Argon2id lowered for the load test)"
        } else {
            ""
        }
    );
    println!(
        "{:<8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "op", "ok", "errors", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms"
    );
    for (name, op) in &report.ops {
        let l = &op.latency_ms;
        println!(
            "{name:<8} {:>9} {:>7} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            op.ok, op.errors, op.per_sec, l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    let e = &report.errors;
    println!(
        "errors users saw: {}{}",
        e.user_visible_total,
        if e.user_visible.is_empty() {
            String::new()
        } else {
            format!(" {:?}", e.user_visible)
        }
    );
    for (kind, message) in &e.samples {
        println!("  first {kind}: {message}");
    }
    println!(
        "attempts the client library retried away: {} {:?}",
        e.retried_away_total, e.retried_away
    );
    for c in &report.crashes {
        println!(
            "crash: node {}{} {} at {:.1} s, new leader after {} ms{}: failover gap {} ms{}",
            c.node,
            if c.was_leader { " (leader)" } else { "" },
            c.how,
            c.at_ms as f64 / 1000.0,
            c.new_leader_after_ms
                .map_or("?".to_owned(), |g| g.to_string()),
            c.restarted_at_ms
                .map(|r| format!(", restarted at {:.1} s", r as f64 / 1000.0))
                .unwrap_or_default(),
            c.gap_ms.map_or("?".to_owned(), |g| g.to_string()),
            c.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    println!(
        "longest time without a finished write: {} ms",
        report.longest_write_gap_ms
    );
    if let Some(p) = &report.peak {
        println!(
            "peak held: {:.0} ops/s for {} s from {} s with every second's p99 under {} ms",
            p.ops_per_sec, p.window_s, p.from_s, p.p99_under_ms
        );
    }
    if !report.crashes.is_empty() {
        let l = &report.latency_outside_crashes_ms;
        println!(
            "latency outside the crash windows: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            l.p50, l.p99, l.p999, l.max
        );
    }
    let a = &report.audit;
    println!(
        "audit: {} -- ledger {}, state digests {} (index {}), {} of {} acknowledged purchases settled exactly once",
        if a.clean { "CLEAN" } else { "NOT CLEAN" },
        if a.ledger_clean { "balanced on every node" } else { "NOT balanced" },
        if a.digests_equal { "equal" } else { "DIFFERENT" },
        a.applied_index,
        a.purchases_settled_once,
        a.purchases_acknowledged
    );
    for problem in &a.problems {
        println!("  problem: {problem}");
    }
}

/// Draws throughput (successes per second) and p99 latency over time, one
/// panel each, with a red line at every crash, as SVG.
///
/// # Errors
/// When the file cannot be written.
pub fn plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(350);
        let seconds = report.per_second.len().max(1) as f64;
        #[allow(clippy::cast_precision_loss)]
        let throughput: Vec<(f64, f64)> = report
            .per_second
            .iter()
            .map(|s| (s.t as f64, s.ok as f64))
            .collect();
        let p99: Vec<(f64, f64)> = report
            .per_second
            .iter()
            .filter(|s| s.ok > 0)
            .map(|s| (s.t as f64, s.p99_ms))
            .collect();
        let crashes: Vec<(f64, String)> = report
            .crashes
            .iter()
            .map(|c| {
                let what = if c.was_leader { "leader" } else { "node" };
                (
                    c.at_ms as f64 / 1000.0,
                    format!(" {what} {} killed", c.node),
                )
            })
            .collect();
        for (area, series, caption, unit) in [
            (
                &top,
                &throughput,
                "successful operations per second",
                "ops/s",
            ),
            (&bottom, &p99, "p99 latency per second", "ms"),
        ] {
            let max = series.iter().map(|(_, y)| *y).fold(1.0_f64, f64::max) * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..seconds, 0.0..max)?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(unit)
                .draw()?;
            chart.draw_series(LineSeries::new(series.iter().copied(), &BLUE))?;
            for (at, label) in &crashes {
                chart.draw_series(LineSeries::new([(*at, 0.0), (*at, max)], &RED))?;
                chart.draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*at, max * 0.95),
                    ("sans-serif", 14).into_font().color(&RED),
                )))?;
            }
        }
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw {}", path.display()))
}
