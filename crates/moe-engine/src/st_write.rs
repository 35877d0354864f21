//! Streams named tensors into a safetensors file, atomically (temporary file, fsync, rename),
//! holding at most one tensor's bytes in memory beyond the caller's: f32 values, bf16 bytes
//! as they are, or a packed base matrix (`packed`) as bf16 bytes (bf16) or decoded to f32
//! (Q8_0, which safetensors has no type for). Checkpoints of large models are written this way
//! instead of being serialised into one buffer first.

use crate::checkpoint::DISK_BUDGET;
use crate::error::{Error, Result};
use crate::packed::{BaseFormat, PackedMat};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

/// One tensor's values.
pub enum Data<'a> {
    F32(&'a [f32]),
    Packed(PackedMat<'a>),
}

impl Data<'_> {
    fn dtype(&self) -> &'static str {
        match self {
            Data::Packed(m) if m.format == BaseFormat::Bf16 => "BF16",
            _ => "F32",
        }
    }
    fn bytes(&self) -> usize {
        match self {
            Data::F32(x) => x.len() * 4,
            Data::Packed(m) if m.format == BaseFormat::Bf16 => m.len * 2,
            Data::Packed(m) => m.len * 4,
        }
    }
}

/// Elements converted per write.
const CHUNK: usize = 1 << 16;

/// A safetensors header for tensors stored back to back in this order, each (name, dtype,
/// shape, bytes): the 8-byte length, then the JSON padded with spaces to a multiple of 8 bytes.
pub(crate) fn header<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a str, &'a [usize], usize)>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    let mut off = 0;
    for (name, dtype, shape, bytes) in tensors {
        map.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let mut json = serde_json::Value::Object(map).to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out
}

/// Writes `tensors` (name, shape, values) as the safetensors file `path`.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Data)]) -> Result<()> {
    let head = header(tensors.iter().map(|(n, s, d)| (n.as_str(), d.dtype(), &s[..], d.bytes())));
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    let w = Budgeted(std::io::BufWriter::with_capacity(1 << 20, file));
    stream(w, &head, tensors).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// The header, then every tensor's bytes; fsync.
fn stream(
    mut w: Budgeted<std::io::BufWriter<std::fs::File>>,
    head: &[u8],
    tensors: &[(String, Vec<usize>, Data)],
) -> std::io::Result<()> {
    w.write_all(head)?;
    let mut buf: Vec<f32> = Vec::with_capacity(CHUNK);
    for (_, _, d) in tensors {
        match d {
            Data::F32(x) => {
                for c in x.chunks(CHUNK) {
                    w.write_all(&crate::checkpoint::to_bytes(c))?;
                }
            }
            Data::Packed(m) if m.format == BaseFormat::Bf16 => w.write_all(m.raw_bf16())?,
            Data::Packed(m) => {
                for e0 in (0..m.len).step_by(CHUNK) {
                    buf.resize((m.len - e0).min(CHUNK), 0.0);
                    m.decode(e0, &mut buf);
                    w.write_all(&crate::checkpoint::to_bytes(&buf))?;
                }
            }
        }
    }
    w.0.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// A writer that fails as a full disk does once the test hook `DISK_BUDGET` is spent (every
/// checkpoint file goes through one: `checkpoint::write_atomic` too).
pub(crate) struct Budgeted<W>(pub W);

impl<W: Write> Write for Budgeted<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let budget = DISK_BUDGET.load(Ordering::SeqCst);
        if budget >= 0 {
            if bytes.len() as i64 > budget {
                DISK_BUDGET.store(0, Ordering::SeqCst);
                self.0.write_all(&bytes[..budget as usize])?;
                return Err(std::io::Error::from_raw_os_error(28));
            }
            DISK_BUDGET.fetch_sub(bytes.len() as i64, Ordering::SeqCst);
        }
        self.0.write_all(bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
