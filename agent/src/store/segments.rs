//! The Raft log's entries on disk: append-only segment files, one `fdatasync` per write.
//!
//! A durable redb commit writes about ten pages for one entry (its B-tree, its free list, its
//! header) and fsyncs them; openraft 0.9 has the leader and then a follower make each entry
//! durable one after the other, so that cost is paid twice on every write's path (issue 14: an
//! entry took 1.5 ms, 0.8 ms of it in those two commits). Here an append is one `pwrite` at the
//! end of a file and one `fdatasync`.
//!
//! ```text
//!  raft-log/00000000000000000001.log   records: [len u32][crc u32][kind u8][index u64][payload]
//!  raft-log/00000000000000041872.log   (named by the first entry's index; the last one grows)
//! ```
//! - An entry record holds the entry's index and its encoded bytes ([`super::codec`]). A commit
//!   record holds the commit point (JSON), written with the entries of a later write: the last
//!   one found is the commit point at start.
//! - The CRC (CRC-32, IEEE) covers kind, index and payload. Opening reads every segment: a record
//!   cut short or failing its CRC at the end of the last segment is a write a crash cut short
//!   (never acknowledged); the file is cut there. Anywhere else, or an entry out of sequence,
//!   the log is corrupt and opening fails, naming the file and the offset.
//! - A truncation cuts the file holding its first entry at that entry (`set_len`) and deletes
//!   the later segments, newest first, so a crash in between leaves a prefix of the log, never a
//!   gap; no byte of a removed entry stays behind the end of a file.
//! - A purge deletes the segments holding only entries up to the purge point (the purge point
//!   itself is in redb, written first); entries before it in the first segment kept are never
//!   read again.
//! - A new segment starts at the first write after the last one outgrew [`SEGMENT_BYTES`]. The
//!   directory is fsynced after a file is created or deleted.
//! - The last segment is allocated ahead of its end ([`PREALLOCATE`] at a time, `fallocate`:
//!   zeros): a write inside the file's size makes `fdatasync` cheaper than one that grows it
//!   (0.14 ms against 0.20 ms with three writers on this project's test machine). What follows
//!   the last record is therefore zeros, which opening reads as the end; a segment is cut to its
//!   last record when the next one starts. Where the file system cannot allocate ahead, the file
//!   grows with each write.
//!
//! Every operation is idempotent (a write goes to a fixed offset, a cut to a fixed length, a
//! delete of a missing file is done), so [`Disk::run_io`] retries one after an I/O error (a
//! full disk) until it succeeds.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::disk::{Disk, DiskError};

/// The directory of the segments, in the data dir.
pub const DIR: &str = "raft-log";
/// A segment is closed, and the next write starts a new one, once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// How far ahead of its end the last segment is allocated, at a time.
pub const PREALLOCATE: u64 = 1024 * 1024;

const HEADER: usize = 4 + 4 + 1 + 8;
const ENTRY: u8 = 1;
const COMMIT: u8 = 2;

/// One segment file.
struct Segment {
    path: PathBuf,
    file: File,
    /// The offset of each entry's record: entry `first + i` at `offsets[i]`.
    offsets: Vec<u64>,
    /// Bytes written: the end of the last record.
    len: u64,
    /// The file's size: zeros from `len` to here.
    size: u64,
}

/// The segments of a log, by the index of their first entry.
pub struct Segments {
    dir: PathBuf,
    files: BTreeMap<u64, Segment>,
    /// The last commit point found or written (JSON of `Option<LogId>`).
    committed: Option<Vec<u8>>,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
    /// Entries below this index are purged: still in the first segment kept, never read.
    first_kept: u64,
    /// False once the file system refused to allocate ahead.
    preallocate: bool,
}

/// Why the segments cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{path}: {what}")]
    Io {
        path: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Raft log is corrupt: {path} at byte {offset}: {what}")]
    Corrupt {
        path: String,
        offset: u64,
        what: String,
    },
    #[error("the Raft log an earlier version left in raft.redb is corrupt: {0}")]
    OldLog(String),
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> SegmentError {
    let path = path.display().to_string();
    let what = what.to_string();
    move |source| SegmentError::Io { path, what, source }
}

impl From<SegmentError> for DiskError {
    fn from(e: SegmentError) -> DiskError {
        DiskError::Failed {
            what: "reading the Raft log's segments",
            source: redb::Error::Io(std::io::Error::other(e.to_string())),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's), table-driven.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

/// Appends one record to `out`.
fn record(out: &mut Vec<u8>, kind: u8, index: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a log record is under 4 GiB");
    let index = index.to_le_bytes();
    let crc = crc32(&[&[kind], &index, payload]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&index);
    out.extend_from_slice(payload);
}

/// A record read back.
struct Record<'a> {
    kind: u8,
    index: u64,
    payload: &'a [u8],
    /// Its whole size.
    size: usize,
}

/// The record at the start of `bytes`; `None` when it is cut short or fails its CRC.
fn parse(bytes: &[u8]) -> Option<Record<'_>> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let kind = header[8];
    let index = &header[9..17];
    let payload = bytes.get(HEADER..HEADER + len)?;
    (crc32(&[&[kind], index, payload]) == crc).then(|| Record {
        kind,
        index: u64::from_le_bytes(index.try_into().expect("8 bytes")),
        payload,
        size: HEADER + len,
    })
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn open_file(path: &Path) -> Result<File, SegmentError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path, "opening"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Segments {
    /// Opens the log in `data_dir/raft-log` (creating the directory), reading every segment; a
    /// write a crash cut short at the end is cut off when `repair`, ignored otherwise.
    pub fn open(data_dir: &Path, repair: bool) -> Result<Segments, SegmentError> {
        let dir = data_dir.join(DIR);
        if repair {
            std::fs::create_dir_all(&dir).map_err(io(&dir, "creating"))?;
        }
        let mut names = Vec::new();
        if dir.exists() {
            for item in std::fs::read_dir(&dir).map_err(io(&dir, "listing"))? {
                let path = item.map_err(io(&dir, "listing"))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let Some(first) = name
                    .strip_suffix(".log")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    names.push((first, path));
                } else if repair && name.ends_with(".tmp") {
                    // An import a crash cut short: the entries are still where they came from.
                    std::fs::remove_file(&path).map_err(io(&path, "removing"))?;
                }
            }
        }
        names.sort();
        let mut segments = Segments {
            dir,
            files: BTreeMap::new(),
            committed: None,
            segment_bytes: SEGMENT_BYTES,
            first_kept: 0,
            preallocate: true,
        };
        let count = names.len();
        let mut expected: Option<u64> = None;
        for (n, (first, path)) in names.into_iter().enumerate() {
            let last = n + 1 == count;
            let bytes = std::fs::read(&path).map_err(io(&path, "reading"))?;
            let shown = path.display().to_string();
            if let Some(expected) = expected
                && expected != first
            {
                return Err(SegmentError::Corrupt {
                    path: shown,
                    offset: 0,
                    what: format!(
                        "starts at entry {first}, the one before ends at {}",
                        expected - 1
                    ),
                });
            }
            let mut offsets = Vec::new();
            let mut pos = 0usize;
            // Bytes after the last record that are not the zeros allocated ahead.
            let mut torn = false;
            while pos < bytes.len() {
                let Some(record) = parse(&bytes[pos..]) else {
                    if bytes[pos..].iter().all(|b| *b == 0) {
                        // Allocated ahead, not written yet: the end.
                        break;
                    }
                    torn = true;
                    if !last {
                        return Err(SegmentError::Corrupt {
                            path: shown,
                            offset: pos as u64,
                            what: "a record cut short or failing its checksum".into(),
                        });
                    }
                    // A write a crash cut short: never acknowledged.
                    tracing::warn!(
                        "raft log: {shown}: dropping {} bytes a crash cut short at byte {pos}",
                        bytes.len() - pos
                    );
                    break;
                };
                match record.kind {
                    ENTRY if record.index == first + offsets.len() as u64 => {
                        offsets.push(pos as u64)
                    }
                    COMMIT => segments.committed = Some(record.payload.to_vec()),
                    _ => {
                        return Err(SegmentError::Corrupt {
                            path: shown,
                            offset: pos as u64,
                            what: format!(
                                "record of kind {} for entry {} where entry {} was due",
                                record.kind,
                                record.index,
                                first + offsets.len() as u64
                            ),
                        });
                    }
                }
                pos += record.size;
            }
            let file = if repair {
                open_file(&path)?
            } else {
                File::open(&path).map_err(io(&path, "opening"))?
            };
            let mut size = bytes.len() as u64;
            if repair && (torn || (!last && size > pos as u64)) {
                file.set_len(pos as u64).map_err(io(&path, "cutting"))?;
                file.sync_all().map_err(io(&path, "syncing"))?;
                size = pos as u64;
            }
            if offsets.is_empty() {
                // Created, then cut before its first entry was durable.
                if repair {
                    drop(file);
                    std::fs::remove_file(&path).map_err(io(&path, "removing"))?;
                }
                continue;
            }
            expected = Some(first + offsets.len() as u64);
            segments.files.insert(
                first,
                Segment {
                    path,
                    file,
                    offsets,
                    len: pos as u64,
                    size,
                },
            );
        }
        Ok(segments)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The index of the last entry.
    pub fn last_index(&self) -> Option<u64> {
        let (first, segment) = self.files.last_key_value()?;
        Some(first + segment.offsets.len() as u64 - 1)
    }

    /// The last commit point found or written (JSON).
    pub fn committed(&self) -> Option<&[u8]> {
        self.committed.as_deref()
    }

    /// Writes `entries` (index, encoded) after the last one, followed by a commit record when
    /// `committed` differs from the last one written. Not durable until [`Segments::sync`].
    pub fn append(
        &mut self,
        disk: &Disk,
        entries: &[(u64, Vec<u8>)],
        committed: Option<&[u8]>,
    ) -> Result<(), DiskError> {
        let Some(&(first_new, _)) = entries.first() else {
            return Ok(());
        };
        let roll = match self.files.last_key_value() {
            None => true,
            Some((_, segment)) => segment.len >= self.segment_bytes,
        };
        if roll {
            // The segment being closed: cut to its last record (its zeros go) and synced now
            // ([`Segments::sync`] syncs only the last one).
            if let Some((_, segment)) = self.files.iter_mut().next_back() {
                disk.run_io("closing a Raft log segment", || {
                    segment.file.set_len(segment.len)?;
                    segment.file.sync_all()
                })?;
                segment.size = segment.len;
            }
            let path = self.dir.join(segment_name(first_new));
            let file = disk.run_io("creating a Raft log segment", || {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                sync_dir(&self.dir)?;
                Ok(file)
            })?;
            self.files.insert(
                first_new,
                Segment {
                    path,
                    file,
                    offsets: Vec::new(),
                    len: 0,
                    size: 0,
                },
            );
            // A new segment holds no commit record yet: write it again.
            self.committed = None;
        }
        let (first, segment) = self.files.iter_mut().next_back().expect("a segment");
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, b)| b.len() + HEADER).sum());
        let mut offsets = Vec::with_capacity(entries.len());
        for (index, bytes) in entries {
            debug_assert_eq!(
                *index,
                first + (segment.offsets.len() + offsets.len()) as u64
            );
            offsets.push(segment.len + buf.len() as u64);
            record(&mut buf, ENTRY, *index, bytes);
        }
        // After the entries: a commit record is read back only if every record before it is, so
        // it never covers an entry a crash cut short.
        if let Some(committed) = committed
            && self.committed.as_deref() != Some(committed)
        {
            record(&mut buf, COMMIT, 0, committed);
        }
        let at = segment.len;
        let end = at + buf.len() as u64;
        if self.preallocate && end > segment.size {
            let size = end.div_ceil(PREALLOCATE) * PREALLOCATE;
            let allocated =
                disk.run_io("allocating the Raft log", || {
                    match nix::fcntl::fallocate(
                        &segment.file,
                        nix::fcntl::FallocateFlags::empty(),
                        segment.size as i64,
                        (size - segment.size) as i64,
                    ) {
                        Ok(()) => Ok(true),
                        Err(nix::errno::Errno::EOPNOTSUPP) => Ok(false),
                        Err(e) => Err(std::io::Error::from(e)),
                    }
                })?;
            if allocated {
                segment.size = size;
            } else {
                self.preallocate = false;
            }
        }
        disk.run_io("writing the Raft log", || {
            segment.file.write_all_at(&buf, at)
        })?;
        segment.len = end;
        segment.size = segment.size.max(end);
        segment.offsets.extend(offsets);
        if let Some(committed) = committed {
            self.committed = Some(committed.to_vec());
        }
        Ok(())
    }

    /// Makes every write so far durable (the last segment's data; cuts and deletions sync
    /// themselves).
    pub fn sync(&self, disk: &Disk) -> Result<(), DiskError> {
        match self.files.last_key_value() {
            Some((_, segment)) => disk.run_io("syncing the Raft log", || segment.file.sync_data()),
            None => Ok(()),
        }
    }

    /// Removes the entries from index `from` on; durable when it returns.
    pub fn truncate(&mut self, disk: &Disk, from: u64) -> Result<(), DiskError> {
        // Newest first: a crash in between leaves a prefix of the log.
        let later: Vec<u64> = self
            .files
            .range(from..)
            .map(|(first, _)| *first)
            .rev()
            .collect();
        let deleted = !later.is_empty();
        for first in later {
            let segment = self.files.remove(&first).expect("listed");
            disk.run_io("removing a Raft log segment", || remove(&segment.path))?;
        }
        if deleted {
            disk.run_io("syncing the Raft log's directory", || sync_dir(&self.dir))?;
        }
        if let Some((first, segment)) = self.files.range_mut(..from).next_back() {
            let keep = (from - first) as usize;
            if keep < segment.offsets.len() {
                let len = segment.offsets[keep];
                disk.run_io("truncating the Raft log", || {
                    segment.file.set_len(len)?;
                    segment.file.sync_all()
                })?;
                segment.offsets.truncate(keep);
                segment.len = len;
                segment.size = len;
            }
        }
        Ok(())
    }

    /// Entries up to `upto` are purged (the purge point recorded): they are not read again.
    pub fn forget_upto(&mut self, upto: u64) {
        self.first_kept = self.first_kept.max(upto + 1);
    }

    /// Deletes the segments that hold only entries up to `upto`; durable when it returns. The
    /// entries up to `upto` in the first segment kept are not read again.
    pub fn purge(&mut self, disk: &Disk, upto: u64) -> Result<u64, DiskError> {
        self.forget_upto(upto);
        let mut gone = Vec::new();
        for (first, segment) in &self.files {
            if first + segment.offsets.len() as u64 - 1 <= upto {
                gone.push(*first);
            }
        }
        let mut removed = 0;
        for first in &gone {
            let segment = self.files.remove(first).expect("listed");
            removed += segment.offsets.len() as u64;
            disk.run_io("removing a Raft log segment", || remove(&segment.path))?;
        }
        if !gone.is_empty() {
            disk.run_io("syncing the Raft log's directory", || sync_dir(&self.dir))?;
        }
        Ok(removed)
    }

    /// The encoded entries of `start..end` (`None`: to the last), as stored.
    pub fn read(&self, start: u64, end: Option<u64>) -> Result<Vec<Vec<u8>>, SegmentError> {
        let start = start.max(self.first_kept);
        let end = end.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for (first, segment) in &self.files {
            let past = first + segment.offsets.len() as u64;
            if past <= start || *first >= end {
                continue;
            }
            let from = start.max(*first);
            let upto = end.min(past);
            let at = segment.offsets[(from - first) as usize];
            let until = match segment.offsets.get((upto - first) as usize) {
                Some(offset) => *offset,
                None => segment.len,
            };
            let mut bytes = vec![0u8; (until - at) as usize];
            segment
                .file
                .read_exact_at(&mut bytes, at)
                .map_err(io(&segment.path, "reading"))?;
            let mut pos = 0;
            let mut next = from;
            while pos < bytes.len() {
                let corrupt = |what: String| SegmentError::Corrupt {
                    path: segment.path.display().to_string(),
                    offset: at + pos as u64,
                    what,
                };
                let record = parse(&bytes[pos..])
                    .ok_or_else(|| corrupt("a record failing its checksum".into()))?;
                if record.kind == ENTRY {
                    if record.index != next {
                        return Err(corrupt(format!(
                            "entry {} where entry {next} was due",
                            record.index
                        )));
                    }
                    next += 1;
                    out.push(record.payload.to_vec());
                }
                pos += record.size;
            }
        }
        Ok(out)
    }

    /// Writes `entries` (index, encoded; contiguous), the whole log of an earlier version, as
    /// the first segment: to a temporary file, synced, then renamed. Only into an empty log.
    pub fn import(&mut self, entries: &[(u64, Vec<u8>)]) -> Result<(), SegmentError> {
        let Some(&(first, _)) = entries.first() else {
            return Ok(());
        };
        assert!(self.files.is_empty(), "import into an empty log only");
        let path = self.dir.join(segment_name(first));
        let tmp = self.dir.join(format!("{}.tmp", segment_name(first)));
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for (n, (index, bytes)) in entries.iter().enumerate() {
            if *index != first + n as u64 {
                return Err(SegmentError::OldLog(format!(
                    "entry {index} where entry {} was due",
                    first + n as u64
                )));
            }
            offsets.push(buf.len() as u64);
            record(&mut buf, ENTRY, *index, bytes);
        }
        let file = open_file(&tmp)?;
        file.set_len(0).map_err(io(&tmp, "writing"))?;
        file.write_all_at(&buf, 0).map_err(io(&tmp, "writing"))?;
        file.sync_all().map_err(io(&tmp, "syncing"))?;
        std::fs::rename(&tmp, &path).map_err(io(&path, "renaming"))?;
        sync_dir(&self.dir).map_err(io(&self.dir, "syncing"))?;
        self.files.insert(
            first,
            Segment {
                path,
                file,
                offsets,
                len: buf.len() as u64,
                size: buf.len() as u64,
            },
        );
        Ok(())
    }

    /// The index of each entry held (for tests).
    #[cfg(test)]
    pub fn indexes(&self) -> Vec<u64> {
        self.files
            .iter()
            .flat_map(|(first, s)| *first..first + s.offsets.len() as u64)
            .filter(|i| *i >= self.first_kept)
            .collect()
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::RangeInclusive<u64>, tag: &str) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| (i, format!("{tag}{i:03}").repeat(10).into_bytes()))
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(DIR))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn open(dir: &Path) -> Segments {
        let mut segments = Segments::open(dir, true).expect("open");
        segments.segment_bytes = 1000;
        segments
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    /// Appends roll over to new segments; reads cross them; a reopen finds the same entries and
    /// the last commit point; a truncation cuts one file and deletes the later ones; a purge
    /// deletes whole segments only.
    #[test]
    fn segments_append_read_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Disk::open(dir.path(), Some(0)).expect("disk");
        let mut segments = open(dir.path());
        for chunk in [1..=10, 11..=20, 21..=30, 31..=40] {
            segments
                .append(&disk, &entries(chunk.clone(), "a"), Some(b"c"))
                .expect("append");
        }
        segments.sync(&disk).expect("sync");
        // 10 records of 57 bytes a write (and a commit record of 18 after a segment's first): a
        // new segment every second write.
        assert_eq!(
            files(dir.path()),
            ["00000000000000000001.log", "00000000000000000021.log"]
        );
        // The closed segment is cut to its last record; the last one is allocated ahead.
        let size = |name: &str| {
            std::fs::metadata(dir.path().join(DIR).join(name))
                .expect("meta")
                .len()
        };
        assert_eq!(size("00000000000000000001.log"), 18 + 20 * 57);
        assert_eq!(size("00000000000000000021.log"), PREALLOCATE);
        assert_eq!(segments.indexes(), (1..=40).collect::<Vec<_>>());
        let read = segments.read(15, Some(25)).expect("read");
        assert_eq!(
            read,
            entries(15..=24, "a")
                .into_iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>()
        );
        drop(segments);

        let mut segments = open(dir.path());
        assert_eq!(segments.indexes(), (1..=40).collect::<Vec<_>>());
        assert_eq!(segments.committed(), Some(&b"c"[..]));
        assert_eq!(segments.last_index(), Some(40));
        // Cut inside the first segment: the second goes, the first ends at 14.
        segments.truncate(&disk, 15).expect("truncate");
        assert_eq!(files(dir.path()), ["00000000000000000001.log"]);
        segments
            .append(&disk, &entries(15..=18, "b"), Some(b"d"))
            .expect("append");
        segments.sync(&disk).expect("sync");
        drop(segments);

        let mut segments = open(dir.path());
        assert_eq!(segments.indexes(), (1..=18).collect::<Vec<_>>());
        let read = segments.read(13, None).expect("read");
        assert_eq!(
            read,
            [entries(13..=14, "a"), entries(15..=18, "b")]
                .concat()
                .into_iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>()
        );
        assert_eq!(segments.committed(), Some(&b"d"[..]));
        // The first segment is over its size: the next write starts another.
        segments
            .append(&disk, &entries(19..=22, "b"), None)
            .expect("append");
        assert_eq!(
            files(dir.path()),
            ["00000000000000000001.log", "00000000000000000019.log"]
        );
        // A purge up to 20 deletes the first segment (1..=18), and 19 and 20 are no longer read.
        assert_eq!(segments.purge(&disk, 20).expect("purge"), 18);
        assert_eq!(files(dir.path()), ["00000000000000000019.log"]);
        assert_eq!(segments.read(0, None).expect("read").len(), 2);
        assert_eq!(segments.indexes(), [21, 22]);
        // A purge past the end deletes everything; the next entry starts a new segment.
        assert_eq!(segments.purge(&disk, 30).expect("purge"), 4);
        assert!(segments.is_empty());
        segments
            .append(&disk, &entries(31..=31, "c"), None)
            .expect("append");
        segments.sync(&disk).expect("sync");
        drop(segments);
        assert_eq!(open(dir.path()).indexes(), [31]);
    }

    /// A record a crash cut short at the end of the last segment is dropped and the file cut
    /// there, so that the next write does not follow garbage; damage anywhere else is an error
    /// naming the file and the offset.
    #[test]
    fn a_torn_last_record_is_cut_and_other_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Disk::open(dir.path(), Some(0)).expect("disk");
        let mut segments = open(dir.path());
        segments
            .append(&disk, &entries(1..=20, "a"), None)
            .expect("append");
        segments
            .append(&disk, &entries(21..=25, "a"), None)
            .expect("append");
        segments.sync(&disk).expect("sync");
        drop(segments);
        let last = dir.path().join(DIR).join("00000000000000000021.log");
        // Allocated ahead: zeros after the 5 records.
        assert_eq!(std::fs::metadata(&last).expect("meta").len(), PREALLOCATE);
        // The last record half written: its end is still zeros.
        let file = OpenOptions::new().write(true).open(&last).expect("open");
        file.write_all_at(&[0; 20], 5 * 57 - 20).expect("tear");
        drop(file);
        let mut segments = open(dir.path());
        assert_eq!(segments.last_index(), Some(24));
        assert_eq!(std::fs::metadata(&last).expect("meta").len(), 4 * 57);
        segments
            .append(&disk, &entries(25..=26, "b"), None)
            .expect("append");
        segments.sync(&disk).expect("sync");
        drop(segments);
        assert_eq!(open(dir.path()).last_index(), Some(26));

        // A flipped byte in the first segment (not the last): refused, named.
        let first = dir.path().join(DIR).join("00000000000000000001.log");
        let mut bytes = std::fs::read(&first).expect("read");
        bytes[57 * 3 + 30] ^= 0xFF;
        std::fs::write(&first, &bytes).expect("write");
        let error = Segments::open(dir.path(), true).err().expect("corrupt");
        let text = error.to_string();
        assert!(
            text.contains("00000000000000000001.log") && text.contains("at byte 171"),
            "{text}"
        );
    }
}
