//! The output of `vswitch run -d`, kept per container in the daemon's
//! state directory: `STATE_DIR/containers/ID/output.log`, which moves to
//! `output.log.1` (replacing the one before) when it reaches
//! [`MAX_FILE_BYTES`], so a container's output takes at most twice that.
//! stdout and stderr go to the same file, in the order they were written.
//! `exitcode` in the same directory holds the command's exit code once it
//! ended, for a daemon that was not there to be told.
//!
//! The supervisor of the container writes ([`RotatingLog`],
//! [`write_exit_code`]); vswitchd reads ([`LogCursor`], [`read_exit_code`])
//! for `vswitch logs` and after a restart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest a log file grows before it is rotated.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The live log.
pub const LOG_FILE: &str = "output.log";
/// The log before the last rotation.
pub const ROTATED_FILE: &str = "output.log.1";
/// The exit code, as decimal digits.
pub const EXIT_FILE: &str = "exitcode";

/// `STATE_DIR/containers/ID`.
pub fn dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("containers").join(id)
}

/// Makes a container's log directory (mode 0700: the output may be
/// private).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The writer's side: appends to `output.log`, rotating it to
/// `output.log.1` whenever the next byte would take it past the bound.
#[derive(Debug)]
pub struct RotatingLog {
    dir: PathBuf,
    file: File,
    len: u64,
    max: u64,
}

impl RotatingLog {
    /// Opens (or creates) the live log in `dir`, each file at most `max`
    /// bytes.
    pub fn open(dir: &Path, max: u64) -> io::Result<RotatingLog> {
        let file = Self::open_live(dir, false)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            dir: dir.to_owned(),
            file,
            len,
            max: max.max(1),
        })
    }

    fn open_live(dir: &Path, truncate: bool) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(!truncate)
            .write(true)
            .truncate(truncate)
            .mode(0o600)
            .open(dir.join(LOG_FILE))
    }

    /// Writes all of `buf`, rotating as often as it takes.
    pub fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.len >= self.max {
                self.rotate()?;
            }
            let room = usize::try_from(self.max - self.len).unwrap_or(usize::MAX);
            let n = room.min(buf.len());
            self.file.write_all(&buf[..n])?;
            self.len += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(self.dir.join(LOG_FILE), self.dir.join(ROTATED_FILE))?;
        self.file = Self::open_live(&self.dir, true)?;
        self.len = 0;
        Ok(())
    }
}

/// The reader's side: the rotated file (if any), then the live one, and,
/// when the writer rotates while it reads, on into the new live file
/// after the end of the old one. Bytes are lost only when the writer
/// rotates twice between two reads.
#[derive(Debug)]
pub struct LogCursor {
    dir: PathBuf,
    file: Option<File>,
    /// The inode of `file`.
    ino: u64,
}

impl LogCursor {
    /// From the oldest byte kept.
    pub fn open(dir: &Path) -> io::Result<LogCursor> {
        let mut c = LogCursor {
            dir: dir.to_owned(),
            file: None,
            ino: 0,
        };
        match File::open(dir.join(ROTATED_FILE)) {
            Ok(f) => {
                c.ino = f.metadata()?.ino();
                c.file = Some(f);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(c)
    }

    /// Reads what follows; 0 at the end of what is written so far.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(f) = self.file.as_mut() {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
            }
            let live = self.dir.join(LOG_FILE);
            let ino = match fs::metadata(&live) {
                Ok(m) => m.ino(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            if ino == self.ino && self.file.is_some() {
                return Ok(0);
            }
            // The file read so far is not the live one (any more): what
            // the writer added to it before moving on is read first.
            if let Some(f) = self.file.as_mut() {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
            }
            let f = match File::open(&live) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            self.ino = f.metadata()?.ino();
            self.file = Some(f);
        }
    }
}

/// Writes the exit code, whole or not at all (a temporary file renamed).
pub fn write_exit_code(dir: &Path, code: i32) -> io::Result<()> {
    let tmp = dir.join(format!("{EXIT_FILE}.tmp"));
    fs::write(&tmp, format!("{code}\n"))?;
    fs::rename(&tmp, dir.join(EXIT_FILE))
}

/// The exit code a supervisor wrote, if it wrote one.
pub fn read_exit_code(dir: &Path) -> Option<i32> {
    fs::read_to_string(dir.join(EXIT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|c| (0..=255).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vswitch-log-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        create_dir(&d).unwrap();
        d
    }

    fn read_all(c: &mut LogCursor) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn keeps_at_most_two_files_of_the_bound_and_the_newest_bytes() {
        let d = tmpdir("bound");
        let mut log = RotatingLog::open(&d, 100).unwrap();
        let input: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for chunk in input.chunks(33) {
            log.write_all(chunk).unwrap();
        }
        let live = fs::metadata(d.join(LOG_FILE)).unwrap().len();
        let old = fs::metadata(d.join(ROTATED_FILE)).unwrap().len();
        assert_eq!((old, live), (100, 100));
        let kept = read_all(&mut LogCursor::open(&d).unwrap());
        assert_eq!(kept, &input[800..]);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn appends_after_a_reopen() {
        let d = tmpdir("reopen");
        RotatingLog::open(&d, 10)
            .unwrap()
            .write_all(b"abcdef")
            .unwrap();
        RotatingLog::open(&d, 10)
            .unwrap()
            .write_all(b"ghijkl")
            .unwrap();
        assert_eq!(fs::read(d.join(ROTATED_FILE)).unwrap(), b"abcdefghij");
        assert_eq!(fs::read(d.join(LOG_FILE)).unwrap(), b"kl");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_reader_follows_the_writer_across_a_rotation() {
        let d = tmpdir("follow");
        let mut c = LogCursor::open(&d).unwrap();
        assert!(read_all(&mut c).is_empty(), "nothing written yet");
        let mut log = RotatingLog::open(&d, 10).unwrap();
        log.write_all(b"0123456").unwrap();
        assert_eq!(read_all(&mut c), b"0123456");
        // Three more bytes fill the file, the rest goes to a new one.
        log.write_all(b"789abcdef").unwrap();
        assert_eq!(read_all(&mut c), b"789abcdef");
        log.write_all(b"g").unwrap();
        assert_eq!(read_all(&mut c), b"g");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn exit_codes_round_trip_and_junk_is_none() {
        let d = tmpdir("exit");
        assert_eq!(read_exit_code(&d), None);
        write_exit_code(&d, 3).unwrap();
        assert_eq!(read_exit_code(&d), Some(3));
        fs::write(d.join(EXIT_FILE), "banana").unwrap();
        assert_eq!(read_exit_code(&d), None);
        fs::write(d.join(EXIT_FILE), "999").unwrap();
        assert_eq!(read_exit_code(&d), None);
        fs::remove_dir_all(d).unwrap();
    }
}
