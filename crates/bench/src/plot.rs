//! Plots as PNG and SVG with plotters: the latency CDF of one run, and mean / p99 latency against
//! request rate across runs (one line per label, e.g. per scheduling policy). The font and the
//! PNG + SVG writing are `lapsd_workload::plot`'s, shared with `lapsd sim`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lapsd_workload::plot::{save_png_and_svg, Figure, FONT_FAMILY as FONT};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::BenchError;
use crate::report::BenchReport;
use crate::stats::LatencySummary;

/// A line chart: named series of (x, y) points.
struct LineChart {
    title: String,
    x_desc: String,
    y_desc: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
    /// Draw a marker at each point (few points per line).
    markers: bool,
}

impl LineChart {
    /// Writes `<stem>.png` and `<stem>.svg` into `dir`; returns both paths.
    fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, BenchError> {
        Ok(save_png_and_svg(self, dir, stem, (900, 560))?)
    }
}

impl Figure for LineChart {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(text)?;
        let points = self.series.iter().flat_map(|(_, p)| p.iter());
        let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
        for &(x, y) in points {
            x_max = x_max.max(x);
            y_max = y_max.max(y);
        }
        let x_max = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };
        let y_max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc.as_str())
            .y_desc(self.y_desc.as_str())
            .label_style((FONT, 14))
            .draw()
            .map_err(text)?;
        for (index, (name, points)) in self.series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(text)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            if self.markers {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(text)?;
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(text)?;
        root.present().map_err(text)?;
        Ok(())
    }
}

/// Empirical CDF points (x = value, y = fraction <= value) of unsorted samples.
pub fn cdf_points(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, (i + 1) as f64 / n))
        .collect()
}

/// Draws the latency CDFs (end-to-end and TTFT of successful requests) of one run into `dir`.
pub fn plot_latency_cdf(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let ok = report.requests.iter().filter(|r| r.error.is_none());
    let e2e: Vec<f64> = ok.clone().map(|r| r.e2e_ms).collect();
    let ttft: Vec<f64> = ok.filter_map(|r| r.ttft_ms).collect();
    let label = report.label.clone().unwrap_or_else(|| "run".into());
    let rate = report
        .settings
        .rate_per_s
        .map_or("inf".to_string(), |r| format!("{r}"));
    let chart = LineChart {
        title: format!("Latency CDF: {label}, rate {rate} req/s"),
        x_desc: "latency (ms)".into(),
        y_desc: "fraction of requests".into(),
        series: vec![
            ("end-to-end".into(), cdf_points(&e2e)),
            ("time to first token".into(), cdf_points(&ttft)),
        ],
        markers: false,
    };
    chart.save(
        dir,
        &format!("{}_rate{}_latency_cdf", file_safe(&label), file_safe(&rate)),
    )
}

/// Draws mean and p99 end-to-end latency and TTFT against request rate, one line per label.
/// Reports without a finite rate (rate inf, traces) are skipped.
pub fn plot_vs_rate(reports: &[BenchReport], dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    /// File stem, axis title, which summary, which statistic of it.
    struct RateMetric {
        stem: &'static str,
        y_desc: &'static str,
        summary: fn(&BenchReport) -> Option<LatencySummary>,
        pick: fn(&LatencySummary) -> f64,
    }
    let metrics = [
        RateMetric {
            stem: "e2e_mean",
            y_desc: "mean end-to-end latency (ms)",
            summary: |r| r.e2e,
            pick: |s| s.mean_ms,
        },
        RateMetric {
            stem: "e2e_p99",
            y_desc: "p99 end-to-end latency (ms)",
            summary: |r| r.e2e,
            pick: |s| s.p99_ms,
        },
        RateMetric {
            stem: "ttft_mean",
            y_desc: "mean time to first token (ms)",
            summary: |r| r.ttft,
            pick: |s| s.mean_ms,
        },
        RateMetric {
            stem: "ttft_p99",
            y_desc: "p99 time to first token (ms)",
            summary: |r| r.ttft,
            pick: |s| s.p99_ms,
        },
    ];
    let mut files = Vec::new();
    for RateMetric {
        stem,
        y_desc,
        summary,
        pick,
    } in metrics
    {
        let mut by_label: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for report in reports {
            let (Some(rate), Some(s)) = (report.settings.rate_per_s, summary(report)) else {
                continue;
            };
            let label = report.label.clone().unwrap_or_else(|| "unlabelled".into());
            by_label.entry(label).or_default().push((rate, pick(&s)));
        }
        for points in by_label.values_mut() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let chart = LineChart {
            title: format!("{y_desc} vs request rate"),
            x_desc: "request rate (req/s)".into(),
            y_desc: y_desc.into(),
            series: by_label.into_iter().collect(),
            markers: true,
        };
        files.extend(chart.save(dir, &format!("{stem}_vs_rate"))?);
    }
    Ok(files)
}

fn file_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_are_sorted_and_end_at_one() {
        let points = cdf_points(&[30.0, 10.0, 20.0, f64::NAN]);
        assert_eq!(
            points,
            vec![(10.0, 1.0 / 3.0), (20.0, 2.0 / 3.0), (30.0, 1.0)]
        );
        assert!(cdf_points(&[]).is_empty());
    }

    #[test]
    fn chart_is_written_as_png_and_svg_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let chart = LineChart {
            title: "test chart".into(),
            x_desc: "x".into(),
            y_desc: "y".into(),
            series: vec![("line one".into(), vec![(0.0, 1.0), (1.0, 2.0)])],
            markers: true,
        };
        let files = chart.save(dir.path(), "t").unwrap();
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        assert!(svg.contains("test chart") && svg.contains("line one"));
    }
}
