//! The chart: latency over time, one panel per scenario that ran (a column
//! per delay). Per time bucket the slowest answered request (blue) and the
//! median (grey); restarts as vertical lines; failed requests as marks at
//! their own latency: refused ×, reset ▲, timeout ●. Drawn with plotters.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

use crate::load::Outcome;
use crate::scenario::{Scenario, Status};
use crate::stats;

const PANEL_W: u32 = 860;
const PANEL_H: u32 = 190;
const Y_MIN: f64 = 0.02;
const Y_MAX: f64 = 20_000.0;

pub fn draw(path: &Path, scenarios: &[Scenario]) -> Result<(), String> {
    draw_inner(path, scenarios).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw_inner(path: &Path, scenarios: &[Scenario]) -> Result<(), Box<dyn Error>> {
    let mut delays: Vec<f64> = Vec::new();
    for s in scenarios {
        if !delays.contains(&s.delay) {
            delays.push(s.delay);
        }
    }
    let shown = |d: f64| {
        scenarios
            .iter()
            .filter(move |s| s.delay == d && !matches!(s.status, Status::Skipped(_)))
    };
    let rows = delays
        .iter()
        .map(|&d| shown(d).count())
        .max()
        .unwrap_or(0)
        .max(1);
    let cols = delays.len().max(1);
    let x_max = scenarios.iter().map(|s| s.secs).fold(1.0, f64::max);

    let root = SVGBackend::new(path, (PANEL_W * cols as u32, PANEL_H * rows as u32 + 40))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "relaunch handoff: request latency (ms, log scale) over time (s); | restart, × refused, ▲ reset, ● timeout",
        ("sans-serif", 16),
    )?;
    let grid = root.split_evenly((rows, cols));
    for (c, &delay) in delays.iter().enumerate() {
        for (r, s) in shown(delay).enumerate() {
            panel(&grid[r * cols + c], s, x_max, r == 0 && c == 0)?;
        }
    }
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    s: &Scenario,
    x_max: f64,
    legend: bool,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let f = &s.figures;
    let caption = format!(
        "{} @{} s: {} ok, {} refused, {} reset, {} timeout",
        s.kind.name(),
        s.delay,
        f.ok,
        f.refused,
        f.reset,
        f.timeout
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 13))
        .margin(6)
        .x_label_area_size(22)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..x_max, (Y_MIN..Y_MAX).log_scale())?;
    chart
        .configure_mesh()
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v}"))
        .max_light_lines(0)
        .bold_line_style(BLACK.mix(0.08))
        .label_style(("sans-serif", 10))
        .draw()?;

    let clamp = |y: f64| y.clamp(Y_MIN, Y_MAX);
    for &at in &s.restarts_at {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(at, Y_MIN), (at, Y_MAX)],
            BLACK.mix(0.6),
        )))?;
    }
    let buckets = stats::buckets(&s.samples, s.secs, (s.secs / 300.0).max(0.005));
    let p50 = runs(&buckets, |b| b.p50_ms);
    let max = runs(&buckets, |b| b.max_ms);
    for (i, run) in p50.into_iter().enumerate() {
        let series = chart.draw_series(LineSeries::new(
            run.into_iter().map(|(x, y)| (x, clamp(y))),
            RGBColor(150, 150, 150),
        ))?;
        if i == 0 && legend {
            series.label("median").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], RGBColor(150, 150, 150))
            });
        }
    }
    for (i, run) in max.into_iter().enumerate() {
        let series = chart.draw_series(LineSeries::new(
            run.into_iter().map(|(x, y)| (x, clamp(y))),
            BLUE,
        ))?;
        if i == 0 && legend {
            series
                .label("slowest")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLUE));
        }
    }
    for b in &buckets {
        for &(kind, ms) in &b.failures {
            let at = (b.at, clamp(ms));
            match kind {
                Outcome::Refused => {
                    chart.draw_series(std::iter::once(Cross::new(at, 4, RED.stroke_width(2))))?
                }
                Outcome::Reset => chart.draw_series(std::iter::once(TriangleMarker::new(
                    at,
                    4,
                    RGBColor(230, 120, 0).filled(),
                )))?,
                Outcome::Timeout => {
                    chart.draw_series(std::iter::once(Circle::new(at, 3, MAGENTA.filled())))?
                }
                Outcome::Ok => continue,
            };
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 10))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    Ok(())
}

/// Consecutive buckets that have a value, as separate lines: a gap in the
/// chart is a stretch where nothing was answered.
fn runs(
    buckets: &[stats::Bucket],
    value: impl Fn(&stats::Bucket) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for b in buckets {
        match value(b) {
            Some(v) => current.push((b.at, v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
