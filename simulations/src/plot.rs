//! Line charts as PNG files with plotters' bitmap backend. Text uses a DejaVu Sans subset embedded in the binary
//! (`assets/`, ~11 KB: printable ASCII), so no system font library is needed. Log axes are drawn on transformed
//! values with labels at the powers only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::SimError;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The embedded file is a valid TrueType font; a failure would only lose the labels.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// How an axis maps values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Axis {
    Linear,
    /// Powers of two labeled (1, 2, 4, ...).
    Log2,
    /// Powers of ten labeled (0.1, 1, 10, ...).
    Log10,
}

impl Axis {
    fn to(self, v: f64) -> f64 {
        match self {
            Axis::Linear => v,
            Axis::Log2 => v.max(1e-12).log2(),
            Axis::Log10 => v.max(1e-12).log10(),
        }
    }

    fn label(self, v: f64) -> String {
        let power = |base: f64| {
            if (v - v.round()).abs() > 1e-6 {
                return String::new();
            }
            let x = base.powf(v.round());
            if x >= 1.0 {
                format!("{x:.0}")
            } else {
                format!("{x}")
            }
        };
        match self {
            Axis::Linear => {
                if v.abs() >= 100.0 || v == v.round() {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            }
            Axis::Log2 => power(2.0),
            Axis::Log10 => power(10.0),
        }
    }
}

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Index into the palette (default: the series' position).
    pub color: Option<usize>,
    pub dashed: bool,
    /// A thin line without markers (a reference level).
    pub reference: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, color: None, dashed: false, reference: false }
    }

    pub fn color(mut self, i: usize) -> Series {
        self.color = Some(i);
        self
    }

    pub fn dashed(mut self) -> Series {
        self.dashed = true;
        self
    }

    pub fn reference(mut self) -> Series {
        self.reference = true;
        self
    }
}

/// Where the legend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legend {
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
}

/// One panel.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: Axis,
    pub y_axis: Axis,
    pub series: Vec<Series>,
    /// Vertical marks (x values), e.g. node failures.
    pub marks: Vec<f64>,
    pub legend: Legend,
}

impl Chart {
    pub fn new(title: impl Into<String>, x_label: &str, y_label: &str, x_axis: Axis, y_axis: Axis) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_axis,
            y_axis,
            series: Vec::new(),
            marks: Vec::new(),
            legend: Legend::UpperLeft,
        }
    }

    pub fn series(mut self, s: Vec<Series>) -> Chart {
        self.series = s;
        self
    }

    pub fn legend(mut self, l: Legend) -> Chart {
        self.legend = l;
        self
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draws `charts` side by side into a `width x height` PNG at `path`.
pub fn save(path: &Path, charts: &[Chart], width: u32, height: u32) -> Result<(), SimError> {
    save_grid(path, charts, (1, charts.len().max(1)), width, height)
}

/// Draws `charts` row by row into a grid of `(rows, cols)` panels.
pub fn save_grid(path: &Path, charts: &[Chart], grid: (usize, usize), width: u32, height: u32) -> Result<(), SimError> {
    register_font();
    let err = |e: &dyn std::fmt::Display| SimError::Plot(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let panels = root.split_evenly(grid);
        for (area, chart) in panels.iter().zip(charts) {
            draw(area, chart).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    write_indexed_png(path, &rgb, width, height).map_err(|e| err(&e))
}

/// Writes an RGB image as a palette PNG of its 256 most frequent colors (every other color, a few
/// anti-aliased edge pixels, becomes the nearest of those): a quarter of the size of an RGB PNG.
fn write_indexed_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), Box<dyn std::error::Error>> {
    let mut counts: HashMap<[u8; 3], u64> = HashMap::new();
    for p in rgb.chunks_exact(3) {
        *counts.entry([p[0], p[1], p[2]]).or_insert(0) += 1;
    }
    let mut colors: Vec<([u8; 3], u64)> = counts.into_iter().collect();
    colors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    colors.truncate(256);
    let mut index: HashMap<[u8; 3], u8> = colors.iter().enumerate().map(|(i, c)| (c.0, i as u8)).collect();
    let mut pixels = Vec::with_capacity(rgb.len() / 3);
    for p in rgb.chunks_exact(3) {
        let c = [p[0], p[1], p[2]];
        let i = *index.entry(c).or_insert_with(|| {
            let d = |q: &[u8; 3]| (0..3).map(|k| (q[k] as i32 - c[k] as i32).pow(2)).sum::<i32>();
            (0..colors.len()).min_by_key(|&j| d(&colors[j].0)).unwrap_or(0) as u8
        });
        pixels.push(i);
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, width, height);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(colors.iter().flat_map(|c| c.0).collect::<Vec<u8>>());
    enc.set_compression(png::Compression::Best);
    enc.write_header()?.write_image_data(&pixels)?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    c: &Chart,
) -> Result<(), Box<dyn std::error::Error + 'static>>
where
    DB::ErrorType: 'static,
{
    let pts = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .filter(|p| (c.x_axis == Axis::Linear || p.0 > 0.0) && (c.y_axis == Axis::Linear || p.1 > 0.0))
            .map(|&(x, y)| (c.x_axis.to(x), c.y_axis.to(y)))
            .collect()
    };
    let all: Vec<(f64, f64)> = c.series.iter().flat_map(pts).collect();
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    let (mut y0, mut y1) = bounds(all.iter().map(|p| p.1));
    match c.y_axis {
        // Headroom for the legend.
        Axis::Linear => {
            y0 = y0.min(0.0);
            y1 += (y1 - y0) * 0.45;
        }
        _ => {
            y0 = y0.floor();
            y1 = y1.ceil().max(y0 + 1.0) + 0.6;
        }
    }
    let (x0, x1) = match c.x_axis {
        Axis::Linear => (x0, x1),
        _ => (x0.floor(), x1.ceil().max(x0.floor() + 1.0)),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(58)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let (xa, ya) = (c.x_axis, c.y_axis);
    let x_labels = if xa == Axis::Linear { 8 } else { ((x1 - x0) as usize + 1).clamp(2, 12) };
    let y_labels = if ya == Axis::Linear { 8 } else { ((y1 - y0) as usize + 1).clamp(2, 12) };
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .x_labels(x_labels)
        .y_labels(y_labels)
        .x_label_formatter(&|v| xa.label(*v))
        .y_label_formatter(&|v| ya.label(*v))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for &m in &c.marks {
        let x = c.x_axis.to(m);
        chart.draw_series(LineSeries::new([(x, y0), (x, y1)], RGBColor(230, 120, 120).stroke_width(1)))?;
    }
    for (i, s) in c.series.iter().enumerate() {
        let color = COLORS[s.color.unwrap_or(i) % COLORS.len()];
        let p = pts(s);
        let style = color.stroke_width(if s.reference { 1 } else { 2 });
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(p.clone(), 7, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(p.clone(), style))?
        };
        if !s.name.is_empty() {
            let dashed = s.dashed;
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                let gap = if dashed { 5 } else { 0 };
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (7, 0)], style)
                    + PathElement::new([(7 + gap, 0), (18, 0)], style)
            });
        }
        if !s.reference && p.len() <= 40 {
            chart.draw_series(p.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))?;
        }
    }
    if c.series.iter().any(|s| !s.name.is_empty()) {
        let position = match c.legend {
            Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
            Legend::UpperRight => SeriesLabelPosition::UpperRight,
            Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
            Legend::LowerRight => SeriesLabelPosition::LowerRight,
        };
        chart
            .configure_series_labels()
            .position(position)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    Ok(())
}
