//! Container stdout/stderr to a file in the CRI log format that kubelet
//! and `kubectl logs` read:
//!
//! ```text
//! 2026-01-02T03:04:05.123456789Z stdout F a complete line
//! 2026-01-02T03:04:05.123456789Z stderr P first part of a very long line
//! ```
//!
//! "F" marks the end of a line, "P" a piece of a line longer than the
//! buffer. The file is rotated by size: FILE → FILE.1 → … → FILE.(N-1).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, ShimError};
use crate::state::now_rfc3339;

/// Longest piece written as one log line (like containerd's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate when the file would grow past this many bytes (0 = never).
    pub max_size: u64,
    /// Files kept, the current one included (at least 1).
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ShimError::io("open log", path, e))
}

impl CriLog {
    pub fn open(path: &Path, rotation: Rotation) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ShimError::io("mkdir", parent, e))?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(CriLog {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> Result<()> {
        let keep = self.rotation.max_files.max(1);
        if keep == 1 {
            self.file
                .set_len(0)
                .map_err(|e| ShimError::io("truncate", &self.path, e))?;
        } else {
            let _ = std::fs::remove_file(self.rotated(keep - 1));
            for n in (1..keep - 1).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))
                .map_err(|e| ShimError::io("rename", &self.path, e))?;
            self.file = open_append(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Write one record; `full` says whether it ends a line.
    pub fn write_record(&mut self, stream: &str, full: bool, content: &[u8]) -> Result<()> {
        let mut rec = Vec::with_capacity(content.len() + 48);
        rec.extend_from_slice(now_rfc3339().as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_bytes());
        rec.extend_from_slice(if full { b" F " } else { b" P " });
        rec.extend_from_slice(content);
        rec.push(b'\n');
        let max = self.rotation.max_size;
        if max > 0 && self.size > 0 && self.size + rec.len() as u64 > max {
            self.rotate()?;
        }
        self.file
            .write_all(&rec)
            .map_err(|e| ShimError::io("write log", &self.path, e))?;
        self.size += rec.len() as u64;
        Ok(())
    }
}

/// Splits one stream's bytes into lines.
#[derive(Debug)]
pub struct LineSplitter {
    pub stream: &'static str,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: &'static str) -> Self {
        LineSplitter {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn feed(&mut self, data: &[u8], log: &mut CriLog) -> Result<()> {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + i;
            let mut line = &self.buf[start..end];
            // Long lines were cut into pieces of MAX_LINE.
            while line.len() > MAX_LINE {
                log.write_record(self.stream, false, &line[..MAX_LINE])?;
                line = &line[MAX_LINE..];
            }
            log.write_record(self.stream, true, line)?;
            start = end + 1;
        }
        self.buf.drain(..start);
        while self.buf.len() >= MAX_LINE {
            let piece: Vec<u8> = self.buf.drain(..MAX_LINE).collect();
            log.write_record(self.stream, false, &piece)?;
        }
        Ok(())
    }

    /// The stream ended: a last line without newline is still a full line.
    pub fn finish(&mut self, log: &mut CriLog) -> Result<()> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            log.write_record(self.stream, true, &rest)?;
        }
        Ok(())
    }
}
