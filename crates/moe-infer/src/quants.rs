//! ggml's block-quantised formats as GGUF files hold them, one table row each: values and bytes
//! per block and the decoder of a run of blocks, written after ggml's reference
//! (dequantize_row_*): the same float32 operations in the same order as gguf-py's quants.py, so
//! the tests compare bit for bit (fixtures by scripts/quant_fixtures.py). Every f16 field is a
//! little-endian IEEE half.
//!
//! Blocks of 32 (`d` the scale, `m` the offset):
//! - Q8_0, 34 bytes: d, 32 int8 q; value = d q.
//! - Q4_0, 18 bytes: d, 16 bytes of nibbles (value j low, j + 16 high); value = d (q - 8).
//! - Q4_1, 20 bytes: d, m, nibbles; value = d q + m.
//! - Q5_0, 22 bytes: d, 32 fifth bits (u32), nibbles; value = d (q - 16).
//! - Q5_1, 24 bytes: d, m, fifth bits, nibbles; value = d q + m.
//! - IQ4_NL, 18 bytes: d, nibbles indexing a non-linear 16-value table; value = d table[q].
//!
//! Super-blocks of 256 (the k-quants; Q4_K_M files hold Q4_K and Q6_K, Q3_K_M ones Q3_K...):
//! - Q2_K, 84 bytes: 16 bytes of 4-bit scale and min per 16 values, 64 bytes of 2-bit q, d, dmin;
//!   value = d scale q - dmin min.
//! - Q3_K, 110 bytes: 32 bytes of high bits, 64 of 2-bit q, 12 of packed 6-bit scales, d;
//!   value = d (scale - 32) (q - 4 if its high bit is clear).
//! - Q4_K, 144 bytes: d, dmin, 12 bytes of packed 6-bit scales and mins, 128 bytes of nibbles;
//!   value = d scale q - dmin min per 32.
//! - Q5_K, 176 bytes: as Q4_K plus 32 bytes holding each value's fifth bit (before the nibbles).
//! - Q6_K, 210 bytes: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, d;
//!   value = d scale (q - 32) per 16.
//! - IQ4_XS, 136 bytes: d, 8 6-bit scales (2 high bits in a u16, 4 low in 4 bytes), 128 bytes
//!   of nibbles into IQ4_NL's table; value = d (scale - 32) table[q] per 32.

/// One block format.
pub struct Format {
    /// ggml's name (as GGUF and `moe inspect` print it).
    pub name: &'static str,
    /// Values per block.
    pub values: usize,
    /// Bytes per block.
    pub bytes: usize,
    /// Decodes whole blocks `b` into y (y.len() = blocks x values).
    pub decode: fn(&[u8], &mut [f32]),
    /// Byte offsets of the block's f16 fields (scales, mins).
    pub halves: &'static [usize],
}

impl Format {
    /// `blocks` blocks of random bytes whose f16 fields are finite and small (in [-0.006,
    /// 0.014]): rows of every value this format can hold, for tests and benchmarks.
    pub fn random_blocks(&self, blocks: usize, rng: &mut moe_engine::rng::Rng) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..blocks * self.bytes).map(|_| (rng.uniform() * 256.0) as u8).collect();
        for blk in bytes.chunks_exact_mut(self.bytes) {
            for &at in self.halves {
                let v = half::f16::from_f32((rng.uniform() as f32 - 0.3) * 0.02);
                blk[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        bytes
    }
}

pub const Q8_0: Format = Format { name: "Q8_0", values: 32, bytes: 34, decode: decode_q8_0, halves: &[0] };
pub const Q4_0: Format = Format { name: "Q4_0", values: 32, bytes: 18, decode: decode_q4_0, halves: &[0] };
pub const Q4_1: Format = Format { name: "Q4_1", values: 32, bytes: 20, decode: decode_q4_1, halves: &[0, 2] };
pub const Q5_0: Format = Format { name: "Q5_0", values: 32, bytes: 22, decode: decode_q5_0, halves: &[0] };
pub const Q5_1: Format = Format { name: "Q5_1", values: 32, bytes: 24, decode: decode_q5_1, halves: &[0, 2] };
pub const IQ4_NL: Format = Format { name: "IQ4_NL", values: 32, bytes: 18, decode: decode_iq4_nl, halves: &[0] };
pub const Q2_K: Format = Format { name: "Q2_K", values: 256, bytes: 84, decode: decode_q2_k, halves: &[80, 82] };
pub const Q3_K: Format = Format { name: "Q3_K", values: 256, bytes: 110, decode: decode_q3_k, halves: &[108] };
pub const Q4_K: Format = Format { name: "Q4_K", values: 256, bytes: 144, decode: decode_q4_k, halves: &[0, 2] };
pub const Q5_K: Format = Format { name: "Q5_K", values: 256, bytes: 176, decode: decode_q5_k, halves: &[0, 2] };
pub const Q6_K: Format = Format { name: "Q6_K", values: 256, bytes: 210, decode: decode_q6_k, halves: &[208] };
pub const IQ4_XS: Format = Format { name: "IQ4_XS", values: 256, bytes: 136, decode: decode_iq4_xs, halves: &[0] };

/// Every block format moe reads.
pub const FORMATS: [&Format; 12] =
    [&Q8_0, &Q4_0, &Q4_1, &Q5_0, &Q5_1, &IQ4_NL, &Q2_K, &Q3_K, &Q4_K, &Q5_K, &Q6_K, &IQ4_XS];

/// The format called `name`.
pub fn format(name: &str) -> Option<&'static Format> {
    FORMATS.into_iter().find(|f| f.name == name)
}

/// Values per super-block.
pub const QK_K: usize = 256;

/// IQ4_NL's and IQ4_XS's 16 levels.
pub const IQ4: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// The 32 values (q - 8) of a Q4_0 block's 16 nibble bytes (value j in the low nibble of byte
/// j, value j + 16 in its high nibble).
#[inline(always)]
pub fn q4_values(nibbles: &[u8]) -> [i8; 32] {
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = (nibbles[j] & 15) as i8 - 8;
        q[j + 16] = (nibbles[j] >> 4) as i8 - 8;
    }
    q
}

pub fn decode_q8_0(b: &[u8], y: &mut [f32]) {
    use moe_kernels::q8_0::{decode_block, BLOCK, BYTES};
    for (o, blk) in y.chunks_exact_mut(BLOCK).zip(b.chunks_exact(BYTES)) {
        decode_block(blk, o);
    }
}

pub fn decode_q4_0(b: &[u8], y: &mut [f32]) {
    for (o, blk) in y.chunks_exact_mut(32).zip(b.chunks_exact(18)) {
        let d = f16(blk);
        o.iter_mut().zip(q4_values(&blk[2..])).for_each(|(v, q)| *v = d * q as f32);
    }
}

/// The 32 unsigned 4-bit (or, with the 32 fifth bits `qh`, 5-bit) values of a nibble block.
pub fn nibbles(qs: &[u8], qh: Option<u32>) -> [u8; 32] {
    let mut q = [0u8; 32];
    nibbles_into(qs, qh.unwrap_or(0), &mut q);
    q
}

/// The same into u[..32]: value j in the low nibble of byte j, j + 16 in its high one, bit j of
/// `fifth` as value j's fifth bit (0: none).
#[inline(always)]
pub fn nibbles_into(qs: &[u8], fifth: u32, u: &mut [u8]) {
    let qs: &[u8; 16] = qs[..16].try_into().expect("16 bytes");
    let u: &mut [u8; 32] = (&mut u[..32]).try_into().expect("32 values");
    for j in 0..16 {
        u[j] = (qs[j] & 0xF) | ((((fifth >> j) & 1) as u8) << 4);
        u[j + 16] = (qs[j] >> 4) | ((((fifth >> (j + 16)) & 1) as u8) << 4);
    }
}

fn qh(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn decode_q4_1(b: &[u8], y: &mut [f32]) {
    for (o, blk) in y.chunks_exact_mut(32).zip(b.chunks_exact(20)) {
        let (d, m) = (f16(blk), f16(&blk[2..]));
        o.iter_mut().zip(nibbles(&blk[4..], None)).for_each(|(v, q)| *v = d * q as f32 + m);
    }
}

pub fn decode_q5_0(b: &[u8], y: &mut [f32]) {
    for (o, blk) in y.chunks_exact_mut(32).zip(b.chunks_exact(22)) {
        let d = f16(blk);
        o.iter_mut().zip(nibbles(&blk[6..], qh(&blk[2..]))).for_each(|(v, q)| *v = d * (q as i32 - 16) as f32);
    }
}

pub fn decode_q5_1(b: &[u8], y: &mut [f32]) {
    for (o, blk) in y.chunks_exact_mut(32).zip(b.chunks_exact(24)) {
        let (d, m) = (f16(blk), f16(&blk[2..]));
        o.iter_mut().zip(nibbles(&blk[8..], qh(&blk[4..]))).for_each(|(v, q)| *v = d * q as f32 + m);
    }
}

pub fn decode_iq4_nl(b: &[u8], y: &mut [f32]) {
    for (o, blk) in y.chunks_exact_mut(32).zip(b.chunks_exact(18)) {
        let d = f16(blk);
        o.iter_mut().zip(nibbles(&blk[2..], None)).for_each(|(v, q)| *v = d * IQ4[q as usize] as f32);
    }
}

/// Q2_K and Q3_K share a layout of 2-bit values: for each half (128 values, 32 bytes of q),
/// four shifts, each giving two runs of 16 (bytes 0-15 and 16-31). `value(run, l, q2)` maps run
/// number (0-15), byte index within the half (0-31) and the 2-bit value to the output.
pub fn two_bit_runs<T>(qs: &[u8], y: &mut [T], value: impl Fn(usize, usize, u8) -> T) {
    for (h, (q, ys)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(128)).enumerate() {
        for (j, ys) in ys.chunks_exact_mut(32).enumerate() {
            for (l, v) in ys.iter_mut().enumerate() {
                *v = value(8 * h + 2 * j + l / 16, 32 * h + l, (q[l] >> (2 * j)) & 3);
            }
        }
    }
}

pub fn decode_q2_k(b: &[u8], y: &mut [f32]) {
    for (blk, ys) in b.chunks_exact(84).zip(y.chunks_exact_mut(QK_K)) {
        let (sc, d, dmin) = (&blk[..16], f16(&blk[80..]), f16(&blk[82..]));
        two_bit_runs(&blk[16..80], ys, |run, _, q| {
            let (dl, ml) = (d * (sc[run] & 0xF) as f32, dmin * (sc[run] >> 4) as f32);
            dl * q as f32 - ml
        });
    }
}

/// Q3_K's 16 scales (6 bits, stored biased by 32) from their 12 packed bytes: low 4 bits of
/// scales 0-7 and 8-15 in the nibbles of bytes 0-7, high 2 bits in bytes 8-11.
pub fn q3_scales(p: &[u8]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 { p[i] & 0xF } else { p[i - 8] >> 4 };
        let high = (p[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

pub fn decode_q3_k(b: &[u8], y: &mut [f32]) {
    for (blk, ys) in b.chunks_exact(110).zip(y.chunks_exact_mut(QK_K)) {
        let (hm, sc, d) = (&blk[..32], q3_scales(&blk[96..108]), f16(&blk[108..]));
        two_bit_runs(&blk[32..96], ys, |run, l, q| {
            // the high bit of value l of shift j (run / 2 % 4 within its half) sits in bit
            // (4 * half + j) of hm[l % 32]
            let bit = 4 * (run / 8) + run / 2 % 4;
            let sub = if hm[l % 32] >> bit & 1 == 1 { 0 } else { 4 };
            d * sc[run] as f32 * (q as i8 - sub) as f32
        });
    }
}

/// Scale and min (6 bits each) of Q4_K/Q5_K sub-block j from the 12 packed bytes (ggml's
/// get_scale_min_k4).
#[inline(always)]
pub fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// All 8 scales and 8 mins of a Q4_K/Q5_K super-block from its 12 packed bytes at once, as
/// [`scale_min`] gives them one by one: a few 32-bit masks and shifts (as ggml's AVX2 path).
#[inline(always)]
pub fn scales_mins(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    let (low6, low4, top2) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
    let sc = [a & low6, (c & low4) | (((a >> 6) & top2) << 4)];
    let mn = [b & low6, ((c >> 4) & low4) | (((b >> 6) & top2) << 4)];
    let bytes = |w: [u32; 2]| {
        let (x, y) = (w[0].to_le_bytes(), w[1].to_le_bytes());
        [x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3]]
    };
    (bytes(sc), bytes(mn))
}

/// One Q4_K (`high` None) or Q5_K (`high` the 32 fifth-bit bytes) super-block into y[256].
fn decode_q45(y: &mut [f32], d: f32, dmin: f32, scales: &[u8], high: Option<&[u8]>, qs: &[u8]) {
    for (g, (ys, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (s1, m1) = scale_min(2 * g, scales);
        let (s2, m2) = scale_min(2 * g + 1, scales);
        let (d1, m1, d2, m2) = (d * s1 as f32, dmin * m1 as f32, d * s2 as f32, dmin * m2 as f32);
        let (lo, hi) = ys.split_at_mut(32);
        for l in 0..32 {
            let (b1, b2) = high.map_or((0, 0), |h| (((h[l] >> (2 * g)) & 1) << 4, ((h[l] >> (2 * g + 1)) & 1) << 4));
            lo[l] = d1 * ((q[l] & 0xF) | b1) as f32 - m1;
            hi[l] = d2 * ((q[l] >> 4) | b2) as f32 - m2;
        }
    }
}

/// Decodes a Q4_K row (`b`: cols/256 super-blocks of 144 bytes) into y[cols].
pub fn decode_q4_k(b: &[u8], y: &mut [f32]) {
    for (blk, ys) in b.chunks_exact(144).zip(y.chunks_exact_mut(QK_K)) {
        decode_q45(ys, f16(&blk[0..2]), f16(&blk[2..4]), &blk[4..16], None, &blk[16..144]);
    }
}

/// Decodes a Q5_K row (super-blocks of 176 bytes) into y[cols].
pub fn decode_q5_k(b: &[u8], y: &mut [f32]) {
    for (blk, ys) in b.chunks_exact(176).zip(y.chunks_exact_mut(QK_K)) {
        decode_q45(ys, f16(&blk[0..2]), f16(&blk[2..4]), &blk[4..16], Some(&blk[16..48]), &blk[48..176]);
    }
}

/// Decodes a Q6_K row (super-blocks of 210 bytes) into y[cols]. Fixed-size views and the
/// scales hoisted out of the 16-value runs let the loops vectorise (this is the LM head of
/// llama.cpp's Q4_0 and Q4_K_M files, read for every token).
pub fn decode_q6_k(b: &[u8], y: &mut [f32]) {
    for (blk, ys) in b.chunks_exact(210).zip(y.chunks_exact_mut(QK_K)) {
        let d = f16(&blk[208..210]);
        for h in 0..2 {
            let ql: &[u8; 64] = blk[64 * h..64 * h + 64].try_into().expect("64 low-nibble bytes");
            let qh: &[u8; 32] = blk[128 + 32 * h..128 + 32 * h + 32].try_into().expect("32 high-bit bytes");
            let s: [f32; 8] = std::array::from_fn(|k| d * (blk[192 + 8 * h + k] as i8) as f32);
            let y: &mut [f32; 128] = (&mut ys[128 * h..128 * h + 128]).try_into().expect("128 values");
            for (is, run) in [(0usize, 0..16usize), (1, 16..32)] {
                for l in run {
                    let (a, b, c) = (ql[l], ql[l + 32], qh[l]);
                    y[l] = s[is] * (((a & 0xF) | ((c & 3) << 4)) as i32 - 32) as f32;
                    y[l + 32] = s[is + 2] * (((b & 0xF) | (((c >> 2) & 3) << 4)) as i32 - 32) as f32;
                    y[l + 64] = s[is + 4] * (((a >> 4) | (((c >> 4) & 3) << 4)) as i32 - 32) as f32;
                    y[l + 96] = s[is + 6] * (((b >> 4) | (((c >> 6) & 3) << 4)) as i32 - 32) as f32;
                }
            }
        }
    }
}

/// IQ4_XS's scale (6 bits, biased by 32) of sub-block ib of 32 values of the block at `blk`.
#[inline(always)]
pub fn iq4_xs_scale(blk: &[u8], ib: usize) -> i32 {
    let high = u16::from_le_bytes([blk[2], blk[3]]);
    let ls = ((blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | ((((high >> (2 * ib)) & 3) as u8) << 4);
    ls as i32 - 32
}

pub fn decode_iq4_xs(b: &[u8], y: &mut [f32]) {
    for (blk, ys) in b.chunks_exact(136).zip(y.chunks_exact_mut(QK_K)) {
        let d = f16(blk);
        for (ib, (o, qs)) in ys.chunks_exact_mut(32).zip(blk[8..].chunks_exact(16)).enumerate() {
            let dl = d * iq4_xs_scale(blk, ib) as f32;
            o.iter_mut().zip(nibbles(qs, None)).for_each(|(v, q)| *v = dl * IQ4[q as usize] as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 32-bit unpacking of a super-block's scales and mins equals the one-by-one reading.
    #[test]
    fn scales_and_mins_at_once_equal_one_by_one() {
        let mut rng = moe_engine::rng::Rng::new(11);
        for _ in 0..1000 {
            let q: Vec<u8> = (0..12).map(|_| (rng.uniform() * 256.0) as u8).collect();
            let (sc, mn) = scales_mins(&q);
            for j in 0..8 {
                assert_eq!((sc[j], mn[j]), scale_min(j, &q), "sub-block {j} of {q:?}");
            }
        }
    }
}
