//! Actor snapshots in sled: the state an actor hands over plus the last stream
//! sequence it had applied from each stream it reads, written as one value so
//! they can never disagree.
//!
//! Record layout (little-endian):
//! `b"MRSN"` | format version u16 | sequence count u16 | each sequence u64 |
//! payload length u64 | CRC-32 of everything after the magic except the
//! checksum itself | payload.
//! A record that fails any check is refused with the reason; it is never
//! loaded as if it were state.
//!
//! Records live in files (`states/<key>.<generation>`, written to a temporary
//! name, fsynced and renamed); sled holds, per key, which generations are
//! current and is the commit point. Large values rewritten in sled stay in
//! its memory for many versions (a 3 MiB state rewritten 60 times held over
//! 100 MiB), so only the small pointer goes there.
//!
//! A key's snapshot is a chain: one whole state, then any number of records of
//! what changed after it ([`Part::Changes`]), so that a large state need not
//! be written out whole every time a little of it changed. The pointer names
//! the chain's first and last generation; the last record's sequences are the
//! snapshot's. A whole state starts a new chain and retires the old one.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ChassisError;

const MAGIC: &[u8; 4] = b"MRSN";
/// A sled value of an earlier millrace: this magic, then the one current generation (u64 LE).
const POINTER_MAGIC: &[u8; 4] = b"MRSP";
/// A sled value: this magic, then the chain's first and last generation (u64 LE each).
const CHAIN_MAGIC: &[u8; 4] = b"MRSC";
const FORMAT_VERSION: u16 = 2;
/// Magic, version and sequence count: enough to know how long the header is.
const PREFIX_LEN: usize = 4 + 2 + 2;

fn header_len(sequences: usize) -> usize {
    PREFIX_LEN + 8 * sequences + 8 + 4
}

/// How long [`open_sled`] waits for a lock that a dropped handle still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a sled database, waiting out a file lock that is still held by a
/// handle this process just dropped: sled's flusher thread keeps the database
/// (and its lock) alive for a moment after the last `Db` goes away, so a
/// close-and-reopen would otherwise fail at random. Another process holding
/// the lock is still refused, after [`LOCK_WAIT`].
pub fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            // sled reports the lock as `Other` with the lock error in its text.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// What a record holds: the whole state, or what changed since the record before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    Changes,
}

/// The generations of a key's current chain, first (the whole state) to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    first: u64,
    last: u64,
}

/// A snapshot record encoded and ready to write: the header (sequences,
/// length, checksum) and the state's bytes. Built from a state the actor
/// handed over, so it can be built and written off the stage's thread.
pub struct Encoded {
    key: String,
    part: Part,
    header: Vec<u8>,
    payload: Vec<u8>,
}

impl Encoded {
    pub fn new<T: Serialize>(
        key: &str,
        sequences: &[u64],
        state: &T,
        part: Part,
    ) -> Result<Self, ChassisError> {
        let error = |e: postcard::Error| ChassisError::SnapshotEncode {
            key: key.into(),
            message: e.to_string(),
        };
        // Sized first: growing by doubling copied a large state again and again.
        let size = postcard::experimental::serialized_size(state).map_err(error)?;
        let payload = postcard::to_extend(state, Vec::with_capacity(size)).map_err(error)?;
        let header =
            encode_header(sequences, &payload).ok_or_else(|| ChassisError::SnapshotEncode {
                key: key.into(),
                message: format!("{} sequences, at most {}", sequences.len(), u16::MAX),
            })?;
        Ok(Self {
            key: key.into(),
            part,
            header,
            payload,
        })
    }

    pub fn part(&self) -> Part {
        self.part
    }
}

/// A loaded snapshot: the whole state, the changes after it in order, and, per
/// stream read, the last sequence the newest of them had applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    pub sequences: Vec<u64>,
    pub state: T,
    pub changes: Vec<T>,
}

#[derive(Clone)]
pub struct SnapshotStore {
    db: sled::Db,
    path: PathBuf,
    states: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, ChassisError> {
        let path = dir.join("snapshots");
        let db = open_sled(&path).map_err(|e| ChassisError::SnapshotStore {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let states = path.join("states");
        let store = Self { db, path, states };
        std::fs::create_dir_all(&store.states).map_err(|e| store.file_error(&store.states, e))?;
        store.remove_stale_files()?;
        Ok(store)
    }

    /// Writes `state` with `sequences` (one per stream read) under `key` and waits until it is on disk.
    pub fn save<T: Serialize>(
        &self,
        key: &str,
        sequences: &[u64],
        state: &T,
    ) -> Result<usize, ChassisError> {
        self.write(&Encoded::new(key, sequences, state, Part::Whole)?)
    }

    /// Writes an encoded snapshot and waits until it is on disk; answers its size.
    /// Changes extend the key's chain, which must exist.
    pub fn write(&self, encoded: &Encoded) -> Result<usize, ChassisError> {
        self.commit(
            &encoded.key,
            &[&encoded.header, &encoded.payload],
            encoded.part,
        )?;
        Ok(encoded.header.len() + encoded.payload.len())
    }

    /// Writes `parts` as the next generation of `key`'s file, makes it durable,
    /// then points sled at the chain it ends; a chain a whole state replaces
    /// goes only after that.
    fn commit(&self, key: &str, parts: &[&[u8]], part: Part) -> Result<(), ChassisError> {
        use std::io::Write;
        let previous = self.chain(key)?;
        let generation = previous.map_or(1, |c| c.last + 1);
        let chain = match (part, previous) {
            (Part::Whole, _) => Chain {
                first: generation,
                last: generation,
            },
            (Part::Changes, Some(previous)) => Chain {
                last: generation,
                ..previous
            },
            (Part::Changes, None) => {
                return Err(ChassisError::SnapshotCorrupt {
                    key: key.into(),
                    message: "changes offered with no whole state before them".into(),
                })
            }
        };
        let file = self.state_file(key, generation);
        let temporary = file.with_extension(format!("{generation}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::File::create(&temporary)?;
            for part in parts {
                out.write_all(part)?;
            }
            out.sync_all()?;
            std::fs::rename(&temporary, &file)?;
            std::fs::File::open(&self.states)?.sync_all()
        };
        write().map_err(|e| self.file_error(&file, e))?;
        let mut pointer = CHAIN_MAGIC.to_vec();
        pointer.extend_from_slice(&chain.first.to_le_bytes());
        pointer.extend_from_slice(&chain.last.to_le_bytes());
        self.db
            .insert(key, pointer)
            .map_err(|e| self.store_error(e))?;
        self.db.flush().map_err(|e| self.store_error(e))?;
        if let (Part::Whole, Some(old)) = (part, previous) {
            for generation in old.first..=old.last {
                let old = self.state_file(key, generation);
                if let Err(e) = std::fs::remove_file(&old) {
                    tracing::warn!("snapshot {key}: could not remove {}: {e}", old.display());
                }
            }
        }
        Ok(())
    }

    /// The chain sled points at for `key`.
    fn chain(&self, key: &str) -> Result<Option<Chain>, ChassisError> {
        let Some(value) = self.db.get(key).map_err(|e| self.store_error(e))? else {
            return Ok(None);
        };
        decode_pointer(&value)
            .map(Some)
            .map_err(|message| ChassisError::SnapshotCorrupt {
                key: key.into(),
                message,
            })
    }

    fn state_file(&self, key: &str, generation: u64) -> PathBuf {
        let mut name = String::with_capacity(key.len() + 8);
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02x}"));
            }
        }
        self.states.join(format!("{name}.{generation}"))
    }

    /// Files no pointer's chain holds: a crash between writing a file and
    /// committing its pointer, or before the old chain was removed, leaves them behind.
    fn remove_stale_files(&self) -> Result<(), ChassisError> {
        let mut current = std::collections::HashSet::new();
        for entry in self.db.iter() {
            let (key, value) = entry.map_err(|e| self.store_error(e))?;
            if let (Ok(key), Ok(chain)) = (std::str::from_utf8(&key), decode_pointer(&value)) {
                for generation in chain.first..=chain.last {
                    current.insert(self.state_file(key, generation));
                }
            }
        }
        let entries =
            std::fs::read_dir(&self.states).map_err(|e| self.file_error(&self.states, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !current.contains(&path) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!("could not remove stale snapshot {}: {e}", path.display());
                }
            }
        }
        Ok(())
    }

    /// The snapshot under `key`, `None` if there never was one.
    pub fn load<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Snapshot<T>>, ChassisError> {
        let Some(chain) = self.chain(key)? else {
            return Ok(None);
        };
        let corrupt = |message: String| ChassisError::SnapshotCorrupt {
            key: key.into(),
            message,
        };
        let mut sequences = Vec::new();
        let mut states = Vec::new();
        for generation in chain.first..=chain.last {
            let file = self.state_file(key, generation);
            let record = std::fs::read(&file)
                .map_err(|e| corrupt(format!("state file {}: {e}", file.display())))?;
            let (at, payload) = decode_record(&record)
                .map_err(|message| corrupt(format!("{}: {message}", file.display())))?;
            let state = postcard::from_bytes(payload)
                .map_err(|e| corrupt(format!("{}: state does not decode: {e}", file.display())))?;
            sequences = at;
            states.push(state);
        }
        let mut states = states.into_iter();
        let state = states
            .next()
            .ok_or_else(|| corrupt("the pointer names an empty chain".into()))?;
        Ok(Some(Snapshot {
            sequences,
            state,
            changes: states.collect(),
        }))
    }

    /// Stores raw bytes as `key`'s record, bypassing the format (tests of corruption use it).
    pub fn put_raw(&self, key: &str, bytes: &[u8]) -> Result<(), ChassisError> {
        self.commit(key, &[bytes], Part::Whole)
    }

    fn file_error(&self, file: &Path, e: std::io::Error) -> ChassisError {
        ChassisError::SnapshotStore {
            path: file.to_path_buf(),
            message: e.to_string(),
        }
    }

    fn store_error(&self, e: sled::Error) -> ChassisError {
        ChassisError::SnapshotStore {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// The record's header for `payload`, which follows it unchanged (so a large
/// state is never copied to be framed).
fn encode_header(sequences: &[u64], payload: &[u8]) -> Option<Vec<u8>> {
    let count = u16::try_from(sequences.len()).ok()?;
    let mut out = Vec::with_capacity(header_len(sequences.len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for seq in sequences {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = checksum(&out[4..], payload);
    out.extend_from_slice(&crc.to_le_bytes());
    Some(out)
}

fn decode_pointer(value: &[u8]) -> Result<Chain, String> {
    if value.len() == 20 && &value[..4] == CHAIN_MAGIC {
        let (first, last) = (le_u64(&value[4..]), le_u64(&value[12..]));
        if first == 0 || first > last {
            return Err(format!("pointer names generations {first} to {last}"));
        }
        return Ok(Chain { first, last });
    }
    if value.len() == 12 && &value[..4] == POINTER_MAGIC {
        let generation = le_u64(&value[4..]);
        return Ok(Chain {
            first: generation,
            last: generation,
        });
    }
    if value.starts_with(MAGIC) {
        return Err(
            "an inline snapshot from an earlier millrace; remove the data directory to start fresh"
                .into(),
        );
    }
    Err(format!(
        "not a snapshot pointer ({} bytes, bad magic)",
        value.len()
    ))
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn decode_record(record: &[u8]) -> Result<(Vec<u64>, &[u8]), String> {
    if record.len() < PREFIX_LEN {
        return Err(format!(
            "record is {} bytes, shorter than any header",
            record.len()
        ));
    }
    if &record[0..4] != MAGIC {
        return Err("not a millrace snapshot (bad magic)".into());
    }
    let version = u16::from_le_bytes([record[4], record[5]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    let count = usize::from(u16::from_le_bytes([record[6], record[7]]));
    let header = header_len(count);
    if record.len() < header {
        return Err(format!(
            "record is {} bytes, shorter than its {header}-byte header",
            record.len()
        ));
    }
    let (head, payload) = record.split_at(header);
    let sequences = (0..count)
        .map(|i| le_u64(&head[PREFIX_LEN + 8 * i..]))
        .collect();
    let len_at = PREFIX_LEN + 8 * count;
    let len = le_u64(&head[len_at..]);
    if len != payload.len() as u64 {
        return Err(format!(
            "payload is {} bytes, header says {len}",
            payload.len()
        ));
    }
    let crc_at = len_at + 8;
    let stored = u32::from_le_bytes([
        head[crc_at],
        head[crc_at + 1],
        head[crc_at + 2],
        head[crc_at + 3],
    ]);
    let actual = checksum(&head[4..crc_at], payload);
    if stored != actual {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok((sequences, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn store() -> (tempfile::TempDir, SnapshotStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[test]
    fn open_waits_for_a_lock_this_process_is_about_to_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let held = open_sled(&path).expect("first open");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        open_sled(&path).expect("the second open waits for the first handle to go");
        release.join().expect("release thread");
    }

    #[test]
    fn state_and_sequence_round_trip_and_survive_reopen() {
        let (dir, s) = store();
        let state: BTreeMap<String, u64> = [("EWR".to_string(), 3), ("JFK".to_string(), 7)].into();
        s.save("counts", &[42, 7], &state).expect("save");
        drop(s);
        let s = SnapshotStore::open(dir.path()).expect("reopen");
        let snap = s
            .load::<BTreeMap<String, u64>>("counts")
            .expect("load")
            .expect("present");
        assert_eq!(
            snap,
            Snapshot {
                sequences: vec![42, 7],
                state,
                changes: vec![]
            }
        );
        assert!(s.load::<u64>("absent").expect("load").is_none());
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots").join("states"))
            .expect("states dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn each_key_keeps_one_file_and_stale_ones_go_at_open() {
        let (dir, s) = store();
        for n in 0..5u64 {
            s.save("monitor", &[n], &n).expect("save");
        }
        s.save("a/b", &[1], &1u64).expect("save");
        assert_eq!(files(dir.path()), ["a%2fb.1", "monitor.5"]);

        // What a crash can leave: a half-written file and a committed-too-late one.
        let states = dir.path().join("snapshots").join("states");
        std::fs::write(states.join("monitor.6.tmp"), b"half").expect("write");
        std::fs::write(states.join("monitor.6"), b"never committed").expect("write");
        drop(s);
        let s = SnapshotStore::open(dir.path()).expect("reopen");
        assert_eq!(files(dir.path()), ["a%2fb.1", "monitor.5"]);
        let snap = s.load::<u64>("monitor").expect("load").expect("present");
        assert_eq!((snap.sequences, snap.state), (vec![4], 4));
        s.save("monitor", &[5], &5u64).expect("save after reopen");
        assert_eq!(files(dir.path()), ["a%2fb.1", "monitor.6"]);
    }

    #[test]
    fn changes_extend_the_chain_and_a_whole_state_retires_it() {
        let (dir, s) = store();
        let changes = |s: &SnapshotStore, seq: u64, n: u64| {
            s.write(&Encoded::new("fs", &[seq], &n, Part::Changes).expect("encode"))
                .expect("write changes")
        };
        let err = s
            .write(&Encoded::new("fs", &[1], &1u64, Part::Changes).expect("encode"))
            .expect_err("no whole state yet")
            .to_string();
        assert!(err.contains("no whole state"), "{err}");

        s.save("fs", &[10], &100u64).expect("save");
        changes(&s, 11, 1);
        changes(&s, 15, 2);
        assert_eq!(files(dir.path()), ["fs.1", "fs.2", "fs.3"]);
        drop(s);
        let s = SnapshotStore::open(dir.path()).expect("reopen keeps the chain");
        assert_eq!(
            s.load::<u64>("fs").expect("load").expect("present"),
            Snapshot {
                sequences: vec![15],
                state: 100,
                changes: vec![1, 2]
            }
        );

        s.save("fs", &[20], &200u64).expect("save");
        assert_eq!(files(dir.path()), ["fs.4"]);
        changes(&s, 21, 3);
        let snap = s.load::<u64>("fs").expect("load").expect("present");
        assert_eq!(
            (snap.sequences, snap.state, snap.changes),
            (vec![21], 200, vec![3])
        );
    }

    #[test]
    fn a_missing_link_of_the_chain_is_an_error_naming_its_file() {
        let (dir, s) = store();
        s.save("fs", &[1], &1u64).expect("save");
        s.write(&Encoded::new("fs", &[2], &2u64, Part::Changes).expect("encode"))
            .expect("changes");
        std::fs::remove_file(dir.path().join("snapshots/states/fs.2")).expect("rm");
        let err = s.load::<u64>("fs").expect_err("missing").to_string();
        assert!(err.contains("fs.2"), "{err}");
    }

    #[test]
    fn a_pointer_of_an_earlier_millrace_still_loads() {
        let (dir, s) = store();
        s.save("old", &[4], &4u64).expect("save");
        let mut pointer = POINTER_MAGIC.to_vec();
        pointer.extend_from_slice(&1u64.to_le_bytes());
        s.db.insert("old", pointer).expect("insert");
        let snap = s.load::<u64>("old").expect("load").expect("present");
        assert_eq!((snap.sequences, snap.state), (vec![4], 4));
        s.save("old", &[5], &5u64).expect("save over it");
        assert_eq!(files(dir.path()), ["old.2"]);
    }

    #[test]
    fn a_missing_state_file_is_an_error_naming_the_snapshot() {
        let (dir, s) = store();
        s.save("feature-state", &[3], &3u64).expect("save");
        std::fs::remove_file(dir.path().join("snapshots/states/feature-state.1")).expect("rm");
        let err = s
            .load::<u64>("feature-state")
            .expect_err("missing")
            .to_string();
        assert!(err.contains("feature-state"), "{err}");
        assert!(err.contains("state file"), "{err}");
    }

    #[test]
    fn corrupt_records_are_refused_with_the_reason() {
        let payload = postcard::to_stdvec(&7u64).expect("encode");
        let mut good = encode_header(&[9], &payload).expect("header");
        good.extend_from_slice(&payload);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let cases: [(&str, Vec<u8>, &str); 5] = [
            (
                "truncated_header",
                good[..10].to_vec(),
                "shorter than its 28-byte header",
            ),
            (
                "truncated_payload",
                good[..good.len() - 1].to_vec(),
                "payload is",
            ),
            ("flipped_payload_bit", flipped, "checksum mismatch"),
            ("unknown_format_version", bad_version, "format version 9"),
            ("not_a_snapshot", bad_magic, "bad magic"),
        ];
        let (_dir, s) = store();
        for (name, bytes, expected) in cases {
            s.put_raw(name, &bytes).expect("put");
            let err = s.load::<u64>(name).expect_err(name).to_string();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(
                err.contains(name),
                "{name}: error names the snapshot: {err}"
            );
        }
    }
}
