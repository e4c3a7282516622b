//! Figures: samples per (N, backend, pass), summarised as medians with their spread,
//! ratios taken pass by pass, and written as markdown, CSV and SVG.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

pub struct Figure {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// Plot the values on a log scale (they span decades).
    pub log_y: bool,
    /// The lines, in the order they were first recorded (backends, or lookup paths).
    series: Vec<&'static str>,
    /// `samples[(n, series)][pass]`.
    samples: BTreeMap<(u32, &'static str), BTreeMap<usize, f64>>,
}

/// The order lines and columns appear in: the backends, then whatever else.
const SERIES_ORDER: [&str; 8] =
    ["none", "rewrite-xdp", "rewrite-tc", "iptables-nft", "iptables-legacy", "nft-map", "empty-xdp", "empty-tc"];

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarise(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 };
    Some(Summary { median, min: sorted[0], max: sorted[sorted.len() - 1] })
}

/// The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value`, so that the
/// axis' quarter ticks are round numbers.
fn nice_ceiling(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|step| step * power).find(|nice| *nice >= value).unwrap_or(value)
}

/// An integer with thousands separated: 100,000.
pub fn thousands(value: u32) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A number with three significant digits, thousands separated.
pub fn human(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).max(0) as usize;
    let rounded = format!("{value:.decimals$}");
    let (integer, fraction) = rounded.split_once('.').map_or((rounded.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (index, digit) in integer.chars().enumerate() {
        if index > 0 && (integer.len() - index).is_multiple_of(3) && digit != '-' {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match fraction {
        Some(fraction) => format!("{grouped}.{fraction}"),
        None => grouped,
    }
}

/// The series whose ratios a figure reports, against which baselines (when both are
/// in the figure).
const RATIOS: [(&str, &str); 10] = [
    ("rewrite-xdp", "none"),
    ("rewrite-xdp", "iptables-nft"),
    ("rewrite-xdp", "nft-map"),
    ("rewrite-xdp", "empty-xdp"),
    ("rewrite-tc", "none"),
    ("rewrite-tc", "iptables-nft"),
    ("rewrite-tc", "nft-map"),
    ("rewrite-tc", "empty-tc"),
    ("empty-xdp", "none"),
    ("empty-tc", "none"),
];

impl Figure {
    pub fn new(id: &'static str, title: &'static str, unit: &'static str, higher_is_better: bool, log_y: bool) -> Self {
        Self { id, title, unit, higher_is_better, log_y, series: Vec::new(), samples: BTreeMap::new() }
    }

    pub fn record(&mut self, mappings: u32, series: &'static str, pass: usize, value: f64) {
        if !self.series.contains(&series) {
            self.series.push(series);
        }
        self.samples.entry((mappings, series)).or_default().insert(pass, value);
    }

    fn sizes(&self) -> Vec<u32> {
        let mut sizes: Vec<u32> = self.samples.keys().map(|(n, _)| *n).collect();
        sizes.dedup();
        sizes
    }

    /// The series in a stable order: as listed in `order` first, then the others.
    fn ordered_series(&self) -> Vec<&'static str> {
        let mut ordered = self.series.clone();
        ordered.sort_by_key(|name| SERIES_ORDER.iter().position(|known| known == name).unwrap_or(usize::MAX));
        ordered
    }

    pub fn summary(&self, mappings: u32, series: &str) -> Option<Summary> {
        let values: Vec<f64> =
            self.samples.iter().find(|((n, name), _)| *n == mappings && *name == series)?.1.values().copied().collect();
        summarise(&values)
    }

    /// `numerator / denominator`, computed within each pass (both measured close in
    /// time), then summarised over the passes.
    pub fn ratio(&self, mappings: u32, numerator: &str, denominator: &str) -> Option<Summary> {
        let find = |series: &str| {
            self.samples.iter().find(|((n, name), _)| *n == mappings && *name == series).map(|(_, passes)| passes)
        };
        let top = find(numerator)?;
        let bottom = find(denominator)?;
        let ratios: Vec<f64> =
            top.iter().filter_map(|(pass, value)| bottom.get(pass).filter(|b| **b > 0.0).map(|b| value / b)).collect();
        summarise(&ratios)
    }

    pub fn markdown(&self) -> String {
        let backends = self.ordered_series();
        let ratios: Vec<(&str, &str)> =
            RATIOS.into_iter().filter(|(a, b)| backends.contains(a) && backends.contains(b)).collect();
        let mut out = format!("### {} ({})\n\n", self.title, self.unit);
        out.push_str("Median of the passes, [min–max].");
        if !ratios.is_empty() {
            out.push_str(" Ratios are taken pass by pass, then their median.");
        }
        out.push_str(if self.higher_is_better { " Higher is better.\n\n" } else { " Lower is better.\n\n" });
        let mut header = String::from("| N |");
        let mut rule = String::from("|---:|");
        for backend in &backends {
            let _ = write!(header, " {} |", backend);
            rule.push_str("---:|");
        }
        for (a, b) in &ratios {
            let _ = write!(header, " {} ÷ {} |", a, b);
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for n in self.sizes() {
            let mut row = format!("| {} |", thousands(n));
            for backend in &backends {
                match self.summary(n, backend) {
                    Some(s) => {
                        let _ = write!(row, " {} [{}–{}] |", human(s.median), human(s.min), human(s.max));
                    }
                    None => row.push_str(" – |"),
                }
            }
            for (a, b) in &ratios {
                match self.ratio(n, a, b) {
                    Some(s) => {
                        let _ = write!(row, " {:.2}× [{:.2}–{:.2}] |", s.median, s.min, s.max);
                    }
                    None => row.push_str(" – |"),
                }
            }
            let _ = writeln!(out, "{row}");
        }
        out
    }

    pub fn csv(&self) -> String {
        let mut out = String::from("mappings,backend,pass,value\n");
        for ((n, series), passes) in &self.samples {
            for (pass, value) in passes {
                let _ = writeln!(out, "{n},{series},{pass},{value}");
            }
        }
        out
    }

    /// A line chart of the medians against N (log scale), one line per backend.
    pub fn svg(&self) -> String {
        let (width, height, left, right, top, bottom) = (720.0, 420.0, 80.0, 170.0, 40.0, 50.0);
        let sizes = self.sizes();
        let backends = self.ordered_series();
        let points: Vec<(&str, Vec<(u32, f64)>)> = backends
            .iter()
            .map(|b| (*b, sizes.iter().filter_map(|n| self.summary(*n, b).map(|s| (*n, s.median))).collect()))
            .collect();
        let values = points.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v));
        let max = values.clone().fold(f64::MIN, f64::max).max(f64::MIN_POSITIVE);
        let min = values.filter(|v| *v > 0.0).fold(f64::MAX, f64::min).min(max);
        let (x_min, x_max) = (
            1f64.max(f64::from(*sizes.first().unwrap_or(&1))).log10(),
            f64::from(*sizes.last().unwrap_or(&10)).log10(),
        );
        let x_span = (x_max - x_min).max(1.0);
        let x = |n: u32| left + (f64::from(n).log10() - x_min) / x_span * (width - left - right);
        let (y_low, y_high) = if self.log_y {
            (min.log10().floor(), max.log10().ceil().max(min.log10().floor() + 1.0))
        } else {
            (0.0, nice_ceiling(max * 1.05))
        };
        let y = |v: f64| {
            let scaled =
                if self.log_y { (v.max(f64::MIN_POSITIVE).log10() - y_low) / (y_high - y_low) } else { v / y_high };
            height - bottom - scaled * (height - top - bottom)
        };
        let colours = ["#555555", "#d62728", "#ff7f0e", "#1f77b4", "#17becf", "#2ca02c"];
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"22\" font-size=\"15\">{} ({})</text>\n",
            self.title, self.unit
        );
        let (x0, x1, y0, y1) = (left, width - right, height - bottom, top);
        let _ = writeln!(svg, "<path d=\"M{x0},{y1} L{x0},{y0} L{x1},{y0}\" stroke=\"black\" fill=\"none\"/>");
        for n in &sizes {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x(*n),
                y0 + 18.0,
                thousands(*n)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">mappings (N, log scale)</text>",
            (x0 + x1) / 2.0,
            height - 8.0
        );
        let ticks: Vec<f64> = if self.log_y {
            (y_low as i32..=y_high as i32).map(|e| 10f64.powi(e)).collect()
        } else {
            (0..=4).map(|i| y_high * f64::from(i) / 4.0).collect()
        };
        for tick in ticks {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><path d=\"M{x0},{:.1} L{x1},{:.1}\" stroke=\"#eeeeee\"/>",
                x0 - 6.0,
                y(tick) + 4.0,
                if tick < 0.01 { format!("{tick:e}") } else { human(tick) },
                y(tick),
                y(tick)
            );
        }
        for (index, (backend, line)) in points.iter().enumerate() {
            // A backend keeps its colour in every figure, whichever backends the figure has.
            let colour =
                colours[SERIES_ORDER.iter().position(|known| known == backend).unwrap_or(index) % colours.len()];
            let path: Vec<String> = line.iter().map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v))).collect();
            if !path.is_empty() {
                let _ = writeln!(
                    svg,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                    path.join(" ")
                );
                for (n, v) in line {
                    let _ =
                        writeln!(svg, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>", x(*n), y(*v));
                }
            }
            let legend_y = top + 20.0 * index as f64;
            let _ = writeln!(
                svg,
                "<path d=\"M{:.1},{legend_y} l20,0\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x1 + 15.0,
                x1 + 40.0,
                legend_y + 4.0,
                backend
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Writes `<id>.csv` and `<id>.svg` into `dir`.
    pub fn write_files(&self, dir: &Path) {
        std::fs::write(dir.join(format!("{}.csv", self.id)), self.csv()).expect("write a CSV");
        std::fs::write(dir.join(format!("{}.svg", self.id)), self.svg()).expect("write an SVG");
    }
}
