//! The AVX512-BF16 block kernel of [`crate::bf16`]'s products, for CPUs without AMX (AMD Zen 4
//! and newer, Intel Cooper Lake). `vdpbf16ps` multiplies 16 pairs of bf16 by 16 pairs and adds
//! both products of each pair into one of 16 f32 lanes: one pair-row of a packed B block (32
//! columns, the k-pair layout) is two vectors, and one row's pair of A is broadcast to all lanes.
//! A block's 32 rows are done in four pieces of 8; a piece keeps its 8 x 32 f32 of C in 16 zmm
//! registers for the whole of K (inline assembly: compiled intrinsics spilled them), so each B
//! vector loaded serves 8 rows and each A broadcast 2 vectors. Column edges use masked loads and
//! stores; row edges compute the zero rows of the padded A and store only the real ones.

use crate::bf16::{Block, BlockKernel};
use std::arch::x86_64::*;

/// True when the CPU has AVX512-BF16 (and AVX-512 F/BW, used by the packing).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// The AVX512-BF16 kernel for [`crate::bf16::matmul_bf16`].
pub(crate) struct Dots;

impl BlockKernel for Dots {
    unsafe fn block(&self, blk: &Block) {
        let &Block { a, kp, b, c, sc, rows, cols, accumulate } = blk;
        let (a, pairs) = (a as *const u32, kp / 2);
        let masks = [lanes(cols.min(16)), lanes(cols.saturating_sub(16))];
        for r0 in (0..rows).step_by(8) {
            piece8(a.add(r0 * pairs), pairs, b, c.add(r0 * sc), sc, (rows - r0).min(8), masks, accumulate);
        }
    }
}

/// A mask of the first `n` (<= 16) lanes.
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// C rows 0..rows (<= 8) x the lanes of `masks` (+)= A (8 packed rows of `pairs` k-pairs, as
/// u32) @ B (`pairs` pair-rows of 32 u32).
///
/// # Safety
/// AVX512-BF16 available; `pairs` > 0; a valid for 8 rows of `pairs` u32, b for `pairs` 64-byte
/// aligned rows of 32 u32, c for `rows` rows (stride sc floats) of the masked columns.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn piece8(
    a: *const u32,
    pairs: usize,
    b: *const u32,
    c: *mut f32,
    sc: usize,
    rows: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
) {
    // acc[2i + h]: C row i, columns 16h..16h+16
    let mut acc = [_mm512_setzero_ps(); 16];
    if accumulate {
        for i in 0..rows {
            acc[2 * i] = _mm512_maskz_loadu_ps(masks[0], c.add(i * sc));
            acc[2 * i + 1] = _mm512_maskz_loadu_ps(masks[1], c.add(i * sc + 16));
        }
    }
    // Per pair-row: two B vectors (zmm16-17), each row's A pair broadcast (zmm18-25), 16 dots.
    // Rows 0-3 are at a + {0,1,2,3}*sa, rows 4-7 at a4 + the same.
    #[rustfmt::skip]
    macro_rules! row {
        ($base:literal, $off:literal, $bc:literal, $lo:literal, $hi:literal) => {
            concat!(
                "vpbroadcastd zmm", $bc, ", dword ptr [{", $base, "}", $off, "]\n",
                "vdpbf16ps zmm", $lo, ", zmm16, zmm", $bc, "\n",
                "vdpbf16ps zmm", $hi, ", zmm17, zmm", $bc, "\n"
            )
        };
    }
    std::arch::asm!(
        "2:",
        "vmovaps zmm16, [{b}]",
        "vmovaps zmm17, [{b} + 64]",
        row!("a", "", "18", "0", "1"),
        row!("a", " + {sa}", "19", "2", "3"),
        row!("a", " + {sa}*2", "20", "4", "5"),
        row!("a", " + {sa3}", "21", "6", "7"),
        row!("a4", "", "22", "8", "9"),
        row!("a4", " + {sa}", "23", "10", "11"),
        row!("a4", " + {sa}*2", "24", "12", "13"),
        row!("a4", " + {sa3}", "25", "14", "15"),
        "add {a}, 4",
        "add {a4}, 4",
        "add {b}, 128",
        "dec {n}",
        "jnz 2b",
        a = inout(reg) a => _,
        a4 = inout(reg) a.add(4 * pairs) => _,
        sa = in(reg) 4 * pairs,
        sa3 = in(reg) 12 * pairs,
        b = inout(reg) b => _,
        n = inout(reg) pairs => _,
        inout("zmm0") acc[0], inout("zmm1") acc[1], inout("zmm2") acc[2], inout("zmm3") acc[3],
        inout("zmm4") acc[4], inout("zmm5") acc[5], inout("zmm6") acc[6], inout("zmm7") acc[7],
        inout("zmm8") acc[8], inout("zmm9") acc[9], inout("zmm10") acc[10], inout("zmm11") acc[11],
        inout("zmm12") acc[12], inout("zmm13") acc[13], inout("zmm14") acc[14], inout("zmm15") acc[15],
        out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _,
        options(nostack, readonly)
    );
    for i in 0..rows {
        _mm512_mask_storeu_ps(c.add(i * sc), masks[0], acc[2 * i]);
        _mm512_mask_storeu_ps(c.add(i * sc + 16), masks[1], acc[2 * i + 1]);
    }
}
