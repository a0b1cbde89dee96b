//! The write-ahead log: segment files of frames, one frame per group commit.
//!
//! ```text
//! frame   = length: u32 LE | checksum: u32 LE | batch: u64 LE | payload: length bytes
//! checksum = CRC-32 of (batch | payload)
//! payload = postcard of Vec<Logged>: each command with its time and the
//!           events it recorded (the three datasets live in the log)
//! ```
//!
//! What the format assumes of the disk: a write that was followed by a
//! successful `fdatasync` survives power loss; a write in flight at a crash
//! may leave any prefix of its bytes, or garbage, in the last frame. So a bad
//! *last* frame of the *last* segment is a torn tail: it was never
//! acknowledged, and is dropped. A bad frame anywhere else is corruption and
//! stops start-up with the file and offset.
//!
//! The writer fills segments with zeros ahead of its frames and syncs the
//! zeros once: a frame then overwrites blocks the file already has, and its
//! `fdatasync` writes the data alone, not the inode of a file that grew
//! (nor a journal commit for it, where the file system keeps a journal).
//! It writes them while it has nothing else to do, a step at a time,
//! and a frame that finds none ahead writes a chunk of them itself. Zeros
//! after the last frame read as a torn tail (a zero length is never a
//! frame) and are cut off at the next start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use headroom_core::{Event, Timestamp};

use crate::StoreError;
use crate::command::Command;

pub const FRAME_HEADER_BYTES: usize = 16;

/// Largest frame payload: a batch of `BATCH_COMMANDS_MAX` commands fits many
/// times over; a length above it is damage, not data.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// A segment is closed and a new one started beyond this size, so that
/// segments covered by a snapshot can be deleted whole.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;

/// One applied command: when, what, and the events it recorded. Replaying
/// the command must record the same events again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Logged {
    pub at: Timestamp,
    pub command: Command,
    pub events: Vec<Event>,
}

pub type Batch = Vec<Logged>;

pub fn segment_path(directory: &Path, first_batch: u64) -> PathBuf {
    directory.join(format!("wal-{first_batch:020}.log"))
}

/// Segments in the directory, by their first batch number, in order.
pub fn list_segments(directory: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    list_numbered(directory, "wal-", ".log")
}

pub fn list_numbered(directory: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(directory).map_err(|error| StoreError::io(directory, error))? {
        let entry = entry.map_err(|error| StoreError::io(directory, error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix))
            && let Ok(number) = number.parse::<u64>()
        {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Bytes a frame is encoded through on their way to the log's buffer.
const ENCODING_BUFFER_BYTES: usize = 4096;

pub fn encode_frame(buffer: &mut Vec<u8>, batch: u64, commands: &Batch) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    headroom_core::encoding::encode(commands, &mut [0u8; ENCODING_BUFFER_BYTES], |bytes| {
        buffer.extend_from_slice(bytes);
        true
    })
    .expect("commands serialize");
    let length = buffer.len() - start - FRAME_HEADER_BYTES;
    assert!(length <= FRAME_PAYLOAD_BYTES_MAX, "a batch frame of {length} bytes");
    buffer[start + 8..start + 16].copy_from_slice(&batch.to_le_bytes());
    let checksum = crc32fast::hash(&buffer[start + 8..]);
    buffer[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
    buffer[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
}

/// The frames of one segment that checked out, and where valid data ends.
pub struct SegmentContents {
    pub frames: Vec<(u64, Batch)>,
    pub valid_length: u64,
    pub file_length: u64,
}

/// Reads a segment. `last` says whether it is the newest segment, the only
/// one that may end in a torn frame.
pub fn read_segment(path: &Path, last: bool) -> Result<SegmentContents, StoreError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)).map_err(|error| StoreError::io(path, error))?;
    let file_length = bytes.len() as u64;
    let mut frames = Vec::new();
    let mut offset = 0usize;
    let mut last_batch = 0u64;
    while offset < bytes.len() {
        let damaged = |reason: &str| StoreError::Corrupt {
            file: path.to_path_buf(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        match check_frame(&bytes, offset) {
            Ok((end, batch)) => {
                let commands: Batch = postcard::from_bytes(&bytes[offset + FRAME_HEADER_BYTES..end])
                    .map_err(|error| damaged(&format!("checksum matches but the frame does not decode: {error}")))?;
                frames.push((batch, commands));
                last_batch = batch;
                offset = end;
            }
            // Only one frame is ever unsynced, the newest: whatever follows
            // the last good frame of the last segment is that frame, torn,
            // unless a later good frame shows the damage is in the middle.
            Err(_) if last && !later_frame_exists(&bytes, offset, last_batch) => break,
            Err(reason) => return Err(damaged(reason)),
        }
    }
    Ok(SegmentContents { frames, valid_length: offset as u64, file_length })
}

/// Checks the frame at `offset`: where it ends and its batch, or what is wrong.
fn check_frame(bytes: &[u8], offset: usize) -> Result<(usize, u64), &'static str> {
    let rest = &bytes[offset..];
    if rest.len() < FRAME_HEADER_BYTES {
        return Err("truncated frame header");
    }
    let length = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let checksum = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let end = offset + FRAME_HEADER_BYTES + length;
    if length > FRAME_PAYLOAD_BYTES_MAX || end > bytes.len() {
        return Err("frame length runs past the end of the segment");
    }
    if crc32fast::hash(&bytes[offset + 8..end]) != checksum {
        return Err("checksum mismatch");
    }
    Ok((end, u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"))))
}

/// Whether a good frame of a later batch starts anywhere after `offset`:
/// then the bad bytes at `offset` are damage, not a torn tail.
fn later_frame_exists(bytes: &[u8], offset: usize, last_batch: u64) -> bool {
    (offset + 1..bytes.len().saturating_sub(FRAME_HEADER_BYTES - 1)).any(|start| {
        let batch = u64::from_le_bytes(bytes[start + 8..start + 16].try_into().expect("8 bytes"));
        batch > last_batch && check_frame(bytes, start).is_ok()
    })
}

/// Zeros kept ahead of the frames, and written at once by a frame that
/// finds none: each chunk costs one sync that commits a new file size,
/// shared by the many frames written into it.
pub const ZEROED_CHUNK_BYTES: u64 = 1 << 20;

/// Zeros written in one step while the writer waits for work: short, so
/// that a frame arriving meanwhile hardly waits.
const ZEROING_STEP_BYTES: u64 = 64 << 10;

/// The open segment the writer appends to.
pub struct SegmentWriter {
    directory: PathBuf,
    file: File,
    /// Where the frames end.
    length: u64,
    /// Where the durable zeros after the frames end.
    zeroed: u64,
    /// Where the zeros written so far end, durable or not: at least where
    /// the frames end, at most the file's length.
    zeroing: u64,
    /// Whether to write zeros while idle: off after a failure (a full
    /// disk), until the next segment.
    zeroing_ahead: bool,
}

impl SegmentWriter {
    /// Opens `path` for appending at `length`, cutting off what follows:
    /// a torn tail, or zeros written ahead.
    pub fn open(directory: &Path, path: &Path, length: u64) -> Result<SegmentWriter, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|error| StoreError::io(path, error))?;
        if file.metadata().map_err(|error| StoreError::io(path, error))?.len() != length {
            file.set_len(length).map_err(|error| StoreError::io(path, error))?;
            file.sync_all().map_err(|error| StoreError::io(path, error))?;
        }
        sync_directory(directory)?;
        Ok(SegmentWriter {
            directory: directory.to_path_buf(),
            file,
            length,
            zeroed: length,
            zeroing: length,
            zeroing_ahead: true,
        })
    }

    /// Appends one frame (a group commit) and makes it durable.
    pub fn append(&mut self, frame: &[u8], first_batch: u64) -> io::Result<()> {
        if self.length >= SEGMENT_BYTES_MAX {
            // A closed segment ends at its last frame: only the newest may
            // end in zeros. The cut is durable before the next one exists.
            self.file.set_len(self.length)?;
            self.file.sync_all()?;
            let path = segment_path(&self.directory, first_batch);
            self.file = OpenOptions::new().create_new(true).read(true).write(true).open(&path)?;
            self.length = 0;
            (self.zeroed, self.zeroing, self.zeroing_ahead) = (0, 0, true);
            sync_directory(&self.directory).map_err(io::Error::other)?;
        }
        let end = self.length + frame.len() as u64;
        let written = self.file.write_all_at(frame, self.length).and_then(|()| {
            if end > self.zeroed {
                // Zeros ahead only save time: a disk too full for them
                // still takes the frame (the part they reached is zeros).
                let from = end.max(self.zeroing);
                let ahead = end.next_multiple_of(ZEROED_CHUNK_BYTES).max(from);
                self.zeroing = match write_zeros(&self.file, from, ahead) {
                    Ok(()) => ahead,
                    Err(_) => {
                        self.zeroing_ahead = false;
                        end
                    }
                };
            }
            self.file.sync_data()
        });
        if let Err(error) = written {
            // The frame's callers are told it failed, so it must not come
            // back at the next start: cut it off. If even that fails, what
            // is on disk is unknown, and stopping is the only honest answer.
            let cut = self.file.set_len(self.length).and_then(|()| self.file.sync_all());
            if let Err(cut_error) = cut {
                eprintln!("headroom: a failed log write could not be undone ({cut_error}); stopping");
                std::process::abort();
            }
            (self.zeroed, self.zeroing) = (self.length, self.length);
            return Err(error);
        }
        self.length = end;
        // The sync made every zero written so far durable too.
        self.zeroed = self.zeroing;
        Ok(())
    }

    /// One step of zeros ahead, for while nothing else waits: keeps a chunk
    /// of durable zeros ahead of the frames, so that their syncs never wait
    /// for zeros. Returns whether there was anything to do.
    ///
    /// Zeros that do not fit (a full disk) only end the zeroing, but an
    /// error writing them back is an error of the disk: the page that holds
    /// the end of the last frame is written again with them.
    pub fn zero_ahead(&mut self) -> io::Result<bool> {
        let full = self.length >= SEGMENT_BYTES_MAX;
        if full || !self.zeroing_ahead || self.zeroed >= self.length + ZEROED_CHUNK_BYTES {
            return Ok(false);
        }
        let target = (self.length + ZEROED_CHUNK_BYTES).next_multiple_of(ZEROED_CHUNK_BYTES);
        if self.zeroing < target {
            let (from, to) = (self.zeroing, (self.zeroing + ZEROING_STEP_BYTES).min(target));
            if write_zeros(&self.file, from, to).is_err() {
                self.zeroing_ahead = false;
                return Ok(true);
            }
            self.zeroing = to;
            start_writeback(&self.file, from, to)?;
        } else {
            self.file.sync_data()?;
            self.zeroed = self.zeroing;
        }
        Ok(true)
    }
}

/// Starts writing `start..end` of `file` to the disk without waiting, so
/// that the sync that follows finds little left to write.
fn start_writeback(file: &File, start: u64, end: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` is borrowed; the
    // call reads no memory of ours.
    let started = unsafe {
        libc::sync_file_range(file.as_raw_fd(), start as i64, (end - start) as i64, libc::SYNC_FILE_RANGE_WRITE)
    };
    if started == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Writes zeros over `start..end` of `file`.
fn write_zeros(file: &File, start: u64, end: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut offset = start;
    while offset < end {
        let count = (end - offset).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..count as usize], offset)?;
        offset += count;
    }
    Ok(())
}

/// Makes a directory's entries (a new or renamed file) durable.
pub fn sync_directory(directory: &Path) -> Result<(), StoreError> {
    File::open(directory).and_then(|file| file.sync_all()).map_err(|error| StoreError::io(directory, error))
}

/// Reads every durable frame of the directory in order, without changing
/// anything (a torn tail is skipped, not cut off): for readers of a live or
/// stopped data directory.
pub fn scan(
    directory: &Path,
    mut visit: impl FnMut(u64, &Path, Batch) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let segments = list_segments(directory)?;
    for (index, (_, path)) in segments.iter().enumerate() {
        let contents = read_segment(path, index + 1 == segments.len())?;
        for (batch, commands) in contents.frames {
            visit(batch, path, commands)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory named after `name`, and a writer at the start of
    /// its first segment.
    fn new_segment(name: &str) -> (PathBuf, PathBuf, SegmentWriter) {
        let directory = std::env::temp_dir().join(format!("headroom-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        fs::create_dir_all(&directory).unwrap();
        let path = segment_path(&directory, 1);
        let writer = SegmentWriter::open(&directory, &path, 0).unwrap();
        (directory, path, writer)
    }

    #[test]
    fn a_closed_segment_ends_at_its_last_frame_and_only_the_newest_is_zeroed_ahead() {
        let (directory, first, mut writer) = new_segment("rotation");
        // Frames of a size that never lands on a chunk's end.
        let frame = vec![7u8; (8 << 20) + 1];
        let frames_per_segment = SEGMENT_BYTES_MAX.div_ceil(frame.len() as u64);
        for batch in 1..=frames_per_segment {
            writer.append(&frame, batch).unwrap();
        }
        assert!(!writer.zero_ahead().unwrap(), "zeros for a full segment would be cut off at once");
        writer.append(&frame, frames_per_segment + 1).unwrap();
        let segments = list_segments(&directory).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(fs::metadata(&first).unwrap().len(), frames_per_segment * frame.len() as u64);
        let newest = fs::metadata(&segments[1].1).unwrap().len();
        assert_eq!(newest, (frame.len() as u64).next_multiple_of(ZEROED_CHUNK_BYTES));
        fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn idle_steps_keep_a_chunk_of_durable_zeros_ahead_of_the_frames() {
        let (directory, path, mut writer) = new_segment("zero-ahead");
        writer.append(&[7; 100], 1).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), ZEROED_CHUNK_BYTES, "the first frame zeroes a chunk");
        let mut steps = 0;
        while writer.zero_ahead().unwrap() {
            steps += 1;
        }
        // Sixteen steps of zeros and one sync.
        assert_eq!(steps, ZEROED_CHUNK_BYTES / ZEROING_STEP_BYTES + 1);
        assert_eq!((writer.zeroed, writer.zeroing), (2 * ZEROED_CHUNK_BYTES, 2 * ZEROED_CHUNK_BYTES));
        // A frame across the first chunk's end lands on those zeros.
        let frame = vec![8u8; ZEROED_CHUNK_BYTES as usize];
        writer.append(&frame, 2).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * ZEROED_CHUNK_BYTES);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..100], &[7; 100]);
        assert!(bytes[100..100 + frame.len()].iter().all(|byte| *byte == 8));
        assert!(bytes[100 + frame.len()..].iter().all(|byte| *byte == 0));
        fs::remove_dir_all(&directory).unwrap();
    }
}
