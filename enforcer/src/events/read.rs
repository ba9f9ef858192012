//! Reading an events file: the history (the rotated `FILE.1`, then `FILE`), the last N matches,
//! and following it as the agent appends and rotates. A line that is not an event stops the
//! reading with an error naming the file and the line: a file that is not an event stream is
//! refused, not shown as "no events".

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use jiff::tz::TimeZone;

use super::{EventLine, Filter, Output, render};

/// A line of an events file that is not an event.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}:{line}: not an event (an events file holds the JSON lines `enforcer run --events-file` \
     writes): {reason}",
    file.display()
)]
pub struct NotAnEvent {
    pub file: PathBuf,
    pub line: u64,
    pub reason: String,
}

/// Where reading starts and whether it goes on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// Keep printing new events (across rotations) until interrupted.
    pub follow: bool,
    /// Start at the end of the file (what `--follow` does unless `--since` or `--last` asks for
    /// history).
    pub from_end: bool,
    /// Of the history, only the last N matching events.
    pub last: Option<usize>,
}

/// How often a follower looks for new lines.
const POLL: Duration = Duration::from_millis(100);

/// Parses one line; Ok(None) for an empty one.
pub fn parse_line(text: &str) -> Result<Option<EventLine>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if !t.starts_with('{') {
        return Err("not a JSON object".into());
    }
    serde_json::from_str(t).map(Some).map_err(|e| e.to_string())
}

/// Formats matching events and writes them (or, for `--last`, keeps the newest).
struct Sink<'a> {
    filter: &'a Filter,
    output: Output,
    tz: &'a TimeZone,
    last: Option<VecDeque<String>>,
    limit: usize,
    out: &'a mut dyn Write,
}

impl Sink<'_> {
    fn line(&mut self, file: &Path, line: u64, bytes: &[u8]) -> Result<()> {
        let text = String::from_utf8_lossy(bytes);
        let event = parse_line(&text).map_err(|reason| NotAnEvent {
            file: file.to_path_buf(),
            line,
            reason,
        })?;
        let Some(e) = event else { return Ok(()) };
        if !self.filter.matches(&e) {
            return Ok(());
        }
        let shown = match self.output {
            Output::Json => text.trim().to_string(),
            Output::Text => render(&e, self.tz),
        };
        match self.last.as_mut() {
            Some(keep) => {
                if keep.len() == self.limit {
                    keep.pop_front();
                }
                if self.limit > 0 {
                    keep.push_back(shown);
                }
            }
            None => {
                writeln!(self.out, "{shown}")?;
                self.out.flush()?;
            }
        }
        Ok(())
    }

    /// Prints what `--last` kept; from here on every match is printed as it comes.
    fn end_of_history(&mut self) -> Result<()> {
        for shown in self.last.take().unwrap_or_default() {
            writeln!(self.out, "{shown}")?;
        }
        self.out.flush()?;
        Ok(())
    }
}

enum Read {
    Line(Vec<u8>),
    /// At the end; the bytes of a line still being written (the position stays before them).
    End(Vec<u8>),
}

fn read_line(reader: &mut BufReader<File>) -> Result<Read> {
    let mut buf = Vec::new();
    let n = reader.read_until(b'\n', &mut buf)?;
    if buf.ends_with(b"\n") {
        return Ok(Read::Line(buf));
    }
    if n > 0 {
        reader.seek_relative(-(n as i64))?;
    }
    Ok(Read::End(buf))
}

/// The file the agent rotates `file` to.
pub fn rotated(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

fn open(file: &Path) -> Result<File> {
    let f = File::open(file).with_context(|| {
        format!(
            "opening the events file {} (is the agent running with --events-file?)",
            file.display()
        )
    })?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        anyhow::bail!(
            "{} is a folder, not an events file (the file `enforcer run --events-file` writes)",
            file.display()
        );
    }
    Ok(f)
}

/// Reads a whole (rotated) file into the sink; a last line without its newline is taken if it
/// is an event, left if it looks like one being written, refused otherwise.
fn read_all(file: &Path, f: File, sink: &mut Sink) -> Result<()> {
    let mut reader = BufReader::new(f);
    let mut n = 0;
    loop {
        match read_line(&mut reader)? {
            Read::Line(l) => {
                n += 1;
                sink.line(file, n, &l)?;
            }
            Read::End(rest) => return partial_at_end(file, n + 1, &rest, sink),
        }
    }
}

fn partial_at_end(file: &Path, line: u64, rest: &[u8], sink: &mut Sink) -> Result<()> {
    let text = String::from_utf8_lossy(rest);
    if text.trim_start().starts_with('{') && parse_line(&text).is_err() {
        return Ok(()); // being written
    }
    sink.line(file, line, rest)
}

/// Moves to the end of `reader`, checking that the file's first line is an event; returns the
/// number of lines passed and whether the end is inside a line (the agent writing it).
fn skip_to_end(file: &Path, reader: &mut BufReader<File>) -> Result<(u64, bool)> {
    let mut n = 0;
    let mut checked = false;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok((n, false));
        }
        if !buf.ends_with(b"\n") {
            return Ok((n, true));
        }
        n += 1;
        if !checked && !buf.trim_ascii().is_empty() {
            parse_line(&String::from_utf8_lossy(&buf)).map_err(|reason| NotAnEvent {
                file: file.to_path_buf(),
                line: n,
                reason,
            })?;
            checked = true;
        }
    }
}

/// Prints the events of `file` that match: its history (`FILE.1` then `FILE`), or with
/// `from_end` none of it; then, with `follow`, every new one as the agent writes it (across
/// rotations), until interrupted.
pub fn stream(
    file: &Path,
    filter: &Filter,
    output: Output,
    tz: &TimeZone,
    reading: Reading,
    out: &mut dyn Write,
) -> Result<()> {
    let f = open(file)?;
    let mut inode = f.metadata()?.ino();
    let mut sink = Sink {
        filter,
        output,
        tz,
        last: reading.last.map(|_| VecDeque::new()),
        limit: reading.last.unwrap_or(0),
        out,
    };
    let mut reader = BufReader::new(f);
    let mut n = 0;
    let mut skip_partial = false;
    if reading.from_end {
        (n, skip_partial) = skip_to_end(file, &mut reader)?;
    } else {
        let old = rotated(file);
        if let Ok(f1) = File::open(&old)
            && f1.metadata()?.ino() != inode
        {
            read_all(&old, f1, &mut sink)?;
        }
    }
    // The current file: to its end, then on as it grows.
    let mut next: Option<File> = None;
    loop {
        match read_line(&mut reader)? {
            Read::Line(_) if skip_partial => {
                // The rest of a line that was being written when we started.
                skip_partial = false;
                n += 1;
            }
            Read::Line(l) => {
                n += 1;
                sink.line(file, n, &l)?;
                continue;
            }
            Read::End(rest) => {
                if !reading.follow {
                    partial_at_end(file, n + 1, &rest, &mut sink)?;
                    return sink.end_of_history();
                }
                sink.end_of_history()?;
                if let Some(f) = next.take() {
                    // The rotated file is read to its end (the agent no longer writes to it):
                    // on with the new one.
                    reader = BufReader::new(f);
                    n = 0;
                    continue;
                }
                std::thread::sleep(POLL);
                let pos = reader.stream_position()?;
                match std::fs::metadata(file) {
                    Ok(meta) if meta.ino() != inode => {
                        if let Ok(f) = File::open(file) {
                            inode = f.metadata()?.ino();
                            next = Some(f);
                        }
                    }
                    Ok(meta) if meta.len() < pos => {
                        // Truncated in place: start it over.
                        reader.rewind()?;
                        n = 0;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::{ev, temp_dir};

    fn line(endpoint: &str, port: u16) -> String {
        let mut e = ev();
        e.endpoint = Some(endpoint.into());
        e.dst_port = port;
        serde_json::to_string(&e).unwrap()
    }

    fn read(path: &Path, filter: &Filter, reading: Reading) -> Result<String> {
        let mut out = Vec::new();
        stream(
            path,
            filter,
            Output::Json,
            &TimeZone::UTC,
            reading,
            &mut out,
        )?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn ports(out: &str) -> Vec<u64> {
        out.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["dst_port"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn reads_a_file_with_older_and_newer_fields() {
        let dir = temp_dir("fields");
        let path = dir.join("events.jsonl");
        let text = format!(
            "{}\n\n{}\n",
            serde_json::json!({
                "time_ns": 1, "node": "n", "endpoint": "x/b", "direction": "ingress",
                "verdict": "drop", "reason": "no-rule-allows", "protocol": "TCP",
                "src": "10.0.0.1", "src_port": 1, "dst": "10.0.0.2", "dst_port": 80,
                "peer": null, "policy": null, "rule": null, "isolated_by": [], "extra": 1
            }),
            serde_json::json!({
                "time_ns": 2, "node": "n", "endpoint": "y/c", "direction": "egress",
                "verdict": "drop", "reason": "no-rule-allows", "protocol": "UDP",
                "src": "10.0.0.3", "src_port": 1, "dst": "10.0.0.2", "dst_port": 53,
                "peer": null, "policy": null, "rule": null
            })
        );
        std::fs::write(&path, text).unwrap();
        let filter = Filter {
            namespace: Some("y".into()),
            ..Filter::default()
        };
        let out = read(&path, &filter, Reading::default()).unwrap();
        assert_eq!(ports(&out), vec![53], "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_an_event_stream_is_refused_naming_file_and_line() {
        let dir = temp_dir("refuse");
        let path = dir.join("README.md");
        std::fs::write(
            &path,
            "\n# enforcer\n\nA Kubernetes NetworkPolicy enforcer\n",
        )
        .unwrap();
        for reading in [
            Reading::default(),
            Reading {
                follow: true,
                from_end: true,
                last: None,
            },
        ] {
            let err = read(&path, &Filter::default(), reading).unwrap_err();
            let e = err.downcast_ref::<NotAnEvent>().expect("NotAnEvent");
            assert_eq!((e.file.as_path(), e.line), (path.as_path(), 2));
            assert!(
                format!("{err}").contains("README.md:2: not an event"),
                "{err}"
            );
        }
        // JSON, but not an event; and an event file with a bad line in the middle.
        std::fs::write(&path, "{\"hello\": 1}\n").unwrap();
        let err = read(&path, &Filter::default(), Reading::default()).unwrap_err();
        assert!(format!("{err}").contains(":1: not an event"), "{err}");
        assert!(format!("{err}").contains("missing field"), "{err}");
        std::fs::write(&path, format!("{}\nnot json\n", line("x/b", 80))).unwrap();
        let err = read(&path, &Filter::default(), Reading::default()).unwrap_err();
        assert!(format!("{err}").contains(":2: not an event"), "{err}");
        // An empty file is an event stream with no events yet.
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            read(&path, &Filter::default(), Reading::default()).unwrap(),
            ""
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn history_includes_the_rotated_file_and_last_keeps_the_newest_matches() {
        let dir = temp_dir("last");
        let path = dir.join("events.jsonl");
        let old: Vec<String> = (1..=3).map(|p| line("x/b", p)).collect();
        let new: Vec<String> = (4..=6).map(|p| line("x/b", p)).collect();
        std::fs::write(rotated(&path), old.join("\n") + "\n").unwrap();
        // The last line is being written: not shown, not an error.
        std::fs::write(&path, new.join("\n") + "\n{\"time_ns\": 7, \"no").unwrap();
        let all = Filter::default();
        let out = read(&path, &all, Reading::default()).unwrap();
        assert_eq!(ports(&out), vec![1, 2, 3, 4, 5, 6]);
        let last = |n| Reading {
            last: Some(n),
            ..Reading::default()
        };
        assert_eq!(ports(&read(&path, &all, last(2)).unwrap()), vec![5, 6]);
        assert_eq!(
            ports(&read(&path, &all, last(4)).unwrap()),
            vec![3, 4, 5, 6]
        );
        assert_eq!(ports(&read(&path, &all, last(100)).unwrap()).len(), 6);
        // The last N *matching* events.
        let odd = Filter {
            port: Some(3),
            ..Filter::default()
        };
        assert_eq!(ports(&read(&path, &odd, last(2)).unwrap()), vec![3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
