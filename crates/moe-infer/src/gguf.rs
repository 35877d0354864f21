//! GGUF files as llama.cpp writes them (versions 2 and 3): the header, the metadata key/values
//! and the tensor directory, read from a memory map with every length, count and offset
//! checked against the file, so a truncated or corrupt file is an error naming what is wrong,
//! never a panic or an out-of-bounds read. Tensor data stays in the map.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A ggml tensor type, by its id in ggml.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const BF16: GgmlType = GgmlType(30);

    /// ggml's name of the type ("Q4_K"), or "type N" for ids it does not name.
    pub fn name(self) -> String {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
            "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
        ];
        NAMES.get(self.0 as usize).map_or(format!("type {}", self.0), |n| n.to_string())
    }

    /// (values, bytes) per block of the types moe reads (floats and `quants::FORMATS`).
    fn layout(self) -> Option<(u64, u64)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            _ => crate::quants::format(&self.name()).map(|f| (f.values as u64, f.bytes as u64)),
        }
    }

    /// Bytes of `n` values (n a multiple of the block size); None for unsupported types and
    /// for counts whose size overflows u64.
    pub fn bytes(self, n: u64) -> Option<u64> {
        let (values, bytes) = self.layout()?;
        (n / values).checked_mul(bytes)
    }

    /// Values per block (1 for floats and unsupported types).
    pub fn block(self) -> u64 {
        self.layout().map_or(1, |l| l.0)
    }
}

/// One tensor of the directory.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    /// ggml's ne: ne[0] is the contiguous (column) dimension; the row-major shape is reversed.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Byte range of the data in the file.
    pub start: usize,
    pub end: usize,
}

impl GgufTensor {
    /// The row-major shape (as safetensors and PyTorch write it).
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: metadata as JSON values and the tensor directory.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub kv: BTreeMap<String, Value>,
    pub tensors: Vec<GgufTensor>,
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Format { path: self.path.to_path_buf(), msg: format!("{} (at byte {})", msg.into(), self.at) }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes, the file has {} left; download it again",
                self.b.len() - self.at
            )));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items of at least `min` bytes each, checked against the bytes left.
    fn count(&mut self, what: &str, min: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.b.len() - self.at) as u64;
        if n > left / min.max(1) as u64 {
            return Err(self.err(format!("{what} {n} cannot fit in the {left} bytes left; the file is corrupt")));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
    /// A metadata value of type `ty` (gguf_type).
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::from(self.take(1, "u8")?[0]),
            1 => Value::from(self.take(1, "i8")?[0] as i8),
            2 => {
                let s = self.take(2, "u16")?;
                Value::from(u16::from_le_bytes([s[0], s[1]]))
            }
            3 => {
                let s = self.take(2, "i16")?;
                Value::from(i16::from_le_bytes([s[0], s[1]]))
            }
            4 => Value::from(self.u32("u32")?),
            5 => Value::from(self.u32("i32")? as i32),
            6 => Value::from(f32::from_bits(self.u32("f32")?) as f64),
            7 => Value::from(self.take(1, "bool")?[0] != 0),
            8 => Value::from(self.string("string")?),
            9 => {
                if depth > 2 {
                    return Err(self.err("arrays nested too deeply"));
                }
                let inner = self.u32("array type")?;
                let n = self.count("array length", 1)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::from(self.u64("u64")?),
            11 => Value::from(self.u64("i64")? as i64),
            12 => Value::from(f64::from_bits(self.u64("f64")?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
}

impl Gguf {
    /// Parses the header and directory of `bytes` (the whole file).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Gguf> {
        let mut c = Cursor { b: bytes, at: 0, path };
        if c.take(4, "magic")? != b"GGUF" {
            return Err(c.err("not a GGUF file (no GGUF magic)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        // A tensor entry takes at least 8 + 4 + 8 + 4 + 8 bytes, a key/value at least 8 + 4 + 1.
        let n_tensors = c.count("tensor count", 32)?;
        let n_kv = c.count("metadata count", 13)?;
        let mut kv = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let v = c.value(ty, 0)?;
            if kv.insert(key.clone(), v).is_some() {
                return Err(c.err(format!("metadata key `{key}` appears twice")));
            }
        }
        let align = match kv.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| c.err("general.alignment is not a power of two"))?,
        } as usize;
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimensions")?;
            if !(1..=4).contains(&n_dims) {
                return Err(c.err(format!("tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)")));
            }
            let ne = (0..n_dims).map(|_| c.u64("tensor dimension")).collect::<Result<Vec<u64>>>()?;
            let ty = GgmlType(c.u32("tensor type")?);
            let off = c.u64("tensor offset")?;
            raw.push((name, ne, ty, off));
        }
        let data = c.at.next_multiple_of(align);
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::new();
        for (name, ne, ty, off) in raw {
            let bad = |msg: String| Error::Format { path: path.to_path_buf(), msg: format!("tensor `{name}`: {msg}") };
            if !names.insert(name.clone()) {
                return Err(bad("appears twice in the directory".into()));
            }
            let n = ne
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("dimensions {ne:?} overflow")))?;
            if ne[0] % ty.block() != 0 {
                return Err(bad(format!(
                    "{} rows of {} values are not whole blocks of {}",
                    ty.name(),
                    ne[0],
                    ty.block()
                )));
            }
            // an unsupported type is refused when the tensor is used, with the type's name
            let len = match ty.layout() {
                None => 0,
                Some(_) => ty.bytes(n).ok_or_else(|| bad(format!("dimensions {ne:?} overflow")))?,
            };
            if off % align as u64 != 0 {
                return Err(bad(format!("data offset {off} is not aligned to {align}")));
            }
            let start = (data as u64).checked_add(off);
            let end = start.and_then(|s| s.checked_add(len)).filter(|&e| e <= bytes.len() as u64);
            let (Some(start), Some(end)) = (start, end) else {
                return Err(bad(format!(
                    "data (offset {off}, {len} bytes) runs past the end of the file ({} bytes); truncated download?",
                    bytes.len()
                )));
            };
            tensors.push(GgufTensor { name, ne, ty, start: start as usize, end: end as usize });
        }
        Ok(Gguf { path: path.to_path_buf(), version, kv, tensors })
    }

    /// A metadata string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.kv.get(key).and_then(|v| v.as_str())
    }

    /// A metadata integer.
    pub fn usize(&self, key: &str) -> Option<usize> {
        self.kv.get(key).and_then(|v| v.as_u64()).map(|x| x as usize)
    }

    /// A metadata number.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.kv.get(key).and_then(|v| v.as_f64())
    }
}
