//! A frozen base model's weight matrices held packed, in bf16 or Q8_0, for LoRA fine-tuning
//! over a compressed base (the QLoRA idea in the formats this engine runs): the matrices take
//! 2 or 1.06 bytes per weight instead of 4, and every product decodes them to the model's float
//! type a block of rows at a time (`linear::Lin`). Q8_0 is llama.cpp's (`moe_kernels::q8_0`, as
//! the inference engine quantises); packing a decoded matrix again gives the same bytes, so a
//! run resumed from a checkpoint (which holds the decoded weights) computes exactly the same.

use crate::error::{Error, Result};
use crate::params::{Layout, Span};
use moe_kernels::q8_0::{self, BLOCK as Q8_BLOCK, BYTES as Q8_BYTES};
use moe_kernels::Float;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How a frozen base's weight matrices are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseFormat {
    /// As the trainable weights: f32.
    #[default]
    F32,
    Bf16,
    Q8_0,
}

/// One packed tensor, or a contiguous part of one (an expert): elements [start, start + len)
/// of the tensor whose bytes are `data`.
#[derive(Clone, Copy)]
pub struct PackedMat<'a> {
    pub format: BaseFormat,
    data: &'a [u8],
    start: usize,
    pub len: usize,
}

impl<'a> PackedMat<'a> {
    /// Part `i` of `parts` equal parts.
    pub fn part(&self, i: usize, parts: usize) -> Self {
        let n = self.len / parts;
        PackedMat { start: self.start + i * n, len: n, ..*self }
    }

    /// The bf16 bytes of a bf16 matrix.
    pub fn raw_bf16(&self) -> &'a [u8] {
        debug_assert_eq!(self.format, BaseFormat::Bf16);
        &self.data[self.start * 2..(self.start + self.len) * 2]
    }

    /// out[k] = element e0 + k of this matrix, for k < out.len().
    pub fn decode<T: Float>(&self, e0: usize, out: &mut [T]) {
        let e0 = self.start + e0;
        match self.format {
            BaseFormat::F32 => unreachable!("f32 weights are not packed"),
            BaseFormat::Bf16 => {
                for (o, b) in out.iter_mut().zip(self.data[e0 * 2..].chunks_exact(2)) {
                    *o = T::from_f64(moe_kernels::bf16::from_bf16(u16::from_le_bytes([b[0], b[1]])) as f64);
                }
            }
            BaseFormat::Q8_0 => {
                // whole blocks decoded, the part of each that [e0, e0 + len) covers kept
                let mut block = [0.0f32; Q8_BLOCK];
                let (mut e, mut k) = (e0, 0);
                while k < out.len() {
                    let (blk, within) = (e / Q8_BLOCK, e % Q8_BLOCK);
                    q8_0::decode_block(&self.data[blk * Q8_BYTES..(blk + 1) * Q8_BYTES], &mut block);
                    let take = (Q8_BLOCK - within).min(out.len() - k);
                    for (o, &v) in out[k..k + take].iter_mut().zip(&block[within..]) {
                        *o = T::from_f64(v as f64);
                    }
                    k += take;
                    e += take;
                }
            }
        }
    }
}

/// The packed matrices of a model, keyed by their span in the parameter layout.
pub struct PackedBase {
    pub format: BaseFormat,
    tensors: HashMap<usize, (Span, Vec<u8>)>,
}

impl PackedBase {
    /// Packs the matrices at `spans` of `p` in `format` (not f32).
    pub fn pack(p: &[f32], spans: &[Span], format: BaseFormat) -> Result<Self> {
        if format == BaseFormat::F32 {
            return Err(Error::config("an f32 base is not packed", "report this as a bug"));
        }
        let tensors = spans.iter().map(|&s| (s.off, (s, encode(s.of(p), format)))).collect();
        Ok(PackedBase { format, tensors })
    }

    /// The packed matrix at `span`, if it is packed.
    pub fn get(&self, span: Span) -> Option<PackedMat<'_>> {
        let (s, data) = self.tensors.get(&span.off)?;
        (s.len == span.len).then_some(PackedMat { format: self.format, data, start: 0, len: s.len })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(|(_, d)| d.len()).sum()
    }

    /// Writes every packed matrix, decoded, into its span of `p`.
    pub fn unpack_into(&self, p: &mut [f32]) {
        for (s, _) in self.tensors.values() {
            if let Some(m) = self.get(*s) {
                m.decode(0, s.of_mut(p));
            }
        }
    }
}

/// The bytes of `x` in `format`.
fn encode(x: &[f32], format: BaseFormat) -> Vec<u8> {
    match format {
        BaseFormat::F32 => unreachable!("f32 weights are not packed"),
        BaseFormat::Bf16 => x.iter().flat_map(|&v| moe_kernels::bf16::to_bf16(v).to_le_bytes()).collect(),
        BaseFormat::Q8_0 => {
            let mut out = vec![0u8; x.len().div_ceil(Q8_BLOCK) * Q8_BYTES];
            for (blk, dst) in x.chunks(Q8_BLOCK).zip(out.chunks_exact_mut(Q8_BYTES)) {
                q8_0::encode_block(blk, dst);
            }
            out
        }
    }
}

/// The parameters a forward reads: the flat buffer and, under LoRA over a packed base, the
/// packed matrices (their spans in `p` are then unused).
#[derive(Clone, Copy)]
pub struct Weights<'a, T> {
    pub p: &'a [T],
    pub packed: Option<&'a PackedBase>,
}

impl Layout {
    /// The spans of every linear layer's weight matrix (what a packed base packs): attention
    /// projections, dense and expert MLPs, routers, shared experts, the LM head.
    pub fn linear_weights(&self) -> Vec<Span> {
        let mut out = vec![];
        for ls in &self.layers {
            out.extend(ls.mla.and_then(|m| m.q_a).map(|[q_a, _]| q_a));
            out.extend([ls.wq, ls.wk, ls.wv, ls.wo]);
            match &ls.ffn {
                crate::params::FfnSpans::Dense { gate, up, down, .. } => out.extend([*gate, *up, *down]),
                crate::params::FfnSpans::Moe(m) => {
                    out.extend([m.router, m.gate, m.up, m.down]);
                    out.extend(m.shared.iter().flatten());
                }
            }
        }
        out.push(self.lm_head);
        out
    }
}

/// Under LoRA over a packed base (`LoraConfig::base`), packs the model's linear weights from
/// `params` into `model.packed` and returns the parameters without them: their spans are set to
/// zero and their pages given back to the OS (`buffer::release`), one matrix at a time, so
/// packing never holds much more than the f32 weights.
pub fn pack_base(model: &mut crate::model::Model<f32>, mut params: Vec<f32>) -> Result<Vec<f32>> {
    let format = model.cfg.lora.as_ref().map_or(BaseFormat::F32, |l| l.base);
    if format == BaseFormat::F32 {
        return Ok(params);
    }
    let spans = model.layout.linear_weights();
    let mut tensors = HashMap::with_capacity(spans.len());
    for s in spans {
        tensors.insert(s.off, (s, encode(s.of(&params), format)));
        moe_kernels::buffer::release(s.of_mut(&mut params));
    }
    model.packed = Some(PackedBase { format, tensors });
    Ok(params)
}
