//! Snapshots: the whole engine state through one batch, so that restart
//! replays only the log after it.
//!
//! ```text
//! snapshot = "HEADROOM" | version: u32 LE | batch: u64 LE | length: u64 LE | checksum: u32 LE | payload
//! payload  = postcard of Vec<AccountState>
//! ```
//! Written to a temporary file, synced, renamed into place, directory synced:
//! a snapshot file either is whole or does not exist.

use std::fs::{self, File};
use std::io::{Read, Write};
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

pub fn encode(batch: u64, accounts: &[&AccountState]) -> Vec<u8> {
    let payload = postcard::to_stdvec(accounts).expect("account state serializes");
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&batch.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// Writes a snapshot durably and atomically.
pub fn write(directory: &Path, batch: u64, bytes: &[u8]) -> Result<(), StoreError> {
    let path = snapshot_path(directory, batch);
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(|error| StoreError::io(&temporary, error))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|error| StoreError::io(&temporary, error))?;
    fs::rename(&temporary, &path).map_err(|error| StoreError::io(&path, error))?;
    sync_directory(directory)
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
