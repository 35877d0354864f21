//! llama.cpp's Q8_0 blocks: 32 values as an f16 scale d = max|x| / 127 (rounded to f16) and 32
//! int8 q = round(x / d), 34 bytes; value = d q. One encoder and decoder for the inference
//! engine's on-load quantisation and GGUF files and for the training engine's packed base.

/// Values and bytes of one block.
pub const BLOCK: usize = 32;
pub const BYTES: usize = 34;

/// Encodes up to 32 values `x` (missing ones count as 0) into the block `out` [34].
pub fn encode_block(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = half::f16::from_f32(amax / 127.0);
    let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
    out[..2].copy_from_slice(&d.to_bits().to_le_bytes());
    out[2..BYTES].fill(0);
    for (q, &v) in out[2..].iter_mut().zip(x) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
    }
}

/// Decodes the block `b` [34] into `y` [32].
#[inline]
pub fn decode_block(b: &[u8], y: &mut [f32]) {
    let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    y.iter_mut().zip(&b[2..BYTES]).for_each(|(v, &q)| *v = d * q as i8 as f32);
}
