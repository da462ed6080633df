//! File source: JSON lines from a file or stdin, through the same decode → validate → window →
//! plugins → Iceberg path as Kafka.
//!
//! One partition (0); a message's offset is its line number (0-based), so the tables record a
//! file's position exactly as they record a topic's, and a second run over the same file (after
//! a crash, say) replays the lines it needs and writes only what is not yet committed. Empty
//! lines are skipped but keep their number.
//!
//! A reader thread reads large blocks and hands over whole lines, so reading overlaps with
//! processing (on two cores the ingest thread is the bottleneck, not the disk) and a stalled
//! stdin never blocks the ingest loop past its poll timeout (SIGTERM still stops the daemon).
//!
//! A line longer than `validation.max_message_bytes` that does not fit in one block is cut: its
//! first `max_message_bytes + 1` bytes are kept (the decoder then dead-letters it as
//! `oversized`, with that prefix as the payload) and the rest is skipped up to its newline. It is
//! still one message with one line number, and the reader's memory stays within the bound + a
//! block whatever the input (a line with no newline at all used to be carried and re-copied
//! whole on every block: unbounded memory, quadratic copying).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use super::{RawMessage, Source, SourceError};

/// Bytes asked of the OS per read; a block is cut at its last newline.
const BLOCK: usize = 1 << 20;

enum Block {
    /// Whole lines, each ending with `\n`: the buffer's first `usize` bytes.
    Lines(Vec<u8>, usize),
    End,
    Failed(std::io::Error),
}

pub struct FileSource {
    name: String,
    rx: Receiver<Block>,
    /// Spent buffers go back to the reader: no allocation or page faults per block.
    recycle: SyncSender<Vec<u8>>,
    block: Vec<u8>,
    block_len: usize,
    pos: usize,
    /// Line number of the next line in `block`.
    next_offset: i64,
    /// Lines below this are not handed out (they precede the replay point).
    start: i64,
    done: bool,
    error: Option<std::io::Error>,
    /// The largest partial line the reader carried from one block to the next, bytes.
    peak_carry: Arc<AtomicUsize>,
}

impl FileSource {
    /// Opens `path` (`-` = stdin) and starts at line `start` (earlier lines are read past).
    /// Lines longer than `max_line` bytes (`validation.max_message_bytes`) may be handed out cut
    /// to `max_line + 1` bytes: still over the bound, so still dead-lettered as oversized.
    pub fn open(path: &Path, start: i64, max_line: usize) -> Result<Self, SourceError> {
        let name = path.display().to_string();
        let reader: Box<dyn Read + Send> = if path == Path::new("-") {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(path).map_err(|source| SourceError::Io {
                path: name.clone(),
                source,
            })?)
        };
        let (tx, rx) = sync_channel(8);
        let (recycle, recycled) = sync_channel(8);
        let peak_carry = Arc::new(AtomicUsize::new(0));
        let peak = peak_carry.clone();
        let cap = max_line.saturating_add(1);
        std::thread::Builder::new()
            .name("file-reader".into())
            .spawn(move || read_blocks(reader, tx, recycled, cap, &peak))
            .map_err(|source| SourceError::Io {
                path: name.clone(),
                source,
            })?;
        Ok(FileSource {
            name,
            rx,
            recycle,
            block: Vec::new(),
            block_len: 0,
            pos: 0,
            next_offset: 0,
            start,
            done: false,
            error: None,
            peak_carry,
        })
    }

    /// The largest partial line carried between blocks so far (at most `max_line + 1`).
    pub fn peak_carry(&self) -> usize {
        self.peak_carry.load(Relaxed)
    }

    /// The stream name a file is recorded under when the config names none:
    /// `file:NAME@DIGEST`, DIGEST the first 12 hex digits of the SHA-256 of the file's first
    /// line. Positions, duplicates and metric shares are kept per stream, so two different files
    /// that share a name (`a/events.jsonl`, `b/events.jsonl`) must not share a stream: the second
    /// would resume at the first one's position and skip its lines. A longer version of the same
    /// file (appended to) keeps its first line, so it resumes where the last run stopped; a copy
    /// moved elsewhere is still the same input. Standard input is `stdin` (it cannot be read
    /// twice; the pipeline refuses to resume an unnamed stdin stream).
    pub fn default_stream(path: &Path) -> String {
        if path == Path::new("-") {
            return "stdin".into();
        }
        match first_line_digest(path) {
            Ok(d) => format!("{}@{d}", Self::unversioned_stream(path)),
            // Unreadable: the run fails opening it, with the path in the error.
            Err(_) => Self::unversioned_stream(path),
        }
    }

    /// `file:<file name>`: what releases before the digest called every file of that name.
    pub fn unversioned_stream(path: &Path) -> String {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        format!("file:{name}")
    }

    /// Lines read so far (the next line's number).
    pub fn lines(&self) -> i64 {
        self.next_offset
    }
}

/// The reader thread: blocks of whole lines until the end of input (a last line without a
/// newline gets one) or an error. A line still open at the end of a block is carried into the
/// next one, at most `cap` bytes of it: past that the line is cut there and the rest of it is
/// skipped up to its newline.
fn read_blocks(
    mut reader: Box<dyn Read + Send>,
    tx: SyncSender<Block>,
    recycled: Receiver<Vec<u8>>,
    cap: usize,
    peak: &AtomicUsize,
) {
    let mut carry: Vec<u8> = Vec::new();
    // The carried line was cut at `cap`: drop what follows up to its newline.
    let mut skipping = false;
    let mut spare: Option<Vec<u8>> = None;
    loop {
        // Buffers keep their length when recycled: only a new one is zero-filled, once.
        let mut buf = spare
            .take()
            .or_else(|| recycled.try_recv().ok())
            .unwrap_or_default();
        let filled = carry.len();
        if buf.len() < filled + BLOCK + 1 {
            buf.resize(filled + BLOCK + 1, 0);
        }
        buf[..filled].copy_from_slice(&carry);
        carry.clear();
        let n = loop {
            match reader.read(&mut buf[filled..filled + BLOCK]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Block::Failed(e));
                    return;
                }
            }
        };
        let mut end = filled + n;
        if n == 0 {
            if end > 0 {
                buf[end] = b'\n'; // the last line had none
                if tx.send(Block::Lines(buf, end + 1)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Block::End);
            return;
        }
        if skipping {
            match memchr::memchr(b'\n', &buf[filled..end]) {
                // The cut line ends here: close it right after its kept prefix.
                Some(i) => {
                    buf.copy_within(filled + i..end, filled);
                    end -= i;
                    skipping = false;
                }
                // Still inside it: keep only the prefix, read on.
                None => {
                    carry.extend_from_slice(&buf[..filled]);
                    spare = Some(buf);
                    continue;
                }
            }
        }
        let rest = match memchr::memrchr(b'\n', &buf[..end]) {
            Some(i) => i + 1,
            // A line longer than what we have so far: keep reading.
            None => 0,
        };
        let open = end - rest;
        carry.extend_from_slice(&buf[rest..rest + open.min(cap)]);
        if open > cap {
            skipping = true;
        }
        peak.fetch_max(carry.len(), Relaxed);
        if rest > 0 {
            if tx.send(Block::Lines(buf, rest)).is_err() {
                return; // the source was dropped
            }
        } else {
            spare = Some(buf);
        }
    }
}

impl Source for FileSource {
    fn poll_batch<F: FnMut(RawMessage<'_>)>(
        &mut self,
        max: usize,
        timeout: Duration,
        mut f: F,
    ) -> usize {
        let mut n = 0;
        let mut wait = timeout;
        while n < max {
            if self.pos >= self.block_len {
                if self.done {
                    break;
                }
                match self.rx.recv_timeout(wait) {
                    Ok(Block::Lines(b, len)) => {
                        let spent = std::mem::replace(&mut self.block, b);
                        (self.block_len, self.pos) = (len, 0);
                        let _ = self.recycle.try_send(spent);
                    }
                    Ok(Block::End) | Err(RecvTimeoutError::Disconnected) => {
                        self.done = true;
                        break;
                    }
                    Ok(Block::Failed(e)) => {
                        self.error = Some(e);
                        self.done = true;
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                }
                wait = Duration::ZERO;
                continue;
            }
            let rest = &self.block[self.pos..self.block_len];
            let len = memchr::memchr(b'\n', rest).expect("blocks hold whole lines");
            self.pos += len + 1;
            let offset = self.next_offset;
            self.next_offset += 1;
            if offset < self.start {
                continue;
            }
            let line = rest[..len].strip_suffix(b"\r").unwrap_or(&rest[..len]);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            f(RawMessage {
                partition: 0,
                offset,
                payload: Some(line),
                timestamp_ms: None,
            });
            n += 1;
        }
        n
    }

    fn assignment(&self) -> Vec<i32> {
        vec![0]
    }

    /// Nothing to store: the tables' summaries are the file's only position.
    fn commit(&self, _: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        Ok(())
    }

    fn commit_sync(&self, _: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        Ok(())
    }

    fn end_offsets(&self, _: &[i32]) -> BTreeMap<i32, i64> {
        [(0, self.next_offset)].into()
    }

    fn finished(&mut self) -> Result<bool, SourceError> {
        if let Some(e) = self.error.take() {
            return Err(SourceError::Io {
                path: self.name.clone(),
                source: e,
            });
        }
        Ok(self.done && self.pos >= self.block_len)
    }
}

/// Resolves the `[source] path` of a config: `-` stays stdin.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p == Path::new("-") || p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// First 12 hex digits of the SHA-256 of `path`'s first line (at most 64 KiB of it).
fn first_line_digest(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;

    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut head)?;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let digest = sha2::Sha256::digest(line);
    Ok(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open_bounded(path: &Path, start: i64, max: usize) -> FileSource {
        FileSource::open(path, start, max).unwrap()
    }
    fn peak_carry(src: &FileSource) -> usize {
        src.peak_carry()
    }

    fn collect(src: &mut FileSource, max: usize) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        while !src.finished().unwrap() {
            src.poll_batch(max, Duration::from_millis(100), |m| {
                out.push((
                    m.offset,
                    String::from_utf8(m.payload.unwrap().to_vec()).unwrap(),
                ))
            });
        }
        out
    }

    /// Issue 14, defect 6: `a/events.jsonl` and `b/events.jsonl` were both `file:events.jsonl`,
    /// so the second run resumed at the first one's position and skipped its lines.
    #[test]
    fn files_sharing_a_name_get_their_own_stream_and_a_grown_file_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (a, b) = (a.join("events.jsonl"), b.join("events.jsonl"));
        std::fs::write(&a, "{\"event_id\":\"a1\"}\n{\"event_id\":\"a2\"}\n").unwrap();
        std::fs::write(&b, "{\"event_id\":\"b1\"}\n").unwrap();
        let (sa, sb) = (
            FileSource::default_stream(&a),
            FileSource::default_stream(&b),
        );
        assert!(sa.starts_with("file:events.jsonl@"), "{sa}");
        assert_ne!(sa, sb);
        // Appending keeps the stream: the next run resumes after what is committed.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&a)
            .unwrap()
            .write_all(b"{\"event_id\":\"a3\"}\n")
            .unwrap();
        assert_eq!(FileSource::default_stream(&a), sa);
        // The same file moved to another directory is the same input.
        let moved = dir.path().join("c");
        std::fs::create_dir_all(&moved).unwrap();
        std::fs::copy(&b, moved.join("events.jsonl")).unwrap();
        assert_eq!(FileSource::default_stream(&moved.join("events.jsonl")), sb);
        assert_eq!(FileSource::default_stream(Path::new("-")), "stdin");
    }

    #[test]
    fn lines_are_numbered_and_resumed_by_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // Crosses block boundaries (> 1 MiB), has an empty line, a CRLF line and no final newline.
        let mut expect = Vec::new();
        let mut text = String::new();
        for i in 0..40_000i64 {
            if i == 7 {
                text.push('\n');
                continue;
            }
            let line = format!(
                "{{\"n\":{i},\"pad\":\"{}\"}}",
                "x".repeat(20 + (i % 13) as usize)
            );
            text.push_str(&line);
            text.push_str(if i == 9 { "\r\n" } else { "\n" });
            expect.push((i, line));
        }
        text.push_str("{\"last\":true}");
        expect.push((40_000, "{\"last\":true}".into()));
        f.write_all(text.as_bytes()).unwrap();
        assert!(text.len() > BLOCK);

        let mut src = FileSource::open(f.path(), 0, 1 << 16).unwrap();
        let got = collect(&mut src, 777);
        assert_eq!(got.len(), expect.len());
        assert_eq!(got, expect);
        assert_eq!(src.lines(), 40_001);

        let mut src = FileSource::open(f.path(), 30_000, 1 << 16).unwrap();
        let got = collect(&mut src, 4096);
        assert_eq!(got, expect[expect.len() - 10_001..]);
    }

    /// Issue 14, defect 9: a 10 MB line, once without a newline at the end of the file and once
    /// with one in the middle, is one message each, cut to the bound (the decoder then rejects it
    /// as oversized), the reader's carry stays within the bound + a block, and the lines after
    /// it keep their numbers.
    #[test]
    fn a_huge_line_is_one_bounded_message() {
        const MAX: usize = 64 * 1024;
        let huge = "x".repeat(10 << 20);
        for text in [
            format!("{{\"a\":1}}\n{huge}\n{{\"b\":2}}\n{huge}"),
            format!("{{\"a\":1}}\n{huge}"),
        ] {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(text.as_bytes()).unwrap();
            let mut src = open_bounded(f.path(), 0, MAX);
            let mut got: Vec<(i64, usize, Vec<u8>)> = Vec::new();
            while !src.finished().unwrap() {
                src.poll_batch(16, Duration::from_millis(100), |m| {
                    let p = m.payload.unwrap();
                    got.push((m.offset, p.len(), p[..p.len().min(8)].to_vec()));
                });
            }
            let offsets: Vec<i64> = got.iter().map(|g| g.0).collect();
            let lines = text.split('\n').count() as i64;
            assert_eq!(
                offsets,
                (0..lines).collect::<Vec<_>>(),
                "one message per line"
            );
            for (offset, len, head) in &got {
                if head.starts_with(b"xxxx") {
                    assert_eq!(*len, MAX + 1, "line {offset}: cut to the bound + 1 byte");
                } else {
                    assert!(*len < 16, "line {offset}");
                }
            }
            assert!(
                peak_carry(&src) <= MAX + 1 + BLOCK,
                "the carry grew to {} bytes",
                peak_carry(&src)
            );
            let payload = "x".repeat(MAX + 1);
            let rej = crate::event::decode(
                payload.as_bytes(),
                0,
                &crate::event::ValidationConfig {
                    max_message_bytes: MAX,
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert_eq!(rej.reason, crate::event::Reason::Oversized);
        }
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let err = FileSource::open(Path::new("/nonexistent/events.jsonl"), 0, 1 << 16)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/events.jsonl"), "{err}");
    }
}
