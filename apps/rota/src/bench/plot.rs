//! Plots of a benchmark run as SVG (no dependency: the few shapes are written by hand): the
//! burn-down rate against the backlog size, and the distribution of start - due lags.

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 50.0;

fn header(out: &mut String, title: &str, subtitle: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>
<text x="{}" y="34" text-anchor="middle" font-size="10" fill="#555">{}</text>
"##,
        W / 2.0,
        escape(title),
        W / 2.0,
        escape(subtitle)
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round number at or above `v`, for an axis's end.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn y_axis(out: &mut String, max: f64, label: &str) {
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = H - BOTTOM - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - 20.0,
            LEFT - 6.0,
            y + 4.0,
            super::report::number(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        H / 2.0,
        H / 2.0,
        escape(label)
    );
}

/// Bars of tasks/s, one per backlog size.
pub fn burn_down(subtitle: &str, points: &[(String, f64)]) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "Burn-down rate by backlog size (tasks due at one moment)",
        subtitle,
    );
    let max = nice(points.iter().map(|p| p.1).fold(0.0, f64::max));
    y_axis(&mut out, max, "tasks/s");
    let plot_w = W - LEFT - 20.0;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / points.len().max(1) as f64;
    for (i, (label, v)) in points.iter().enumerate() {
        let h = plot_h * v / max;
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let _ = writeln!(
            out,
            r##"<rect x="{x}" y="{}" width="{}" height="{h}" fill="#4a7bd0"/><text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM - h,
            slot * 0.6,
            x + slot * 0.3,
            H - BOTTOM + 16.0,
            escape(label),
            x + slot * 0.3,
            H - BOTTOM - h - 4.0,
            super::report::number(*v)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The share of tasks started within each lag (a cumulative distribution), from sorted lags.
pub fn lag_distribution(title: &str, subtitle: &str, sorted_lags_ms: &[i64]) -> String {
    let mut out = String::new();
    header(&mut out, title, subtitle);
    let plot_w = W - LEFT - 20.0;
    let plot_h = H - TOP - BOTTOM;
    let max = nice(sorted_lags_ms.last().copied().unwrap_or(1).max(1) as f64);
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let x = LEFT + plot_w * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{}" text-anchor="middle">{} ms</text>"#,
            H - BOTTOM + 16.0,
            super::report::number(v)
        );
    }
    y_axis(&mut out, 100.0, "% of tasks started");
    let n = sorted_lags_ms.len().max(1) as f64;
    let mut path = String::new();
    let step = (sorted_lags_ms.len() / 500).max(1);
    for (i, lag) in sorted_lags_ms.iter().enumerate().step_by(step) {
        let x = LEFT + plot_w * (*lag as f64 / max);
        let y = H - BOTTOM - plot_h * ((i + 1) as f64 / n);
        let _ = write!(
            path,
            "{}{x:.1},{y:.1} ",
            if path.is_empty() { "M" } else { "L" }
        );
    }
    if let Some(last) = sorted_lags_ms.last() {
        let x = LEFT + plot_w * (*last as f64 / max);
        let _ = write!(path, "L{x:.1},{:.1}", TOP);
    }
    let _ = writeln!(
        out,
        r##"<path d="{path}" fill="none" stroke="#d04a4a" stroke-width="2"/>"##
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn plots_are_svg_with_their_data() {
        let bars = super::burn_down("b", &[("10k".into(), 5_000.0), ("100k".into(), 12_000.0)]);
        assert!(bars.starts_with("<svg") && bars.trim_end().ends_with("</svg>"));
        assert_eq!(bars.matches("<rect").count(), 3, "background and two bars");
        assert!(bars.contains("12,000"));
        let lags = super::lag_distribution("l", "s", &[1, 2, 3, 40]);
        assert!(lags.contains("<path d=\"M"));
        assert!(
            lags.contains("50.0 ms"),
            "the axis ends at a round number: {lags}"
        );
    }
}
