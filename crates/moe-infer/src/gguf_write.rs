//! GGUF files written (version 3, the layout `gguf` reads and llama.cpp writes): the header,
//! metadata key/values, the tensor directory and the f32 tensor data, each tensor aligned to 32
//! bytes. What `moe export --gguf` produces.

/// A metadata value of the kinds an exported model needs.
pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF file under construction.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<(String, Meta)>,
    /// (name, ggml ne (ne[0] contiguous), f32 values).
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

const ALIGN: usize = 32;
// ggml's metadata value types
const U32: u32 = 4;
const I32: u32 = 5;
const F32: u32 = 6;
const BOOL: u32 = 7;
const STRING: u32 = 8;
const ARRAY: u32 = 9;

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl GgufWriter {
    pub fn meta(&mut self, key: &str, v: Meta) {
        self.kv.push((key.to_string(), v));
    }

    /// A tensor of row-major `shape` (outermost first) and f32 `data`.
    pub fn tensor(&mut self, name: &str, shape: &[usize], data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.tensors.push((name.to_string(), shape.iter().rev().map(|&d| d as u64).collect(), data));
    }

    /// The whole file.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut b, k);
            match v {
                Meta::U32(x) => {
                    b.extend(U32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                Meta::F32(x) => {
                    b.extend(F32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                Meta::Bool(x) => {
                    b.extend(BOOL.to_le_bytes());
                    b.push(*x as u8);
                }
                Meta::Str(s) => {
                    b.extend(STRING.to_le_bytes());
                    put_str(&mut b, s);
                }
                Meta::Strs(list) => {
                    b.extend(ARRAY.to_le_bytes());
                    b.extend(STRING.to_le_bytes());
                    b.extend((list.len() as u64).to_le_bytes());
                    list.iter().for_each(|s| put_str(&mut b, s));
                }
                Meta::I32s(list) => {
                    b.extend(ARRAY.to_le_bytes());
                    b.extend(I32.to_le_bytes());
                    b.extend((list.len() as u64).to_le_bytes());
                    list.iter().for_each(|x| b.extend(x.to_le_bytes()));
                }
            }
        }
        let mut offset = 0usize;
        for (name, ne, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend((ne.len() as u32).to_le_bytes());
            ne.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(0u32.to_le_bytes()); // GGML_TYPE_F32
            b.extend((offset as u64).to_le_bytes());
            offset += (data.len() * 4).next_multiple_of(ALIGN);
        }
        b.resize(b.len().next_multiple_of(ALIGN), 0);
        for (_, _, data) in &self.tensors {
            data.iter().for_each(|x| b.extend(x.to_le_bytes()));
            b.resize(b.len().next_multiple_of(ALIGN), 0);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlType, Gguf};

    /// What the writer writes, the reader reads back: metadata of every kind and tensors.
    #[test]
    fn the_reader_reads_what_the_writer_wrote() {
        let mut w = GgufWriter::default();
        w.meta("general.architecture", Meta::Str("llama".into()));
        w.meta("llama.block_count", Meta::U32(2));
        w.meta("llama.rope.freq_base", Meta::F32(10000.0));
        w.meta("tokenizer.ggml.add_bos_token", Meta::Bool(false));
        w.meta("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into(), "b c".into()]));
        w.meta("tokenizer.ggml.token_type", Meta::I32s(vec![1, 3]));
        w.tensor("x.weight", &[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        w.tensor("y.weight", &[5], vec![0.5; 5]);
        let bytes = w.bytes();
        let g = Gguf::parse(&bytes, std::path::Path::new("t.gguf")).unwrap();
        assert_eq!(g.str("general.architecture"), Some("llama"));
        assert_eq!(g.usize("llama.block_count"), Some(2));
        assert_eq!(g.f64("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(g.kv["tokenizer.ggml.add_bos_token"], serde_json::json!(false));
        assert_eq!(g.kv["tokenizer.ggml.tokens"], serde_json::json!(["a", "b c"]));
        assert_eq!(g.kv["tokenizer.ggml.token_type"], serde_json::json!([1, 3]));
        let x = &g.tensors[0];
        assert_eq!((x.name.as_str(), x.shape(), x.ty), ("x.weight", vec![2, 3], GgmlType::F32));
        let vals: Vec<f32> =
            bytes[x.start..x.end].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(vals, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(g.tensors[1].start % 32, 0);
    }
}
