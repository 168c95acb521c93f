//! `--plot DIR`: mean and p99 latency against load for every policy, as PNG and SVG (plotters);
//! `--matrix`'s sorted ratios. The font and the PNG + SVG writing are `lapsd_workload::plot`'s,
//! shared with `lapsd bench`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use lapsd_workload::plot::{save_png_and_svg, Figure, FONT_FAMILY};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::SimError;
use crate::report::PolicyResult;

/// (load, mean latency, p99 latency) of one policy.
type Point = (f64, f64, f64);
/// Points per policy, in policy order of first appearance.
type Series = [(String, Vec<Point>)];

fn series(results: &[PolicyResult]) -> Vec<(String, Vec<Point>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for r in results {
        let Some(load) = r.load else { continue };
        if !map.contains_key(&r.policy) {
            order.push(r.policy.clone());
        }
        map.entry(r.policy.clone())
            .or_default()
            .push((load, r.mean_latency_s, r.p99_latency_s));
    }
    order
        .into_iter()
        .map(|p| {
            let mut pts = map.remove(&p).unwrap_or_default();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (p, pts)
        })
        .collect()
}

/// A chart with a linear x axis and a log y axis, the kind every figure here draws.
type LogYChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// A captioned chart on `area` over `x` and (log scale) `y`, its mesh labelled `(x, y)`: the
/// frame shared by every figure, so they look alike.
fn log_y_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: Range<f64>,
    y: Range<f64>,
    (x_desc, y_desc): (&str, &str),
) -> Result<LogYChart<'a, DB>, String> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT_FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y.log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT_FAMILY, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// Draws policy `i`'s curve in its palette colour, with its legend entry; returns the colour.
fn draw_curve<DB: DrawingBackend>(
    chart: &mut LogYChart<'_, DB>,
    i: usize,
    policy: &str,
    points: impl IntoIterator<Item = (f64, f64)>,
) -> Result<RGBAColor, String> {
    let color = Palette99::pick(i).to_rgba();
    let style = ShapeStyle::from(color).stroke_width(2);
    chart
        .draw_series(LineSeries::new(points, style))
        .map_err(|e| e.to_string())?
        .label(policy)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    Ok(color)
}

/// The legend of the curves, upper left.
fn draw_legend<'a, DB: DrawingBackend + 'a>(chart: &mut LogYChart<'a, DB>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT_FAMILY, 13))
        .draw()
        .map_err(|e| e.to_string())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    data: &Series,
    pick: fn(&Point) -> f64,
) -> Result<(), String> {
    let points = data.iter().flat_map(|(_, pts)| pts.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in points {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        let y = pick(p).max(1e-6);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err("no results with a load to plot (use --load or --loads)".into());
    }
    let pad = ((x1 - x0) * 0.05).max(0.01);
    let mut chart = log_y_chart(
        area,
        title,
        (x0 - pad)..(x1 + pad),
        y0 * 0.8..y1 * 1.25,
        ("load (utilisation)", "latency (s, log scale)"),
    )?;
    for (i, (policy, pts)) in data.iter().enumerate() {
        let color = draw_curve(&mut chart, i, policy, pts.iter().map(|p| (p.0, pick(p))))?;
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, pick(p)), 3, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    draw_legend(&mut chart)
}

fn draw_figure<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    data: &Series,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, (FONT_FAMILY, 26))
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    draw_panel(&panels[0], "mean latency", data, |p| p.1)?;
    draw_panel(&panels[1], "p99 latency", data, |p| p.2)?;
    root.present().map_err(|e| e.to_string())
}

/// Mean and p99 latency against load, side by side.
struct LatencyVsLoad<'a> {
    title: &'a str,
    data: Vec<(String, Vec<Point>)>,
}

impl Figure for LatencyVsLoad<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_figure(root, self.title, &self.data)
    }
}

/// Writes `DIR/NAME.png` and `DIR/NAME.svg`; returns their paths.
pub fn plot_latency_vs_load(
    dir: &Path,
    name: &str,
    title: &str,
    results: &[PolicyResult],
) -> Result<Vec<PathBuf>, SimError> {
    let figure = LatencyVsLoad {
        title,
        data: series(results),
    };
    Ok(save_png_and_svg(&figure, dir, name, (1400, 600))?)
}

fn draw_sorted_ratios<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    curves: &[(String, Vec<f64>)],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let y1 = curves
        .iter()
        .flat_map(|c| c.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        .min(50.0);
    let mut chart = log_y_chart(
        &root,
        title,
        0f64..1f64,
        0.95f64..y1 * 1.1,
        (
            "share of regimes",
            "mean latency / best non-oracle (log scale)",
        ),
    )?;
    for (i, (policy, values)) in curves.iter().enumerate() {
        let len = values.len().max(2) as f64 - 1.0;
        let points = values
            .iter()
            .enumerate()
            .map(|(j, v)| (j as f64 / len, v.clamp(0.95, y1 * 1.1)));
        draw_curve(&mut chart, i, policy, points)?;
    }
    draw_legend(&mut chart)?;
    root.present().map_err(|e| e.to_string())
}

/// Each policy's sorted ratios, one curve per policy.
struct SortedRatios<'a> {
    title: &'a str,
    curves: &'a [(String, Vec<f64>)],
}

impl Figure for SortedRatios<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_sorted_ratios(root, self.title, self.curves)
    }
}

/// Each policy's sorted ratios (one curve per policy) as `DIR/NAME.png` and `DIR/NAME.svg`.
pub fn plot_sorted_ratios(
    dir: &Path,
    name: &str,
    title: &str,
    curves: &[(String, Vec<f64>)],
) -> Result<Vec<PathBuf>, SimError> {
    let figure = SortedRatios { title, curves };
    Ok(save_png_and_svg(&figure, dir, name, (1100, 700))?)
}
