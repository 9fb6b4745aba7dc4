//! Sealed buses (pure): PGM has no CURVE, so a bus with a `key_file` seals every message with
//! XChaCha20-Poly1305 under a 32-byte key shared out of band.
//!
//! A sealed message is two frames, `[topic][nonce 24][ciphertext][tag 16]`:
//! - the first frame (the topic: `"<stream> <LEVEL>"`, a cache key, a tick name) stays in clear
//!   so subscribers keep filtering by prefix on the group, and is the associated data, so a
//!   topic swapped onto another message's seal fails to open;
//! - the nonce is 24 random bytes per message (XChaCha's nonce is long enough for that);
//! - the plaintext is the message's other frames, each `[length u32 BE][bytes]`.
//!
//! The key file is text: 64 hex digits on one line, `#` comment lines allowed, mode 0600.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{AeadCore, AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

/// Bytes of a bus key.
pub const KEY_LEN: usize = 32;
/// Bytes of the random nonce that starts a sealed frame.
pub const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag that ends a sealed frame.
pub const TAG_LEN: usize = 16;

/// Why a bus key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The text is not one 64-hex-digit key.
    #[error(
        "{path}: {why} (a bus key is 64 hex digits: 32 random bytes, as `depot bus keygen` writes)"
    )]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// Why a message on a sealed bus was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not `[topic][sealed]` (a message from a sender without the key, most likely).
    #[error("{0} frames where a sealed message has 2")]
    Frames(usize),
    /// The sealed frame cannot even hold a nonce and a tag.
    #[error("sealed frame of {0} bytes is too short")]
    Short(usize),
    /// Authentication failed: another key, an altered ciphertext or topic, a forgery.
    #[error("does not open with the bus key (other key, altered or forged)")]
    Seal,
    /// Opened, but the frames inside do not add up (a sender with the key and a bug).
    #[error("opened, but the frames inside are malformed")]
    Inner,
}

/// A bus's symmetric key, ready to seal and open.
#[derive(Clone)]
pub struct BusKey {
    cipher: XChaCha20Poly1305,
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(hidden)")
    }
}

impl BusKey {
    /// The key made of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> BusKey {
        BusKey {
            cipher: XChaCha20Poly1305::new(&bytes.into()),
            bytes,
        }
    }

    /// A fresh key from the OS's random source.
    pub fn generate() -> BusKey {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        BusKey::from_bytes(key.into())
    }

    /// Parses a key file's text; `path` names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<BusKey, KeyFileError> {
        let invalid = |why: String| KeyFileError::Invalid {
            path: path.to_string(),
            why,
        };
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let hex = lines.next().ok_or_else(|| invalid("no key in it".into()))?;
        if lines.next().is_some() {
            return Err(invalid("more than one key line".into()));
        }
        if hex.len() != 2 * KEY_LEN {
            return Err(invalid(format!("{} characters", hex.len())));
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("?"), 16)
                .map_err(|_| invalid("not hexadecimal".into()))?;
        }
        Ok(BusKey::from_bytes(bytes))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<BusKey, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: shown.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map(|m| m.permissions().mode());
            if mode.is_ok_and(|mode| mode & 0o077 != 0) {
                tracing::warn!(file = %shown, "a bus key file is readable by others; chmod 600 it");
            }
        }
        BusKey::parse(&text, &shown)
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("# Depot multicast bus key (XChaCha20-Poly1305): share it only with the bus's members.\n{hex}\n")
    }

    /// Writes the key to a new file of mode 0600 (an existing file is never overwritten).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(self.to_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)
    }

    /// Seals `rest` (a message's frames after the topic) under `topic`: the second frame of
    /// the sealed message.
    pub fn seal<F: std::ops::Deref<Target = [u8]>>(&self, topic: &[u8], rest: &[F]) -> Vec<u8> {
        let plain: usize = rest.iter().map(|f| 4 + f.len()).sum();
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain + TAG_LEN);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        sealed.extend_from_slice(&nonce);
        for frame in rest {
            // A frame of 4 GiB or more cannot travel on a bus (libzmq's PGM and our limits).
            sealed.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            sealed.extend_from_slice(frame);
        }
        // Encryption in place only fails for plaintexts beyond XChaCha's 256 GiB.
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce, topic, &mut sealed[NONCE_LEN..])
            .unwrap_or_default();
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// Opens a sealed message `[topic][sealed]`: the frames after the topic.
    pub fn open<F: std::ops::Deref<Target = [u8]>>(
        &self,
        frames: &[F],
    ) -> Result<Vec<Vec<u8>>, OpenError> {
        let [topic, sealed] = frames else {
            return Err(OpenError::Frames(frames.len()));
        };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Short(sealed.len()));
        }
        let nonce = XNonce::from_slice(&sealed[..NONCE_LEN]);
        let tag_at = sealed.len() - TAG_LEN;
        let tag = Tag::from_slice(&sealed[tag_at..]);
        let mut plain = sealed[NONCE_LEN..tag_at].to_vec();
        self.cipher
            .decrypt_in_place_detached(nonce, topic, &mut plain, tag)
            .map_err(|_| OpenError::Seal)?;
        split_frames(&plain).ok_or(OpenError::Inner)
    }
}

/// The frames of an opened plaintext: `[length u32 BE][bytes]` each.
fn split_frames(mut plain: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    while !plain.is_empty() {
        let len = u32::from_be_bytes(plain.get(..4)?.try_into().ok()?) as usize;
        frames.push(plain.get(4..4 + len)?.to_vec());
        plain = &plain[4 + len..];
    }
    Some(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Vec<Vec<u8>> {
        vec![
            b"app.web INFO".to_vec(),
            b"header bytes".to_vec(),
            Vec::new(),
            b"body".to_vec(),
        ]
    }

    fn sealed(key: &BusKey, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        vec![frames[0].clone(), key.seal(&frames[0], &frames[1..])]
    }

    #[test]
    fn a_sealed_message_opens_to_its_frames() {
        let key = BusKey::generate();
        let message = record();
        let wire = sealed(&key, &message);
        assert_eq!(wire[0], message[0], "the topic stays in clear");
        assert_eq!(wire[1].len(), NONCE_LEN + 4 * 3 + 12 + 4 + TAG_LEN);
        assert!(!wire[1].windows(4).any(|w| w == b"body"), "body in clear");
        assert_eq!(key.open(&wire).unwrap(), message[1..].to_vec());
        // A topic alone seals to an empty plaintext.
        let lone = sealed(&key, &message[..1]);
        assert_eq!(key.open(&lone).unwrap(), Vec::<Vec<u8>>::new());
        // Two seals of one message differ: the nonce is new each time.
        assert_ne!(sealed(&key, &message)[1], wire[1]);
    }

    #[test]
    fn tampering_another_key_and_truncation_are_refused() {
        let key = BusKey::generate();
        let wire = sealed(&key, &record());
        for at in [0, NONCE_LEN, NONCE_LEN + 5, wire[1].len() - 1] {
            let mut altered = wire.clone();
            altered[1][at] ^= 1;
            assert_eq!(key.open(&altered), Err(OpenError::Seal), "byte {at}");
        }
        let mut swapped = wire.clone();
        swapped[0] = b"app.db INFO".to_vec();
        assert_eq!(key.open(&swapped), Err(OpenError::Seal));
        assert_eq!(BusKey::generate().open(&wire), Err(OpenError::Seal));
        let mut cut = wire.clone();
        cut[1].truncate(wire[1].len() - 1);
        assert_eq!(key.open(&cut), Err(OpenError::Seal));
        cut[1].truncate(NONCE_LEN + TAG_LEN - 1);
        assert_eq!(key.open(&cut), Err(OpenError::Short(39)));
        assert_eq!(key.open(&wire[1..]), Err(OpenError::Frames(1)));
        assert_eq!(key.open(&record()), Err(OpenError::Frames(4)));
    }

    #[test]
    fn inner_frames_that_do_not_add_up_are_malformed() {
        assert_eq!(
            split_frames(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]),
            Some(vec![b"ab".to_vec(), Vec::new()])
        );
        assert_eq!(split_frames(&[0, 0, 0, 3, b'a']), None);
        assert_eq!(split_frames(&[0, 0]), None);
    }

    #[test]
    fn key_files_are_64_hex_digits_with_comments() {
        let key = BusKey::generate();
        let text = key.to_text();
        let again = BusKey::parse(&text, "k").unwrap();
        assert_eq!(again.bytes, key.bytes);
        let hex = "ab".repeat(32);
        assert_eq!(
            BusKey::parse(&format!("  {hex}  \n\n"), "k").unwrap().bytes,
            [0xab; 32]
        );
        for (text, why) in [
            ("", "no key"),
            ("# only a comment\n", "no key"),
            (&"ab".repeat(31)[..], "62 characters"),
            (&"zz".repeat(32)[..], "not hexadecimal"),
            (&format!("{hex}\n{hex}\n")[..], "more than one"),
        ] {
            let err = BusKey::parse(text, "bus.key").unwrap_err().to_string();
            assert!(err.contains("bus.key") && err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_written_key_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("depot-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bus.key");
        let _ = std::fs::remove_file(&path);
        let key = BusKey::generate();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(BusKey::load(&path).unwrap().bytes, key.bytes);
        assert!(BusKey::generate().write_new(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
