//! A weight matrix inside a memory map (or, once quantised on load, in memory): dtype, rows x
//! cols, decoded to f32 a row at a time or dotted with a vector in place. F32 (read in place
//! when aligned), F16, BF16, MXFP4 (OCP microscaling: 32 E2M1 values share one E8M0
//! power-of-two scale; gpt-oss expert blocks), Q8_0 (llama.cpp's layout: blocks of 32 int8
//! values after one f16 scale, 34 bytes) and Q4_0 (llama.cpp's: blocks of 32 4-bit values
//! after one f16 scale, 18 bytes; byte j holds value j in its low nibble and j + 16 in its high
//! one; value = d * (q - 8)), and, from GGUF files, every other block format of `quants` (Q4_1,
//! Q5_0, Q5_1, IQ4_NL, the k-quants Q2_K to Q6_K, IQ4_XS). Rows are the leading dimensions
//! flattened: a 3-D
//! expert tensor [E, R, C] is E*R rows, and `rows(e*R, R)` is expert e.

use memmap2::Mmap;
use rayon::prelude::*;
use std::sync::Arc;

/// Where a weight's bytes live.
pub enum Bytes {
    /// A read-only map of the whole file (kept open to drop evicted pages from the page cache).
    Map(Mmap, std::fs::File),
    Heap(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m, _) => m,
            Bytes::Heap(v) => v,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    /// Raw bytes; only valid as the parts of an MXFP4 weight.
    U8,
    /// Packed E2M1 pairs (low nibble first) with one scale byte per 32 values.
    Mxfp4,
    /// Blocks of 32: f16 scale d, then 32 int8 q; value = d * q.
    Q8_0,
    /// Blocks of 32: f16 scale d, then 16 bytes of nibbles; value = d * (q - 8).
    Q4_0,
    /// The other block formats of GGUF files (see `quants`).
    Q4_1,
    Q5_0,
    Q5_1,
    IQ4NL,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ4XS,
}

/// A quantisation applied on load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    Q8_0,
    Q4_0,
}

impl Quant {
    pub fn parse(s: &str) -> Option<Quant> {
        match s {
            "q8_0" => Some(Quant::Q8_0),
            "q4_0" => Some(Quant::Q4_0),
            _ => None,
        }
    }
}

use crate::quants::q4_values;

impl Dtype {
    pub(crate) const ALL: [Dtype; 17] = [
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::U8,
        Dtype::Mxfp4,
        Dtype::Q8_0,
        Dtype::Q4_0,
        Dtype::Q4_1,
        Dtype::Q5_0,
        Dtype::Q5_1,
        Dtype::IQ4NL,
        Dtype::Q2K,
        Dtype::Q3K,
        Dtype::Q4K,
        Dtype::Q5K,
        Dtype::Q6K,
        Dtype::IQ4XS,
    ];

    /// The name safetensors (floats) or ggml (block formats) give the type.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U8 => "U8",
            Dtype::Mxfp4 => "MXFP4",
            Dtype::Q8_0 => "Q8_0",
            Dtype::Q4_0 => "Q4_0",
            Dtype::Q4_1 => "Q4_1",
            Dtype::Q5_0 => "Q5_0",
            Dtype::Q5_1 => "Q5_1",
            Dtype::IQ4NL => "IQ4_NL",
            Dtype::Q2K => "Q2_K",
            Dtype::Q3K => "Q3_K",
            Dtype::Q4K => "Q4_K",
            Dtype::Q5K => "Q5_K",
            Dtype::Q6K => "Q6_K",
            Dtype::IQ4XS => "IQ4_XS",
        }
    }
    /// The type a file names, for the types a file can hold (MXFP4 is assembled from U8 parts).
    pub fn parse(s: &str) -> Option<Dtype> {
        Self::ALL.into_iter().find(|d| d.name() == s && *d != Dtype::Mxfp4)
    }
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
    /// llama.cpp's block format of this type (GGUF files, or quantised on load).
    pub fn format(self) -> Option<&'static crate::quants::Format> {
        use crate::quants as q;
        Some(match self {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::U8 | Dtype::Mxfp4 => return None,
            Dtype::Q8_0 => &q::Q8_0,
            Dtype::Q4_0 => &q::Q4_0,
            Dtype::Q4_1 => &q::Q4_1,
            Dtype::Q5_0 => &q::Q5_0,
            Dtype::Q5_1 => &q::Q5_1,
            Dtype::IQ4NL => &q::IQ4_NL,
            Dtype::Q2K => &q::Q2_K,
            Dtype::Q3K => &q::Q3_K,
            Dtype::Q4K => &q::Q4_K,
            Dtype::Q5K => &q::Q5_K,
            Dtype::Q6K => &q::Q6_K,
            Dtype::IQ4XS => &q::IQ4_XS,
        })
    }
    /// Whether rows have integer dot products with activations quantised to Q8_0 blocks.
    pub fn has_q8_dot(self) -> bool {
        use Dtype::*;
        matches!(self, Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | IQ4NL | Q3K | Q4K | Q5K | Q6K | IQ4XS)
    }
    /// The layout of activations (`qdot::Lanes`) whose 512-bit pair kernel multiplies rows of
    /// this type, if it has one.
    pub fn lane_kind(self) -> Option<crate::qdot::LaneKind> {
        match self {
            Dtype::Q8_0 => Some(crate::qdot::LaneKind::Q8_0),
            Dtype::Q4_0 => Some(crate::qdot::LaneKind::Q4_0),
            _ => None,
        }
    }
    /// The super-block format of this type, whose kernel takes a run of rows per call.
    pub fn super_block(self) -> Option<crate::qdot::Super> {
        use crate::qdot::Super;
        match self {
            Dtype::Q3K => Some(Super::Q3K),
            Dtype::Q4K => Some(Super::Q4K),
            Dtype::Q5K => Some(Super::Q5K),
            Dtype::Q6K => Some(Super::Q6K),
            Dtype::IQ4XS => Some(Super::IQ4XS),
            _ => None,
        }
    }
    /// llama.cpp's block quantisations (GGUF files, or quantised on load).
    pub fn is_block_quant(self) -> bool {
        self.format().is_some()
    }
}

/// x as Q8_0 blocks: int8 values and one scale per 32 (max |x| / 127).
pub fn quantize_q8_row(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xs, qs), dv) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).zip(d.iter_mut()) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *dv = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in qs.iter_mut().zip(xs) {
            *o = (v * inv).round() as i8;
        }
    }
}

/// sum_j decode(bytes of element j) * x[j] for elements of S bytes, with 16 partial sums
/// so the loop vectorises.
#[inline(always)]
fn dot_in_place<const S: usize>(b: &[u8], x: &[f32], decode: impl Fn(&[u8]) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (cb, cx) = (b.chunks_exact(16 * S), x.chunks_exact(16));
    let tail: f32 = cb.remainder().chunks_exact(S).zip(cx.remainder()).map(|(w, &xv)| decode(w) * xv).sum();
    for (c, xs) in cb.zip(cx) {
        for ((a, w), &xv) in acc.iter_mut().zip(c.chunks_exact(S)).zip(xs) {
            *a += decode(w) * xv;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// E2M1 code -> value.
const FP4: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// out[k] = f(row k) over a run of rows of equal length.
#[inline(always)]
fn run<const N: usize>(rows: &[u8], out: &mut [[f32; N]], f: impl Fn(&[u8]) -> [f32; N]) {
    let rb = rows.len() / out.len().max(1);
    rows.chunks_exact(rb.max(1)).zip(out).for_each(|(row, o)| *o = f(row));
}

#[derive(Clone)]
pub struct Weight {
    map: Arc<Bytes>,
    /// Byte offset of row 0 in `map`.
    start: usize,
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    /// MXFP4 only: the scales' map and the byte offset of row 0's scales.
    scales: Option<(Arc<Bytes>, usize)>,
}

impl Weight {
    /// `shape`'s last dimension is cols; the others flatten into rows (a 1-D tensor is one row).
    pub(crate) fn new(map: Arc<Bytes>, start: usize, end: usize, dtype: Dtype, shape: &[usize]) -> Self {
        let cols = shape.last().copied().unwrap_or(1);
        let rows = shape.iter().rev().skip(1).product();
        let w = Weight { map, start, dtype, rows, cols, scales: None };
        debug_assert_eq!(end - start, w.row_bytes() * rows);
        w
    }

    /// A matrix of `dtype` held in memory: `bytes` are its rows (rows x cols) as a file stores
    /// them. None when the length does not match.
    pub fn from_bytes(bytes: Vec<u8>, dtype: Dtype, rows: usize, cols: usize) -> Option<Self> {
        let w = Weight { map: Arc::new(Bytes::Heap(bytes)), start: 0, dtype, rows, cols, scales: None };
        (dtype != Dtype::Mxfp4 && w.map.len() == w.row_bytes() * rows).then_some(w)
    }

    /// MXFP4 from its U8 parts: blocks [rows, cols/32, 16] and scales [rows, cols/32].
    pub(crate) fn mxfp4(blocks: Weight, scales: Weight, rows: usize, cols: usize) -> Self {
        Weight {
            map: blocks.map,
            start: blocks.start,
            dtype: Dtype::Mxfp4,
            rows,
            cols,
            scales: Some((scales.map, scales.start)),
        }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        match self.dtype {
            Dtype::F32 => 4 * self.cols,
            Dtype::F16 | Dtype::BF16 => 2 * self.cols,
            Dtype::U8 => self.cols,
            Dtype::Mxfp4 => self.cols / 2,
            d => d.format().map_or(0, |f| self.cols / f.values * f.bytes),
        }
    }

    /// This matrix quantised in memory, or None when cols is not a multiple of 32 or it is
    /// quantised already. Q8_0 per block of 32: d = max|x| / 127, q = round(x / d). Q4_0 as
    /// llama.cpp: m = the value of largest magnitude, d = m / -8, q = min(15, trunc(x / d + 8.5)).
    pub fn quantize(&self, kind: Quant) -> Option<Weight> {
        if !self.cols.is_multiple_of(32) || self.dtype.is_block_quant() {
            return None;
        }
        let (dtype, blk) = match kind {
            Quant::Q8_0 => (Dtype::Q8_0, 34),
            Quant::Q4_0 => (Dtype::Q4_0, 18),
        };
        let rb = self.cols / 32 * blk;
        let mut out = vec![0u8; self.rows * rb];
        out.par_chunks_mut(rb).enumerate().for_each_init(
            || vec![0.0f32; self.cols],
            |row, (r, dst)| {
                self.row_f32(r, row);
                for (b, x) in dst.chunks_exact_mut(blk).zip(row.chunks_exact(32)) {
                    match kind {
                        Quant::Q8_0 => moe_kernels::q8_0::encode_block(x, b),
                        Quant::Q4_0 => {
                            let m = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                            let d = m / -8.0;
                            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                            b[..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
                            let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
                            for j in 0..16 {
                                b[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
                            }
                        }
                    }
                }
            },
        );
        Some(Weight {
            map: Arc::new(Bytes::Heap(out)),
            start: 0,
            dtype,
            rows: self.rows,
            cols: self.cols,
            scales: None,
        })
    }

    /// The matrix decoded to f32 in memory (what a quantised matrix stands for).
    pub fn dequantize(&self) -> Weight {
        let mut v = vec![0.0f32; self.rows * self.cols];
        self.rows_f32(0, &mut v);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Weight {
            map: Arc::new(Bytes::Heap(bytes)),
            start: 0,
            dtype: Dtype::F32,
            rows: self.rows,
            cols: self.cols,
            scales: None,
        }
    }

    /// Bytes of the whole matrix (scales included).
    pub fn bytes(&self) -> usize {
        self.rows * (self.row_bytes() + if self.dtype == Dtype::Mxfp4 { self.cols / 32 } else { 0 })
    }

    /// Rows r0..r0+n as a weight of their own.
    pub fn rows(&self, r0: usize, n: usize) -> Weight {
        assert!(r0 + n <= self.rows, "row range out of bounds");
        let mut w = self.clone();
        w.start += r0 * self.row_bytes();
        w.rows = n;
        if let Some((m, s)) = &self.scales {
            w.scales = Some((m.clone(), s + r0 * self.cols / 32));
        }
        w
    }

    /// True when the matrix is read from a memory map (not quantised into memory on load).
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.map, Bytes::Map(..))
    }

    /// For a memory-mapped matrix: `release` drops its pages from this process and from the
    /// OS page cache (the next use reads them from disk again), else asks the kernel to read
    /// them ahead. No-op for matrices in memory (quantised on load).
    pub fn advise(&self, release: bool) {
        let len = self.rows * self.row_bytes();
        let parts = [(&self.map, self.start, len)]
            .into_iter()
            .chain(self.scales.as_ref().map(|(m, s)| (m, *s, self.rows * self.cols / 32)));
        for (map, start, len) in parts {
            let Bytes::Map(m, file) = &**map else { continue };
            // Only whole pages inside the range, so neighbouring tensors keep theirs.
            let page = 4096;
            let (a, b) = (start.next_multiple_of(page), (start + len) / page * page);
            if release && b > a {
                // SAFETY: the map is a read-only private file mapping that is never written:
                // dropped pages read back the same bytes from the file on the next access.
                let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) };
                use std::os::fd::AsRawFd;
                // SAFETY: a plain advisory call on an open descriptor; it cannot touch memory.
                unsafe { libc::posix_fadvise(file.as_raw_fd(), a as i64, (b - a) as i64, libc::POSIX_FADV_DONTNEED) };
            } else if !release && len > 0 {
                let _ = m.advise_range(memmap2::Advice::WillNeed, start, len);
            }
        }
    }

    /// Reads one byte of every page, so a memory-mapped matrix is resident before timing (as
    /// llama.cpp's MAP_POPULATE and warm-up run make its weights).
    pub fn touch(&self) -> u8 {
        let raw = self.raw();
        let mut x = 0u8;
        for i in (0..raw.len()).step_by(4096) {
            x ^= std::hint::black_box(raw[i]);
        }
        x
    }

    fn raw(&self) -> &[u8] {
        &self.map[self.start..self.start + self.rows * self.row_bytes()]
    }

    /// The data as f32 in place, when it is F32 and 4-byte aligned.
    pub fn as_f32(&self) -> Option<&[f32]> {
        if self.dtype != Dtype::F32 {
            return None;
        }
        let raw = self.raw();
        // SAFETY: f32 has no invalid bit patterns; align_to returns only the aligned middle.
        let (pre, mid, post) = unsafe { raw.align_to::<f32>() };
        (pre.is_empty() && post.is_empty()).then_some(mid)
    }

    /// Decodes rows r0..r0+out.len()/cols into `out` (row-major f32).
    pub fn rows_f32(&self, r0: usize, out: &mut [f32]) {
        for (i, o) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_f32(r0 + i, o);
        }
    }

    /// sum_j row_r[j] * x[j] without materialising the row: BF16 and F32 are read in place
    /// (16 partial sums, so the loop vectorises and streams at memory speed); other dtypes are
    /// decoded 256 values at a time on the stack.
    pub fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        let rb = self.row_bytes();
        let b = &self.map[self.start + r * rb..self.start + (r + 1) * rb];
        match self.dtype {
            Dtype::BF16 => crate::fdot::dot_bf16(b, x),
            Dtype::F32 => dot_in_place::<4>(b, x, |w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            Dtype::Q8_0 => {
                // one accumulator vector across blocks; a single horizontal sum at the end
                let mut acc = [0.0f32; 32];
                for (blk, xs) in b.chunks_exact(34).zip(x.chunks_exact(32)) {
                    let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                    let q: &[u8; 32] = blk[2..].try_into().expect("a Q8_0 block holds 32 values");
                    let xs: &[f32; 32] = xs.try_into().expect("chunks of 32");
                    for j in 0..32 {
                        acc[j] += d * (q[j] as i8 as f32) * xs[j];
                    }
                }
                acc.iter().sum()
            }
            Dtype::Q4_0 => {
                let mut acc = [0.0f32; 32];
                for (blk, xs) in b.chunks_exact(18).zip(x.chunks_exact(32)) {
                    let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                    let q = q4_values(&blk[2..]);
                    let xs: &[f32; 32] = xs.try_into().expect("chunks of 32");
                    for j in 0..32 {
                        acc[j] += d * q[j] as f32 * xs[j];
                    }
                }
                acc.iter().sum()
            }
            d if d.is_block_quant() => {
                // up to 256 values at a time, decoded on the stack
                let f = d.format().expect("a block format");
                let mut buf = [0.0f32; 256];
                let mut acc = [0.0f32; 16];
                for (blk, xs) in b.chunks(256 / f.values * f.bytes).zip(x.chunks(256)) {
                    (f.decode)(blk, &mut buf[..xs.len()]);
                    for (w, v) in buf.chunks_exact(16).zip(xs.chunks_exact(16)) {
                        for j in 0..16 {
                            acc[j] += w[j] * v[j];
                        }
                    }
                }
                acc.iter().sum()
            }
            _ => {
                let mut row = vec![0.0f32; self.cols];
                self.row_f32(r, &mut row);
                row.iter().zip(x).map(|(a, b)| a * b).sum()
            }
        }
    }

    /// Types with `Dtype::has_q8_dot` only: row r dotted with x given as Q8_0 blocks (xq int8 values, xd one
    /// scale per 32), in integer arithmetic per block as llama.cpp does:
    /// sum_b dw_b * dx_b * sum_j qw_j qx_j.
    /// `xs` are the block sums of xq (`qdot::block_sums`), used by Q4_0.
    pub fn dot_row_q8(&self, r: usize, xq: &[i8], xd: &[f32], xs: &[i32]) -> f32 {
        self.dot_row_q8_n(r, [crate::qdot::Q8Row { xq, xd, xs }])[0]
    }

    /// The same for N activation rows at once (Q8_0 and Q4_0 read each weight block once for
    /// all of them).
    pub fn dot_row_q8_n<const N: usize>(&self, r: usize, x: [crate::qdot::Q8Row; N]) -> [f32; N] {
        let mut out = [[0.0; N]];
        self.q8_runs(r, x, &mut out);
        out[0]
    }

    /// out[k] = row r0 + k dotted with each of the N activation rows (the one table of the
    /// integer kernels; one activation row over super-block rows takes the whole run per call).
    fn q8_runs<const N: usize>(&self, r0: usize, x: [crate::qdot::Q8Row; N], out: &mut [[f32; N]]) {
        use crate::qdot as q;
        let rows = self.rows_data(r0, out.len());
        match self.dtype {
            Dtype::Q4_0 => run(rows, out, |b| q::dot_q4_0_n(b, x)),
            Dtype::Q5_0 => run(rows, out, |b| q::dot_q5_0_n(b, x)),
            Dtype::Q4_1 => run(rows, out, |b| q::dot_q4_1_n(b, x)),
            Dtype::Q5_1 => run(rows, out, |b| q::dot_q5_1_n(b, x)),
            Dtype::IQ4NL => run(rows, out, |b| q::dot_iq4_nl_n(b, x)),
            Dtype::Q8_0 => run(rows, out, |b| q::dot_q8_0_n(b, x)),
            d => match d.super_block() {
                Some(kind) if N == 1 => q::dot_super_rows(kind, rows, x[0], out.as_flattened_mut()),
                Some(kind) => run(rows, out, |b| x.map(|a| q::dot_super(kind, b, a))),
                None => unreachable!("{d:?} has no integer dot product (has_q8_dot is false)"),
            },
        }
    }

    /// Rows r0.. (as many as `out` holds) dotted with one token's activations laid out for this
    /// type's pair kernel (which then runs row after row), or its plain row.
    pub fn dot_rows_lanes(&self, r0: usize, x: &crate::qdot::Lanes, out: &mut [f32]) {
        self.lanes_runs(r0, [x], out.as_chunks_mut::<1>().0)
    }

    /// [`Weight::dot_row_q8_n`] on activations laid out for this type's pair kernel (rows of
    /// another type, or laid out for another, take their plain rows).
    pub fn dot_row_lanes_n<const N: usize>(&self, r: usize, x: [&crate::qdot::Lanes; N]) -> [f32; N] {
        let mut out = [[0.0; N]];
        self.lanes_runs(r, x, &mut out);
        out[0]
    }

    /// [`Weight::q8_runs`] on laid-out activations: the pair kernels of Q8_0 and Q4_0 where the
    /// layout is theirs, the plain rows otherwise.
    fn lanes_runs<const N: usize>(&self, r0: usize, x: [&crate::qdot::Lanes; N], out: &mut [[f32; N]]) {
        let kind = self.dtype.lane_kind();
        let laid_out = kind.is_some() && x.iter().all(|l| l.kind == kind);
        let rows = self.rows_data(r0, out.len());
        match self.dtype {
            Dtype::Q8_0 if laid_out => run(rows, out, |b| crate::qdot::dot_q8_0_lanes(b, x)),
            Dtype::Q4_0 if laid_out => run(rows, out, |b| crate::qdot::dot_q4_0_lanes(b, x)),
            _ => self.q8_runs(r0, x.map(|l| l.x), out),
        }
    }

    /// The stored bytes of rows r0..r0 + n.
    fn rows_data(&self, r0: usize, n: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.map[self.start + r0 * rb..self.start + (r0 + n) * rb]
    }

    /// The stored bytes of row r.
    pub fn row_data(&self, r: usize) -> &[u8] {
        self.rows_data(r, 1)
    }

    /// Decodes row r into out[cols].
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let b = &self.map[self.start + r * rb..self.start + (r + 1) * rb];
        match self.dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            Dtype::U8 => {
                for (o, &c) in out.iter_mut().zip(b) {
                    *o = c as f32;
                }
            }
            Dtype::Mxfp4 => {
                let (m, s0) = self.scales.as_ref().expect("an MXFP4 weight always has scales");
                let nb = self.cols / 32;
                let scales = &m[s0 + r * nb..s0 + (r + 1) * nb];
                for ((o, blk), &e) in out.chunks_exact_mut(32).zip(b.chunks_exact(16)).zip(scales) {
                    let scale = (2.0f32).powi(e as i32 - 127);
                    for (pair, &byte) in o.chunks_exact_mut(2).zip(blk) {
                        pair[0] = FP4[(byte & 15) as usize] * scale;
                        pair[1] = FP4[(byte >> 4) as usize] * scale;
                    }
                }
            }
            d => (d.format().expect("the other types are block formats").decode)(b, out),
        }
    }
}
