//! GGUF access: opens a file with candle-core's reader and gives typed metadata look-ups and tensor
//! loading that fail with errors naming the missing key or tensor.
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::error::EngineError;

/// An opened GGUF file: its parsed header (metadata + tensor table) and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens `path` and parses the GGUF header (tensor data is read lazily by [`GgufFile::tensor`]).
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| EngineError::Gguf {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw metadata value under `key`, if any.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A required unsigned integer (any integer width in the file).
    pub fn u64(&self, key: &str) -> Result<u64, EngineError> {
        self.opt_u64(key)
            .ok_or_else(|| EngineError::MissingMetadata(key.to_string()))
    }

    /// An optional unsigned integer; `None` when absent or not an integer.
    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        match self.value(key)? {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A required usize.
    pub fn usize(&self, key: &str) -> Result<usize, EngineError> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| EngineError::MissingMetadata(key.to_string()))
    }

    /// An optional float (f32 or f64 in the file).
    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        match self.value(key)? {
            Value::F32(v) => Some(f64::from(*v)),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Option<&str> {
        match self.value(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, EngineError> {
        self.opt_str(key)
            .ok_or_else(|| EngineError::MissingMetadata(key.to_string()))
    }

    /// A required array of strings.
    pub fn string_array(&self, key: &str) -> Result<Vec<&str>, EngineError> {
        let missing = || EngineError::MissingMetadata(key.to_string());
        let Some(Value::Array(items)) = self.value(key) else {
            return Err(missing());
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(missing()),
            })
            .collect()
    }

    /// An optional array of integers (e.g. `tokenizer.ggml.token_type`).
    pub fn opt_int_array(&self, key: &str) -> Option<Vec<i64>> {
        let Value::Array(items) = self.value(key)? else {
            return None;
        };
        items
            .iter()
            .map(|v| match v {
                Value::U8(v) => Some(i64::from(*v)),
                Value::I8(v) => Some(i64::from(*v)),
                Value::U16(v) => Some(i64::from(*v)),
                Value::I16(v) => Some(i64::from(*v)),
                Value::U32(v) => Some(i64::from(*v)),
                Value::I32(v) => Some(i64::from(*v)),
                Value::U64(v) => i64::try_from(*v).ok(),
                Value::I64(v) => Some(*v),
                _ => None,
            })
            .collect()
    }

    /// Whether the tensor table has `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Elements in all tensors of the file (the model's parameter count).
    pub fn total_elements(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() as u64)
            .sum()
    }

    /// Reads tensor `name` (still quantized) onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor, EngineError> {
        if !self.has_tensor(name) {
            return Err(EngineError::MissingTensor(name.to_string()));
        }
        Ok(self.content.tensor(&mut self.reader, name, device)?)
    }
}
