//! Snapshots: the whole engine state through one batch, so that restart
//! replays only the log after it.
//!
//! ```text
//! snapshot = "HEADROOM" | version: u32 LE | batch: u64 LE | length: u64 LE | checksum: u32 LE | payload
//! payload  = postcard of Vec<AccountState>
//! ```
//! Written to a temporary file, synced, renamed into place, directory synced:
//! a snapshot file either is whole or does not exist.
//!
//! The store writes its snapshots from a child process ([`start`]): a
//! copy-on-write image of the state at one batch, encoded while the engine
//! goes on, as Redis does. Encoding a state of a hundred megabytes takes
//! most of a second, which the engine would otherwise stand still for.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use headroom_core::AccountState;

use crate::StoreError;
use crate::log::{list_numbered, sync_directory};

const MAGIC: &[u8; 8] = b"HEADROOM";
const VERSION: u32 = 2;
const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 4;

pub fn snapshot_path(directory: &Path, batch: u64) -> PathBuf {
    directory.join(format!("snapshot-{batch:020}.bin"))
}

pub fn list_snapshots(directory: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    list_numbered(directory, "snapshot-", ".bin")
}

fn header(batch: u64, length: u64, checksum: u32) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&batch.to_le_bytes());
    header[20..28].copy_from_slice(&length.to_le_bytes());
    header[28..32].copy_from_slice(&checksum.to_le_bytes());
    header
}

/// The temporary file a snapshot is written to before it is renamed into place.
fn temporary_path(directory: &Path, batch: u64) -> PathBuf {
    snapshot_path(directory, batch).with_extension("tmp")
}

/// Removes the temporary files of snapshots a crash interrupted.
pub fn remove_unfinished(directory: &Path) -> Result<(), StoreError> {
    for (_, path) in list_numbered(directory, "snapshot-", ".tmp")? {
        fs::remove_file(&path).map_err(|error| StoreError::io(&path, error))?;
    }
    Ok(())
}

/// Buffer between the encoder and the file in the child.
const CHILD_BUFFER_BYTES: usize = 1 << 20;

/// A snapshot a child process is writing (see [`start`]). Dropped
/// unfinished, it stops the child and removes what it wrote.
#[derive(Debug)]
pub struct Writing {
    pub batch: u64,
    /// The child, until it is waited for.
    pid: Option<libc::pid_t>,
    temporary: PathBuf,
}

/// Starts writing the snapshot of `accounts` through `batch` in a child
/// process, and returns at once. The child closes every descriptor but the
/// file's (the directory's lock, sockets: nothing of this process may
/// outlive it in the child), writes and syncs the temporary file, and
/// exits; [`Writing::finish`] waits for it and puts the snapshot in place.
/// The snapshot child's niceness: the lowest priority, so that it runs on
/// what the engine and the writer leave.
const SNAPSHOT_NICENESS: libc::c_int = 19;

/// A child whose parent crashed finishes a file nobody renames, which the
/// next start removes (it does not die with its parent: Linux would tie
/// that to the thread that forked, and stop a snapshot at every close).
pub fn start(directory: &Path, batch: u64, accounts: &[&AccountState]) -> Result<Writing, StoreError> {
    let temporary = temporary_path(directory, batch);
    let file = File::create(&temporary).map_err(|error| StoreError::io(&temporary, error))?;
    // Everything the child uses is made here: after `fork` in a threaded
    // process it must not allocate, take a lock, or unwind.
    let mut buffer = vec![0u8; CHILD_BUFFER_BYTES];
    let hasher = crc32fast::Hasher::new();
    // SAFETY: `fork` is called from one thread of a threaded process. The
    // child runs only `write_in_child` (system calls on the file opened
    // above, through the buffer allocated above; serializing borrows the
    // state without allocating) and leaves with `_exit`, which neither runs
    // destructors nor flushes anything shared with the parent.
    match unsafe { libc::fork() } {
        -1 => {
            let error = std::io::Error::last_os_error();
            let _ = fs::remove_file(&temporary);
            Err(StoreError::io(&temporary, error))
        }
        0 => {
            let written = write_in_child(&mut buffer, hasher, &file, batch, accounts);
            // SAFETY: ends the child without running anything of the parent's.
            unsafe { libc::_exit(if written { 0 } else { 1 }) }
        }
        pid => Ok(Writing { batch, pid: Some(pid), temporary }),
    }
}

/// The child's whole life; whether the snapshot is written and synced.
fn write_in_child(
    buffer: &mut [u8],
    mut hasher: crc32fast::Hasher,
    file: &File,
    batch: u64,
    accounts: &[&AccountState],
) -> bool {
    // SAFETY: this is the child after `fork`.
    unsafe { close_all_but(file.as_raw_fd()) };
    // Decisions come first: the snapshot takes the CPU they leave. Only
    // restart time waits for it (the log holds everything until it is in place).
    // SAFETY: a system call on this process alone; a failure leaves the priority as it was.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SNAPSHOT_NICENESS) };
    let mut out = file;
    if out.write_all(&[0u8; HEADER_BYTES]).is_err() {
        return false;
    }
    let mut length = 0u64;
    let encoded = headroom_core::encoding::encode(accounts, buffer, |bytes| {
        hasher.update(bytes);
        length += bytes.len() as u64;
        out.write_all(bytes).is_ok()
    });
    if encoded.is_err() {
        return false;
    }
    let header = header(batch, length, hasher.finalize());
    file.write_all_at(&header, 0).is_ok() && file.sync_all().is_ok()
}

/// Closes every descriptor above standard error but `keep`.
///
/// # Safety
/// Only for a child after `fork`: descriptors still in use by other code are closed.
unsafe fn close_all_but(keep: RawFd) {
    const FIRST: libc::c_uint = 3;
    let keep = keep as libc::c_uint;
    // SAFETY: the caller's; `close_range` takes plain numbers.
    let closed = unsafe {
        (keep == FIRST || libc::syscall(libc::SYS_close_range, FIRST, keep - 1, 0) == 0)
            && libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0) == 0
    };
    if !closed {
        // Kernels before 5.9: one by one, as far as descriptors usually go.
        for fd in FIRST..65_536 {
            if fd != keep {
                // SAFETY: as above.
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
}

impl Writing {
    /// Waits for the child. With `install`, renames the snapshot into place
    /// and syncs the directory; without (the log it depends on failed), or
    /// if the child failed, removes the temporary file.
    pub fn finish(mut self, directory: &Path, install: bool) -> Result<(), StoreError> {
        let status = self.wait();
        let written = status.is_some_and(|status| libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        if !written || !install {
            let _ = fs::remove_file(&self.temporary);
            return match written {
                true => Ok(()),
                false => Err(StoreError::io(
                    &self.temporary,
                    std::io::Error::other(format!("the process writing it ended with status {status:?}")),
                )),
            };
        }
        let path = snapshot_path(directory, self.batch);
        fs::rename(&self.temporary, &path).map_err(|error| StoreError::io(&path, error))?;
        sync_directory(directory)
    }

    /// Waits for the child, once; its wait status.
    fn wait(&mut self) -> Option<libc::c_int> {
        let pid = self.pid.take()?;
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child, which nothing else waits for.
            let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
            if waited == pid {
                return Some(status);
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return None;
            }
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: signals our own child, not yet waited for.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            self.wait();
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

pub fn read(path: &Path) -> Result<(u64, Vec<AccountState>), StoreError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)).map_err(|error| StoreError::io(path, error))?;
    let damaged = |offset: usize, reason: &str| StoreError::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_BYTES || &bytes[0..8] != MAGIC {
        return Err(damaged(0, "not a snapshot header"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(damaged(8, &format!("snapshot version {version}, this build reads {VERSION}")));
    }
    let batch = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let length = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes")) as usize;
    let checksum = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() != length {
        return Err(damaged(20, "length does not match the file"));
    }
    if crc32fast::hash(payload) != checksum {
        return Err(damaged(HEADER_BYTES, "checksum mismatch"));
    }
    let accounts =
        postcard::from_bytes(payload).map_err(|error| damaged(HEADER_BYTES, &format!("does not decode: {error}")))?;
    Ok((batch, accounts))
}
