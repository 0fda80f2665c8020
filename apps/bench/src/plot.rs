//! Plots of a benchmark run as SVG, drawn with `plotters`: the burn-down rate against the
//! backlog size, and the distribution of start - due lags.

use crate::report::number;
use plotters::prelude::*;

const SIZE: (u32, u32) = (640, 320);

/// Bars of tasks/s, one per backlog size.
pub fn burn_down(subtitle: &str, points: &[(String, f64)]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "Burn-down rate by backlog size (tasks due at one moment)",
            ("sans-serif", 16),
        )?;
        let max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let n = points.len().max(1) as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(subtitle, ("sans-serif", 11))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d((0u32..n).into_segmented(), 0f64..max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("tasks/s")
            .y_label_formatter(&|v| number(*v))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => points
                    .get(*i as usize)
                    .map(|p| p.0.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        chart.draw_series(
            Histogram::vertical(&chart)
                .style(RGBColor(74, 123, 208).filled())
                .margin(20)
                .data(points.iter().enumerate().map(|(i, p)| (i as u32, p.1))),
        )?;
        chart.draw_series(points.iter().enumerate().map(|(i, p)| {
            Text::new(
                number(p.1),
                (SegmentValue::CenterOf(i as u32), p.1 * 1.04),
                ("sans-serif", 12).into_font(),
            )
        }))?;
        root.present()?;
    }
    Ok(svg)
}

/// The share of tasks started within each lag (a cumulative distribution), from sorted lags.
pub fn lag_distribution(
    title: &str,
    subtitle: &str,
    sorted_lags_ms: &[i64],
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 16))?;
        let max = sorted_lags_ms.last().copied().unwrap_or(1).max(1) as f64 * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(subtitle, ("sans-serif", 11))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..max, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("start - due, ms")
            .y_desc("% of tasks started")
            .draw()?;
        let n = sorted_lags_ms.len().max(1) as f64;
        let step = (sorted_lags_ms.len() / 500).max(1);
        let curve = sorted_lags_ms
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, lag)| (*lag as f64, (i + 1) as f64 / n * 100.0))
            .chain(sorted_lags_ms.last().map(|l| (*l as f64, 100.0)));
        chart.draw_series(LineSeries::new(
            curve,
            RGBColor(208, 74, 74).stroke_width(2),
        ))?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    #[test]
    fn plots_are_svg_with_their_data() {
        let bars =
            super::burn_down("b", &[("10k".into(), 5_000.0), ("100k".into(), 12_000.0)]).unwrap();
        assert!(bars.starts_with("<svg") && bars.trim_end().ends_with("</svg>"));
        assert!(bars.contains("12,000") && bars.contains("100k"), "{bars}");
        let lags = super::lag_distribution("l", "s", &[1, 2, 3, 40]).unwrap();
        assert!(lags.contains("<polyline"), "{lags}");
        assert!(lags.contains("% of tasks started"));
    }
}
