//! Small SVG charts for the simulation report: line charts over time (one line per run) and
//! bar charts (one bar per run). Hand-written SVG keeps the build free of a plotting crate; the
//! files open in any browser.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 40.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A line per series over a shared x axis.
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// One bar per run.
pub struct BarChart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub bars: Vec<(String, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" step (1, 2 or 5 × 10^k) giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn format_tick(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 10_000.0) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// Frame, title, axes and ticks; returns the SVG so far and the scales.
fn frame(title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64) -> (String, f64, f64) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        LEFT,
        escape(title)
    );
    let (xs, ys) = (pw / x_max.max(1e-12), ph / y_max.max(1e-12));
    let y_step = tick_step(y_max);
    let mut v = 0.0;
    while v <= y_max * 1.0001 {
        let y = TOP + ph - v * ys;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            format_tick(v)
        );
        v += y_step;
    }
    if !x_label.is_empty() {
        let x_step = tick_step(x_max);
        let mut v = 0.0;
        while v <= x_max * 1.0001 {
            let x = LEFT + v * xs;
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + ph + 15.0,
                format_tick(v)
            );
            v += x_step;
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 6.0,
            escape(x_label)
        );
    }
    let _ = write!(
        s,
        r#"<text transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        escape(y_label)
    );
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#888"/>"##
    );
    (s, xs, ys)
}

fn legend(s: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + 16.0 * i as f64;
        let x = W - RIGHT + 12.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{:.1}" width="12" height="4" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 4.0,
            COLOURS[i % COLOURS.len()],
            x + 18.0,
            y + 1.0,
            escape(name)
        );
    }
}

impl LineChart<'_> {
    pub fn svg(&self) -> String {
        let points = self.series.iter().flat_map(|(_, p)| p);
        let x_max = points.clone().map(|p| p.0).fold(0.0, f64::max);
        let y_max = points.map(|p| p.1).fold(0.0, f64::max) * 1.05;
        let (mut s, xs, ys) = frame(self.title, self.x_label, self.y_label, x_max, y_max);
        let base = TOP + H - TOP - BOTTOM;
        for (i, (_, points)) in self.series.iter().enumerate() {
            let mut path = String::new();
            for (k, (x, y)) in points.iter().enumerate() {
                let _ = write!(
                    path,
                    "{}{:.1},{:.1} ",
                    if k == 0 { "M" } else { "L" },
                    LEFT + x * xs,
                    base - y * ys
                );
            }
            let _ = write!(
                s,
                r#"<path d="{path}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                COLOURS[i % COLOURS.len()]
            );
        }
        let names: Vec<&str> = self.series.iter().map(|(n, _)| n.as_str()).collect();
        legend(&mut s, &names);
        s.push_str("</svg>\n");
        s
    }
}

impl BarChart<'_> {
    pub fn svg(&self) -> String {
        let y_max = self.bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.1;
        let (mut s, _, ys) = frame(self.title, "", self.y_label, 1.0, y_max);
        let pw = W - LEFT - RIGHT;
        let slot = pw / self.bars.len().max(1) as f64;
        let base = H - BOTTOM;
        for (i, (name, value)) in self.bars.iter().enumerate() {
            let x = LEFT + slot * i as f64 + slot * 0.15;
            let h = value * ys;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                base - h,
                slot * 0.7,
                COLOURS[i % COLOURS.len()],
                x + slot * 0.35,
                base - h - 4.0,
                format_tick(*value),
                x + slot * 0.35,
                base + 14.0,
                escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(0.37), 0.1);
        assert_eq!(tick_step(730.0), 200.0);
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(3.0), "3");
    }

    #[test]
    fn charts_are_well_formed_svg_with_one_mark_per_series() {
        let chart = LineChart {
            title: "a <b>",
            x_label: "t",
            y_label: "y",
            series: vec![
                ("one".into(), vec![(0.0, 1.0), (1.0, 2.0)]),
                ("two".into(), vec![(0.0, 0.5), (2.0, 3.0)]),
            ],
        }
        .svg();
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert_eq!(chart.matches("<path").count(), 2);
        assert!(chart.contains("a &lt;b&gt;"));
        let bars = BarChart {
            title: "p90",
            y_label: "s",
            bars: vec![("x".into(), 1.0), ("y".into(), 2.0), ("z".into(), 0.5)],
        }
        .svg();
        // Three bars plus the background and the frame.
        assert_eq!(bars.matches("<rect").count(), 5);
    }
}
