//! Container logs as `kubectl logs` wants them, read from the CRI files the shim writes:
//! `<logs dir>/<ns>_<pod>_<uid>/<container>/<restart count>.log`, each record
//! `<RFC3339Nano> stdout|stderr F|P <text>`, rotated by size to `N.log.1`, `N.log.2`, ….

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::NodeApiError;

/// The query of `/containerLogs/...` (kubelet's names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<jiff::Timestamp>,
    pub timestamps: bool,
    pub previous: bool,
    pub limit_bytes: Option<u64>,
}

fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl LogOptions {
    pub fn from_query(query: &[(String, String)]) -> Result<Self, NodeApiError> {
        let mut o = LogOptions::default();
        let bad = |k: &str, v: &str, why: &str| {
            NodeApiError::BadRequest(format!("query parameter {k}={v:?}: {why}"))
        };
        for (k, v) in query {
            let flag = || go_bool(v).ok_or_else(|| bad(k, v, "not a boolean"));
            let number = || {
                v.parse::<i64>()
                    .map_err(|_| bad(k, v, "not an integer"))
                    .and_then(|n| u64::try_from(n).map_err(|_| bad(k, v, "must not be negative")))
            };
            match k.as_str() {
                "follow" => o.follow = flag()?,
                "timestamps" => o.timestamps = flag()?,
                "previous" => o.previous = flag()?,
                "tailLines" => o.tail_lines = Some(number()?),
                "limitBytes" => match number()? {
                    0 => return Err(bad(k, v, "must be greater than 0")),
                    n => o.limit_bytes = Some(n),
                },
                "sinceSeconds" => match number()? {
                    0 => return Err(bad(k, v, "must be greater than 0")),
                    n => o.since_seconds = Some(n),
                },
                "sinceTime" => {
                    o.since_time = Some(
                        v.parse()
                            .map_err(|e| bad(k, v, &format!("not an RFC 3339 time: {e}")))?,
                    )
                }
                _ => {}
            }
        }
        if o.since_seconds.is_some() && o.since_time.is_some() {
            return Err(NodeApiError::BadRequest(
                "at most one of sinceTime or sinceSeconds may be specified".into(),
            ));
        }
        Ok(o)
    }

    /// The oldest record shown, if the request limits it.
    pub fn cutoff(&self, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        self.since_time.or_else(|| {
            self.since_seconds.map(|s| {
                now.checked_sub(jiff::SignedDuration::from_secs(
                    s.min(i64::MAX as u64) as i64
                ))
                .unwrap_or(jiff::Timestamp::MIN)
            })
        })
    }
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: jiff::Timestamp,
    pub stream: &'a str,
    /// A piece of a line longer than the shim's buffer; the line goes on in the next record.
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses one line of a CRI log (without its newline).
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, String> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "not a CRI log line: {:?}",
            String::from_utf8_lossy(line)
        ));
    };
    let text = parts.next().unwrap_or(&[]);
    let time = std::str::from_utf8(time)
        .ok()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .ok_or_else(|| format!("bad CRI timestamp {:?}", String::from_utf8_lossy(time)))?;
    let stream = match stream {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        other => {
            return Err(format!(
                "bad CRI stream {:?}",
                String::from_utf8_lossy(other)
            ))
        }
    };
    let partial = match tag {
        b"F" => false,
        b"P" => true,
        other => {
            return Err(format!(
                "bad CRI tag {:?} (F or P)",
                String::from_utf8_lossy(other)
            ))
        }
    };
    Ok(Record {
        time,
        stream,
        partial,
        text,
    })
}

/// What kubelet prints for one record: the text, a newline if the record ends a line, and
/// with `timestamps` the record's time in front.
pub fn render(rec: &Record<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(rec.time.to_string().as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(rec.text);
    if !rec.partial {
        out.push(b'\n');
    }
}

/// Renders the complete lines of `data` that pass the `cutoff`, keeping only the last
/// `tail` of them; lines that do not parse are skipped (a torn write, a foreign file).
pub fn render_all(
    data: &[u8],
    tail: Option<u64>,
    cutoff: Option<jiff::Timestamp>,
    timestamps: bool,
) -> Vec<u8> {
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let start = match tail {
        Some(n) => lines
            .len()
            .saturating_sub(n.min(usize::MAX as u64) as usize),
        None => 0,
    };
    let mut out = Vec::new();
    for line in &lines[start..] {
        match parse_record(line) {
            Ok(rec) if cutoff.is_none_or(|c| rec.time >= c) => render(&rec, timestamps, &mut out),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "skipping a log line"),
        }
    }
    out
}

pub fn pod_log_dir(logs_dir: &Path, ns: &str, pod: &str, uid: &str) -> PathBuf {
    logs_dir.join(format!("{ns}_{pod}_{uid}"))
}

/// The restart counts that have a log file in a container's log directory, ascending.
pub fn log_generations(dir: &Path) -> Vec<u64> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    found.sort_unstable();
    found
}

/// The file for the current container, or with `previous` the one before it.
pub fn pick_log(dir: &Path, previous: bool, container: &str) -> Result<PathBuf, NodeApiError> {
    let gens = log_generations(dir);
    let pick = if previous {
        gens.len().checked_sub(2).map(|i| gens[i])
    } else {
        gens.last().copied()
    };
    match pick {
        Some(n) => Ok(dir.join(format!("{n}.log"))),
        None if previous => Err(NodeApiError::BadRequest(format!(
            "previous terminated container \"{container}\" not found"
        ))),
        None => Err(NodeApiError::BadRequest(format!(
            "container \"{container}\" has no log yet (is it waiting to start?)"
        ))),
    }
}

/// `file` and the rotated files behind it, oldest first (`.N` … `.1`, then `file`).
pub fn with_rotated(file: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    for n in 1.. {
        let mut s = file.as_os_str().to_owned();
        s.push(format!(".{n}"));
        let p = PathBuf::from(s);
        if !p.exists() {
            break;
        }
        rotated.push(p);
    }
    rotated.reverse();
    rotated.push(file.to_path_buf());
    rotated
}

/// Logs are read in blocks of this size, so that a large log is never held in memory.
pub const BLOCK: usize = 64 * 1024;

fn open_optional(p: &Path) -> Result<Option<File>, NodeApiError> {
    match File::open(p) {
        Ok(f) => Ok(Some(f)),
        // Rotated away between the listing and the open.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeApiError::io("open", p, e)),
    }
}

/// Where the last `n` complete lines of `files` (read as one stream) begin: the index of
/// the file and the offset in it. Reads backwards from the end, only as far as needed.
pub fn tail_start(files: &[PathBuf], n: u64) -> Result<(usize, u64), NodeApiError> {
    // The last line's own newline is the first one met; the line before the tail ends at
    // newline n + 1.
    let mut seen = 0u64;
    let mut buf = vec![0u8; BLOCK];
    for (i, p) in files.iter().enumerate().rev() {
        let Some(mut f) = open_optional(p)? else {
            continue;
        };
        let mut end = f
            .metadata()
            .map_err(|e| NodeApiError::io("stat", p, e))?
            .len();
        while end > 0 {
            let from = end.saturating_sub(BLOCK as u64);
            let chunk = &mut buf[..(end - from) as usize];
            f.seek(std::io::SeekFrom::Start(from))
                .and_then(|_| f.read_exact(chunk))
                .map_err(|e| NodeApiError::io("read", p, e))?;
            for (j, b) in chunk.iter().enumerate().rev() {
                if *b == b'\n' {
                    seen += 1;
                    if seen == n + 1 {
                        return Ok((i, from + j as u64 + 1));
                    }
                }
            }
            end = from;
        }
    }
    Ok((0, 0))
}

/// Reads `files` from `start` on, handing complete lines to `emit` in blocks; `emit`
/// returns whether to go on. Returns the last file, open at its end, and the torn line
/// after its last newline (what following continues from), or `None` if `emit` stopped.
pub fn read_from(
    files: &[PathBuf],
    start: (usize, u64),
    mut emit: impl FnMut(&[u8]) -> bool,
) -> Result<Option<(File, Vec<u8>)>, NodeApiError> {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    let mut last = None;
    for (i, p) in files.iter().enumerate().skip(start.0) {
        let Some(mut f) = open_optional(p)? else {
            continue;
        };
        if i == start.0 {
            f.seek(std::io::SeekFrom::Start(start.1))
                .map_err(|e| NodeApiError::io("seek", p, e))?;
        }
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| NodeApiError::io("read", p, e))?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
                let rest = pending.split_off(end + 1);
                if !emit(&pending) {
                    return Ok(None);
                }
                pending = rest;
            }
        }
        if i + 1 == files.len() {
            last = Some(f);
        }
    }
    Ok(last.map(|f| (f, pending)))
}

/// Follows a log file as it grows and rotates. `poll` gives new complete lines; it keeps a
/// torn last line until its newline arrives.
pub struct Follower {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
}

impl Follower {
    pub fn new(path: PathBuf, file: File, pending: Vec<u8>) -> Self {
        Follower {
            path,
            file,
            pending,
        }
    }

    /// New complete lines, with their newlines.
    pub fn poll(&mut self) -> Result<Vec<u8>, NodeApiError> {
        let mut out = Vec::new();
        self.drain(&mut out)?;
        // The shim renames the file and starts a new one; once the old one is drained
        // (above), carry on with the new one from its start.
        if let (Ok(now), Ok(open)) = (std::fs::metadata(&self.path), self.file.metadata()) {
            if now.ino() != open.ino() || now.len() < self.file.stream_position().unwrap_or(0) {
                match File::open(&self.path) {
                    Ok(f) => {
                        self.file = f;
                        self.drain(&mut out)?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(NodeApiError::io("open", &self.path, e)),
                }
            }
        }
        Ok(out)
    }

    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), NodeApiError> {
        let mut buf = Vec::new();
        self.file
            .read_to_end(&mut buf)
            .map_err(|e| NodeApiError::io("read", &self.path, e))?;
        self.pending.extend_from_slice(&buf);
        if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
            out.extend(self.pending.drain(..=end));
        }
        Ok(())
    }
}

/// How often a followed log is checked for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Cuts `data` so that at most `limit` bytes are sent in total; returns whether the limit
/// is reached.
pub fn apply_limit(data: &mut Vec<u8>, sent: &mut u64, limit: Option<u64>) -> bool {
    if let Some(limit) = limit {
        let room = limit.saturating_sub(*sent);
        if data.len() as u64 >= room {
            data.truncate(room as usize);
            *sent += data.len() as u64;
            return true;
        }
    }
    *sent += data.len() as u64;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-02T03:04:05.100000000Z stdout F one\n\
2026-01-02T03:04:06.000000000Z stderr F two\n\
2026-01-02T03:04:07.5Z stdout P thr\n\
2026-01-02T03:04:07.6Z stdout F ee\n\
2026-01-02T03:04:08Z stdout F \n";

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn records_parse() {
        let r = parse_record(b"2026-01-02T03:04:05.123456789Z stderr P a b c").unwrap();
        assert_eq!(r.stream, "stderr");
        assert!(r.partial);
        assert_eq!(r.text, b"a b c");
        assert_eq!(r.time.to_string(), "2026-01-02T03:04:05.123456789Z");
        let empty = parse_record(b"2026-01-02T03:04:05Z stdout F").unwrap();
        assert_eq!(empty.text, b"");
        assert!(parse_record(b"garbage").is_err());
        assert!(parse_record(b"notatime stdout F x").is_err());
        assert!(parse_record(b"2026-01-02T03:04:05Z stdin F x").is_err());
    }

    #[test]
    fn plain_output_strips_the_prefix_and_joins_partial_lines() {
        let out = render_all(LOG.as_bytes(), None, None, false);
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree\n\n");
    }

    #[test]
    fn timestamps_are_prefixed_like_kubelet() {
        let out = render_all(LOG.as_bytes(), Some(2), None, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-01-02T03:04:07.6Z ee\n2026-01-02T03:04:08Z \n"
        );
    }

    #[test]
    fn tail_and_since() {
        let out = render_all(LOG.as_bytes(), Some(4), None, false);
        assert_eq!(String::from_utf8(out).unwrap(), "two\nthree\n\n");
        let out = render_all(LOG.as_bytes(), Some(0), None, false);
        assert!(out.is_empty());
        let cutoff: jiff::Timestamp = "2026-01-02T03:04:06Z".parse().unwrap();
        let out = render_all(LOG.as_bytes(), None, Some(cutoff), false);
        assert_eq!(String::from_utf8(out).unwrap(), "two\nthree\n\n");
        let opts = LogOptions::from_query(&q(&[("sinceSeconds", "3")])).unwrap();
        let now: jiff::Timestamp = "2026-01-02T03:04:10Z".parse().unwrap();
        assert_eq!(
            opts.cutoff(now),
            Some("2026-01-02T03:04:07Z".parse().unwrap())
        );
    }

    #[test]
    fn query_is_validated() {
        let o = LogOptions::from_query(&q(&[
            ("follow", "true"),
            ("tailLines", "10"),
            ("timestamps", "1"),
            ("previous", "false"),
            ("limitBytes", "5"),
        ]))
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(10), Some(5)));
        assert!(LogOptions::from_query(&q(&[("tailLines", "-1")])).is_err());
        assert!(LogOptions::from_query(&q(&[("tailLines", "x")])).is_err());
        assert!(LogOptions::from_query(&q(&[("follow", "yes")])).is_err());
        assert!(LogOptions::from_query(&q(&[("sinceSeconds", "0")])).is_err());
        assert!(LogOptions::from_query(&q(&[
            ("sinceSeconds", "1"),
            ("sinceTime", "2026-01-01T00:00:00Z")
        ]))
        .is_err());
    }

    #[test]
    fn current_and_previous_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(pick_log(dir.path(), false, "c").is_err());
        for n in [0, 2, 10] {
            std::fs::write(dir.path().join(format!("{n}.log")), "").unwrap();
        }
        std::fs::write(dir.path().join("10.log.1"), "").unwrap();
        assert_eq!(log_generations(dir.path()), vec![0, 2, 10]);
        assert_eq!(
            pick_log(dir.path(), false, "c").unwrap(),
            dir.path().join("10.log")
        );
        assert_eq!(
            pick_log(dir.path(), true, "c").unwrap(),
            dir.path().join("2.log")
        );
        let only = tempfile::tempdir().unwrap();
        std::fs::write(only.path().join("0.log"), "").unwrap();
        let err = pick_log(only.path(), true, "web").unwrap_err().to_string();
        assert!(
            err.contains("previous terminated container \"web\""),
            "{err}"
        );
    }

    #[test]
    fn rotated_files_are_read_oldest_first_and_followed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("0.log");
        std::fs::write(dir.path().join("0.log.2"), "a\n").unwrap();
        std::fs::write(dir.path().join("0.log.1"), "b\n").unwrap();
        std::fs::write(&f, "c\nhalf").unwrap();
        let files = with_rotated(&f);
        let mut data = Vec::new();
        let (file, torn) = read_from(&files, (0, 0), |c| {
            data.extend_from_slice(c);
            true
        })
        .unwrap()
        .unwrap();
        assert_eq!(data, b"a\nb\nc\n");
        assert_eq!(torn, b"half");
        let mut follower = Follower::new(f.clone(), file, torn);
        assert!(follower.poll().unwrap().is_empty(), "a torn line is held");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .and_then(|mut h| std::io::Write::write_all(&mut h, b" done\nd\n"))
            .unwrap();
        assert_eq!(follower.poll().unwrap(), b"half done\nd\n");
        // The shim rotates: the old file gains a last line, then a new file starts.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .and_then(|mut h| std::io::Write::write_all(&mut h, b"e\n"))
            .unwrap();
        std::fs::rename(&f, dir.path().join("0.log.1")).unwrap();
        std::fs::write(&f, "f\n").unwrap();
        assert_eq!(follower.poll().unwrap(), b"e\nf\n");
        assert!(follower.poll().unwrap().is_empty());
    }

    #[test]
    fn tail_reads_backwards_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("3.log");
        // More than one block in the current file, a short rotated one before it.
        std::fs::write(dir.path().join("3.log.1"), "r1\nr2\n").unwrap();
        let mut current = String::new();
        for i in 0..20_000 {
            current.push_str(&format!("line {i}\n"));
        }
        current.push_str("torn");
        std::fs::write(&f, &current).unwrap();
        let files = with_rotated(&f);
        let read = |start| {
            let mut out = Vec::new();
            read_from(&files, start, |c| {
                out.extend_from_slice(c);
                true
            })
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            read(tail_start(&files, 2).unwrap()),
            "line 19998\nline 19999\n"
        );
        assert_eq!(read(tail_start(&files, 0).unwrap()), "");
        let all = read(tail_start(&files, 20_001).unwrap());
        assert!(all.starts_with("r2\nline 0\n"), "{}", &all[..20]);
        assert_eq!(tail_start(&files, 20_002).unwrap(), (0, 0));
        assert!(read((0, 0)).starts_with("r1\nr2\nline 0\n"));
        // A consumer that stops early ends the read.
        let mut calls = 0;
        let stopped = read_from(&files, (0, 0), |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert!(stopped.is_none() && calls == 1);
    }

    #[test]
    fn byte_limit() {
        let mut sent = 0;
        let mut a = b"hello".to_vec();
        assert!(!apply_limit(&mut a, &mut sent, Some(8)));
        let mut b = b"world".to_vec();
        assert!(apply_limit(&mut b, &mut sent, Some(8)));
        assert_eq!(b, b"wor");
        assert_eq!(sent, 8);
    }
}
