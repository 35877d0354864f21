//! Line charts as PNG files, drawn on an RGB canvas with an 8x8 bitmap font and encoded with
//! the `png` crate. Enough for loss curves; no system fonts or C libraries needed.

use crate::error::{Error, Result};
use font8x8::legacy::BASIC_LEGACY;
use std::path::Path;

/// One curve.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: title, axis labels, curves.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..thick {
                for oy in 0..thick {
                    self.set(x + ox, y + oy, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = BASIC_LEGACY.get(ch as usize).copied().unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.set(x + i as i64 * 8 + col, y + row as i64, c);
                    }
                }
            }
        }
    }
    /// Text rotated 90 degrees counter-clockwise, reading bottom to top, starting at (x, y).
    fn text_vertical(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = BASIC_LEGACY.get(ch as usize).copied().unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.set(x + row as i64, y - i as i64 * 8 - col, c);
                    }
                }
            }
        }
    }
}

/// A "nice" tick step for a range, and the ticks.
fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / target as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= target as f64).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = vec![];
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A heatmap: `values[row][col]` coloured from low (dark blue) to high (yellow) over [lo, hi].
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub row_labels: Vec<String>,
    /// Labels of the first and last column.
    pub x_range: (String, String),
    pub values: Vec<Vec<f64>>,
    pub range: (f64, f64),
}

fn colour(t: f64) -> [u8; 3] {
    // Viridis-like ramp through five anchors.
    const A: [[f64; 3]; 5] =
        [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let mut c = [0u8; 3];
    for k in 0..3 {
        c[k] = (A[i][k] + (A[i + 1][k] - A[i][k]) * f) as u8;
    }
    c
}

/// Renders a heatmap to a PNG of `w` x `h` pixels, with a colour bar.
pub fn render_heatmap(hm: &Heatmap, path: &Path, w: usize, h: usize) -> Result<()> {
    let mut cv = Canvas::new(w, h);
    let black = [0, 0, 0];
    let label_w = 8 * hm.row_labels.iter().map(|l| l.len()).max().unwrap_or(0) as i64 + 12;
    let (left, right, top, bottom) = (label_w, 90i64, 30i64, 40i64);
    let (pw, ph) = (w as i64 - left - right, h as i64 - top - bottom);
    let rows = hm.values.len().max(1);
    let cols = hm.values.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let (lo, hi) = hm.range;
    for (ri, row) in hm.values.iter().enumerate() {
        let (y0, y1) = (top + ri as i64 * ph / rows as i64, top + (ri as i64 + 1) * ph / rows as i64);
        for (ci, &v) in row.iter().enumerate() {
            let (x0, x1) = (left + ci as i64 * pw / cols as i64, left + (ci as i64 + 1) * pw / cols as i64);
            let col = colour((v - lo) / (hi - lo).max(1e-12));
            for y in y0..y1.max(y0 + 1) {
                for x in x0..x1.max(x0 + 1) {
                    cv.set(x, y, col);
                }
            }
        }
    }
    // Row labels, thinned to fit.
    let every = (rows as i64 * 10 / ph.max(1) + 1).max(1) as usize;
    for (ri, label) in hm.row_labels.iter().enumerate().filter(|(i, _)| i % every == 0) {
        let y = top + ri as i64 * ph / rows as i64 + (ph / rows as i64) / 2 - 4;
        cv.text(left - 6 - 8 * label.len() as i64, y, label, black);
    }
    cv.text(left + pw / 2 - 4 * hm.title.len() as i64, 10, &hm.title, black);
    cv.text(left, top + ph + 6, &hm.x_range.0, black);
    cv.text(left + pw - 8 * hm.x_range.1.len() as i64, top + ph + 6, &hm.x_range.1, black);
    cv.text(left + pw / 2 - 4 * hm.x_label.len() as i64, h as i64 - 16, &hm.x_label, black);
    // Colour bar.
    let bx = left + pw + 20;
    for y in 0..ph {
        let col = colour(1.0 - y as f64 / ph as f64);
        cv.line((bx, top + y), (bx + 14, top + y), col, 1);
    }
    cv.text(bx + 18, top, &fmt_tick(hi), black);
    cv.text(bx + 18, top + ph - 8, &fmt_tick(lo), black);
    write_png(&cv, path)
}

fn write_png(cv: &Canvas, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(Error::io(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), cv.w as u32, cv.h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let io = |e: png::EncodingError| Error::Io { path: path.to_path_buf(), source: std::io::Error::other(e) };
    let mut wr = enc.write_header().map_err(io)?;
    wr.write_image_data(&cv.px).map_err(io)?;
    wr.finish().map_err(io)
}

/// Renders the chart to a PNG of `w` x `h` pixels.
pub fn render(chart: &Chart, path: &Path, w: usize, h: usize) -> Result<()> {
    let mut cv = Canvas::new(w, h);
    let (black, grey) = ([0, 0, 0], [225, 225, 225]);
    let (left, right, top, bottom) = (70i64, 20i64, 30i64, 45i64);
    let (pw, ph) = (w as i64 - left - right, h as i64 - top - bottom);
    let pts = chart.series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| left + ((x - x0) / (x1 - x0) * pw as f64) as i64;
    let sy = |y: f64| top + ph - ((y - y0) / (y1 - y0) * ph as f64) as i64;
    for t in ticks(y0, y1, 6) {
        cv.line((left, sy(t)), (left + pw, sy(t)), grey, 1);
        let label = fmt_tick(t);
        cv.text(left - 6 - 8 * label.len() as i64, sy(t) - 4, &label, black);
    }
    for t in ticks(x0, x1, 6) {
        cv.line((sx(t), top), (sx(t), top + ph), grey, 1);
        let label = fmt_tick(t);
        cv.text(sx(t) - 4 * label.len() as i64, top + ph + 8, &label, black);
    }
    cv.line((left, top), (left, top + ph), black, 1);
    cv.line((left, top + ph), (left + pw, top + ph), black, 1);
    cv.text(left + pw / 2 - 4 * chart.title.len() as i64, 10, &chart.title, black);
    cv.text(left + pw / 2 - 4 * chart.x_label.len() as i64, h as i64 - 18, &chart.x_label, black);
    cv.text_vertical(12, top + ph / 2 + 4 * chart.y_label.len() as i64, &chart.y_label, black);
    for (i, s) in chart.series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
            let p = (sx(x), sy(y));
            if let Some(q) = prev {
                cv.line(q, p, c, 2);
            } else if s.points.len() == 1 {
                cv.line(p, p, c, 4);
            }
            prev = Some(p);
        }
        // Legend, top right.
        let lx = left + pw - 10 - 8 * s.label.len() as i64 - 24;
        let ly = top + 10 + 14 * i as i64;
        cv.line((lx, ly + 3), (lx + 16, ly + 3), c, 2);
        cv.text(lx + 22, ly, &s.label, black);
    }
    write_png(&cv, path)
}
