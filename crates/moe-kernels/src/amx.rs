//! The AMX block kernel of [`crate::bf16`]'s products (`tdpbf16ps`, Intel Sapphire Rapids and
//! newer). It keeps a 32x32 block of C in four tiles (tmm0-3) and streams two A tiles (tmm4-5,
//! 16 rows x 32 k) and two B tiles (tmm6-7, 16 k-pairs x 16 columns) per 32 k; full blocks of C
//! are loaded (when accumulating) and stored in place, edge blocks go through a stack buffer.
//! Linux needs the process to ask for the tile state
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), done once by [`available`].

use crate::bf16::{Block, BlockKernel};
use std::sync::OnceLock;

/// True when the CPU has AMX-BF16 (and AVX-512 F/BW, used by the packing) and the kernel granted
/// this process the tile state.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (bf16, tile) = ((leaf7.edx >> 22) & 1 == 1, (leaf7.edx >> 24) & 1 == 1);
            let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            if !(bf16 && tile && avx512) {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain syscall with integer arguments.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Tile configuration: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileCfg {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CFG: TileCfg = TileCfg {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// C (+)= A rows (32 x 32*kb, row stride sa bytes) @ B (16*kb pair-rows, stride sb bytes,
/// 32 columns), where C is a 32 x 32 f32 block at `c` with row stride `sc` bytes, read first when
/// `load`. The tile configuration must be loaded on this thread.
///
/// # Safety
/// AMX available and configured; a, b, c valid for the extents above.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_32x32(
    a: *const u16,
    sa: usize,
    b: *const u32,
    sb: usize,
    kb: usize,
    c: *mut f32,
    sc: usize,
    load: bool,
) {
    std::arch::asm!(
        "test {load}, {load}",
        "jz 3f",
        "tileloadd tmm0, [{c} + {sc}*1]",
        "tileloadd tmm1, [{c} + {sc}*1 + 64]",
        "tileloadd tmm2, [{c2} + {sc}*1]",
        "tileloadd tmm3, [{c2} + {sc}*1 + 64]",
        "jmp 2f",
        "3:",
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a} + {sa}*1]",
        "tileloadd tmm5, [{a2} + {sa}*1]",
        "tileloadd tmm6, [{b} + {sb}*1]",
        "tileloadd tmm7, [{b2} + {sb}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a}, 64",
        "add {a2}, 64",
        "add {b}, {bstep}",
        "add {b2}, {bstep}",
        "dec {kb}",
        "jnz 2b",
        "tilestored [{c} + {sc}*1], tmm0",
        "tilestored [{c} + {sc}*1 + 64], tmm1",
        "tilestored [{c2} + {sc}*1], tmm2",
        "tilestored [{c2} + {sc}*1 + 64], tmm3",
        a = inout(reg) a => _,
        a2 = inout(reg) a.byte_add(16 * sa) => _,
        b = inout(reg) b => _,
        b2 = inout(reg) b.byte_add(64) => _,
        sa = in(reg) sa,
        sb = in(reg) sb,
        bstep = in(reg) 16 * sb,
        kb = inout(reg) kb => _,
        c = in(reg) c,
        c2 = in(reg) c.byte_add(16 * sc),
        sc = in(reg) sc,
        load = in(reg) load as usize,
        options(nostack)
    );
}

/// The AMX kernel for [`crate::bf16::matmul_bf16`].
pub(crate) struct Tiles;

impl BlockKernel for Tiles {
    unsafe fn begin(&self) {
        // SAFETY: AMX is available (caller); the config is static and valid.
        std::arch::asm!("ldtilecfg [{}]", in(reg) &CFG, options(nostack));
    }

    unsafe fn end(&self) {
        std::arch::asm!("tilerelease", options(nostack));
    }

    unsafe fn block(&self, blk: &Block) {
        let &Block { a, kp, b, c, sc, rows, cols, accumulate } = blk;
        if rows == 32 && cols == 32 {
            kernel_32x32(a, kp * 2, b, 128, kp / 32, c, sc * 4, accumulate);
            return;
        }
        let mut buf = [0f32; 32 * 32];
        kernel_32x32(a, kp * 2, b, 128, kp / 32, buf.as_mut_ptr(), 128, false);
        for r in 0..rows {
            // SAFETY: the caller gives rows x cols of C at stride sc to this call.
            let d = std::slice::from_raw_parts_mut(c.add(r * sc), cols);
            let src = &buf[r * 32..r * 32 + cols];
            if accumulate {
                d.iter_mut().zip(src).for_each(|(x, y)| *x += y);
            } else {
                d.copy_from_slice(src);
            }
        }
    }
}
