//! Activation rows laid out once for the 512-bit pair kernels (`vnni`), for batches of tokens
//! against the same weights (prefill chunks, batched decode steps): per pair of Q8_0 blocks, the
//! 64 activation bytes in the order the weight format's kernel multiplies them, the 16 int32
//! lanes `vpdpbusd` starts from (the format's weight offset times the block sum) and the 16 f32
//! lanes of the blocks' scales. Built once per token instead of shuffled, permuted and
//! multiplied again for every weight row: the kernel's work per token and pair of blocks drops
//! from about nine vector operations to four (`vpdpbusd`, a conversion, a multiply, an FMA).
//! Where the 512-bit kernels are not built, a [`Lanes`] holds only its plain row and the
//! products run through the ordinary kernels.

use super::Q8Row;

/// The weight format whose pair kernel reads a [`Lanes`] layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneKind {
    /// Two blocks' 64 bytes in order; weights offset by +128, so lanes start at -16 x sum.
    Q8_0,
    /// 16-byte quarters as [low nibbles of b, of b+1, high nibbles of b, of b+1]; weights
    /// offset by +8, so lanes start at -1 x sum (four lanes per block and quarter).
    Q4_0,
}

impl LaneKind {
    /// The block (0: b, 1: b+1) of each int32 lane.
    pub(super) fn lane_block(self) -> [usize; 16] {
        match self {
            LaneKind::Q8_0 => [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
            LaneKind::Q4_0 => [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1],
        }
    }
    /// Each lane's start per unit of its block's sum (-offset x 32 / 8 lanes per block).
    fn lane_bias(self) -> i32 {
        match self {
            LaneKind::Q8_0 => -16,
            LaneKind::Q4_0 => -1,
        }
    }
    /// Source range in the pair's 64 activation bytes of each 16-byte quarter.
    fn quarters(self) -> [usize; 4] {
        match self {
            LaneKind::Q8_0 => [0, 16, 32, 48],
            LaneKind::Q4_0 => [0, 32, 16, 48],
        }
    }
}

/// 64 bytes on a cache-line boundary (one 512-bit load).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Chunk(pub [u8; 64]);

/// One activation row: the plain Q8_0 row, and on machines with the pair kernels its layout
/// for `kind`: three chunks per whole pair of blocks (x bytes, int32 starts, f32 scales).
/// A layout is read only by its own kind's kernel (checked).
pub struct Lanes<'a> {
    pub x: Q8Row<'a>,
    /// None: the plain row only ([`Lanes::plain`]).
    pub kind: Option<LaneKind>,
    pub(super) v: Vec<Chunk>,
}

impl<'a> Lanes<'a> {
    pub fn new(x: Q8Row<'a>, kind: LaneKind) -> Lanes<'a> {
        let v = if super::PAIR_KERNELS { layout(x, kind) } else { Vec::new() };
        Lanes { x, kind: Some(kind), v }
    }

    /// Whether the row is laid out for a pair kernel (not on machines without them).
    pub fn laid_out(&self) -> bool {
        !self.v.is_empty()
    }

    /// The plain row only, for weight types without a pair kernel.
    pub fn plain(x: Q8Row<'a>) -> Lanes<'a> {
        Lanes { x, kind: None, v: Vec::new() }
    }
}

fn layout(x: Q8Row, kind: LaneKind) -> Vec<Chunk> {
    let pairs = x.xd.len() / 2;
    let (blocks, bias) = (kind.lane_block(), kind.lane_bias());
    let mut v = vec![Chunk([0; 64]); 3 * pairs];
    for (p, c) in v.chunks_exact_mut(3).enumerate() {
        let xs = &x.xq[64 * p..64 * p + 64];
        for (q, &src) in kind.quarters().iter().enumerate() {
            for (o, &b) in c[0].0[16 * q..16 * q + 16].iter_mut().zip(&xs[src..src + 16]) {
                *o = b as u8;
            }
        }
        for (l, &blk) in blocks.iter().enumerate() {
            let (init, d) = (bias * x.xs[2 * p + blk], x.xd[2 * p + blk]);
            c[1].0[4 * l..4 * l + 4].copy_from_slice(&init.to_le_bytes());
            c[2].0[4 * l..4 * l + 4].copy_from_slice(&d.to_le_bytes());
        }
    }
    v
}
