//! llama.cpp's k-quants, as found in GGUF files (Q4_K_M files hold Q4_K and Q6_K; Q5_K_M ones
//! Q5_K and Q6_K): super-blocks of 256 values in 8 (Q4_K, Q5_K) or 16 (Q6_K) sub-blocks, each
//! with its own 6-bit or 8-bit scale. Decoding follows ggml's reference (dequantize_row_q*_K).
//!
//! Q4_K, 144 bytes: f16 d, f16 dmin, 12 bytes of packed 6-bit scales and mins, 128 bytes of
//!   nibbles; value = d * scale_s * q - dmin * min_s.
//! Q5_K, 176 bytes: as Q4_K plus 32 bytes holding each value's fifth bit (before the nibbles).
//! Q6_K, 210 bytes: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, f16 d;
//!   value = d * scale_s * (q - 32).

/// Values per super-block.
pub const QK_K: usize = 256;

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Scale and min of sub-block j from the 12 packed bytes (ggml's get_scale_min_k4).
fn scale_min(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32, ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32)
    }
}

/// One Q4_K (`high` None) or Q5_K (`high` the 32 fifth-bit bytes) super-block into y[256].
fn decode_q45(y: &mut [f32], d: f32, dmin: f32, scales: &[u8], high: Option<&[u8]>, qs: &[u8]) {
    for (g, (ys, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (s1, m1) = scale_min(2 * g, scales);
        let (s2, m2) = scale_min(2 * g + 1, scales);
        let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
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
