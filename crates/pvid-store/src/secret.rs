//! The secret store holds private keys at `preview/<id>/<svc>/private-key` (DESIGN.md).
//!
//! [`LocalSecretStore`] is the embedded default: one file per secret under `$PVID_HOME/secrets`
//! (folders 0700, files 0600), sealed with AES-256-GCM under a 32-byte master key that lives in a
//! 0600 file and is created on first use. The secret's path is the AEAD's associated data, so a
//! sealed file copied to another path does not open.

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use pvid_core::key::random_bytes;
use pvid_core::{Algorithm, PreviewId, ServiceName, SigningKey};
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

use crate::error::StoreError;

const SEALED_MAGIC: &[u8] = b"pvid-sealed-v1\n";

/// Which private key of a service a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySlot {
    /// `private-key`: the key the service signs with.
    Current,
    /// `next-private-key`: the new key of a rotation, published but not yet used to sign.
    Next,
    /// `shared/private-key`: the one key of every `mode: shared` preview, outside any preview
    /// (see [`SecretPath::shared`]).
    Shared,
}

impl KeySlot {
    /// The slots of a service, current first.
    pub const ALL: [KeySlot; 2] = [KeySlot::Current, KeySlot::Next];

    /// The last path segment.
    pub fn leaf(self) -> &'static str {
        match self {
            KeySlot::Current | KeySlot::Shared => "private-key",
            KeySlot::Next => "next-private-key",
        }
    }
}

/// A secret's path: `preview/<id>/<svc>/private-key` (or `next-private-key` during a rotation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath {
    /// The preview.
    pub preview: PreviewId,
    /// The service.
    pub service: ServiceName,
    /// Which of its keys.
    pub slot: KeySlot,
}

impl SecretPath {
    /// The private key path of a service.
    pub fn private_key(preview: &PreviewId, service: &ServiceName) -> SecretPath {
        SecretPath { preview: preview.clone(), service: service.clone(), slot: KeySlot::Current }
    }

    /// Where a rotation keeps the new private key until signing switches to it.
    pub fn next_private_key(preview: &PreviewId, service: &ServiceName) -> SecretPath {
        SecretPath { slot: KeySlot::Next, ..SecretPath::private_key(preview, service) }
    }

    /// `shared/private-key`: the key every service of every `mode: shared` preview signs with.
    /// It belongs to no preview (its `preview` and `service` are placeholders), so no teardown
    /// deletes it; the orphan audit reports it once no shared-mode preview is active.
    pub fn shared() -> SecretPath {
        // Both are DNS labels, so the parses cannot fail.
        let preview = "shared".parse().unwrap_or_else(|_| unreachable!());
        let service = "all".parse().unwrap_or_else(|_| unreachable!());
        SecretPath { preview, service, slot: KeySlot::Shared }
    }

    /// Parses `preview/<id>/<svc>/private-key` (or `next-private-key`), or `shared/private-key`.
    pub fn parse(s: &str) -> Result<SecretPath, StoreError> {
        if s == "shared/private-key" {
            return Ok(SecretPath::shared());
        }
        let bad = || StoreError::BadPath(s.to_owned());
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["preview", p, svc, leaf] => Ok(SecretPath {
                preview: p.parse().map_err(|_| bad())?,
                service: svc.parse().map_err(|_| bad())?,
                slot: KeySlot::ALL.into_iter().find(|k| k.leaf() == *leaf).ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.slot {
            KeySlot::Shared => f.write_str("shared/private-key"),
            _ => write!(f, "preview/{}/{}/{}", self.preview, self.service, self.slot.leaf()),
        }
    }
}

/// The document stored at a private-key path.
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// PKCS#8 DER bytes.
    pub pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredKey({} {}, private ***)", self.alg, self.kid)
    }
}

impl StoredKey {
    /// The stored form of a signing key.
    pub fn from_signing_key(key: &SigningKey) -> StoredKey {
        StoredKey { kid: key.kid().to_owned(), alg: key.algorithm(), pkcs8: Zeroizing::new(key.pkcs8().to_vec()) }
    }

    /// Serialises to the bytes the store keeps (JSON; the PKCS#8 as base64).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.pkcs8[..]));
        let doc = Zeroizing::new(format!(
            "{{\"kid\":{},\"alg\":\"{}\",\"pkcs8\":\"{}\"}}",
            serde_json::Value::String(self.kid.clone()),
            self.alg,
            b64.as_str()
        ));
        Zeroizing::new(doc.as_bytes().to_vec())
    }

    /// Parses stored bytes. The private key is read in place (borrowed from `bytes`, which the
    /// store hands out zeroising) and decoded straight into a zeroising buffer, so no copy of it
    /// is left behind in freed memory.
    pub fn from_bytes(path: &SecretPath, bytes: &[u8]) -> Result<StoredKey, StoreError> {
        /// The stored document; `pkcs8` borrows from the input (base64 never needs unescaping).
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc<'a> {
            kid: String,
            alg: String,
            #[serde(borrow)]
            pkcs8: &'a str,
        }
        let bad = || StoreError::BadSecret { path: path.to_string() };
        let doc: Doc<'_> = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let alg: Algorithm = doc.alg.parse().map_err(|_| bad())?;
        let mut pkcs8 = Zeroizing::new(Vec::with_capacity(doc.pkcs8.len() / 4 * 3 + 3));
        base64::engine::general_purpose::STANDARD.decode_vec(doc.pkcs8, &mut pkcs8).map_err(|_| bad())?;
        Ok(StoredKey { kid: doc.kid, alg, pkcs8 })
    }

    /// The signing key.
    pub fn to_signing_key(&self, path: &SecretPath) -> Result<SigningKey, StoreError> {
        SigningKey::from_pkcs8(self.alg, self.kid.clone(), self.pkcs8.clone())
            .map_err(|_| StoreError::BadSecret { path: path.to_string() })
    }
}

/// Where private keys live. Every operation is idempotent: putting the same value again,
/// deleting what is already gone.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// A short name for messages (`local`, `openbao`).
    fn kind(&self) -> &'static str;
    /// Writes a secret, replacing any previous value.
    async fn put(&self, path: &SecretPath, value: &[u8]) -> Result<(), StoreError>;
    /// Reads a secret, or `None` when there is none.
    async fn get(&self, path: &SecretPath) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
    /// Deletes a secret (all versions); `Ok` when it did not exist.
    async fn delete(&self, path: &SecretPath) -> Result<(), StoreError>;
    /// Lists every secret under `preview/`.
    async fn list(&self) -> Result<Vec<SecretPath>, StoreError>;

    /// Lists the secrets of one preview (`preview/<id>/`). Teardown asks this several times;
    /// stores override it so its cost does not grow with the number of previews stored.
    async fn list_preview(&self, preview: &PreviewId) -> Result<Vec<SecretPath>, StoreError> {
        Ok(self.list().await?.into_iter().filter(|p| &p.preview == preview).collect())
    }

    /// Writes a private key with metadata about it. Stores that keep metadata (OpenBao KV v2
    /// custom metadata) record it; the others store the value alone.
    async fn put_key(&self, path: &SecretPath, value: &[u8], meta: &SecretMeta<'_>) -> Result<(), StoreError> {
        let _ = meta;
        self.put(path, value).await
    }

    /// Where the store is, for messages (`/home/.pvid/secrets`, `http://127.0.0.1:8200`).
    fn location(&self) -> String {
        self.kind().to_owned()
    }

    /// Transit custody (keys that sign inside the store), when the store offers it.
    fn transit(&self) -> Option<&dyn crate::transit::TransitKeys> {
        None
    }
}

/// What a secret store may record beside a private key (never secret itself).
#[derive(Clone, Copy, Debug)]
pub struct SecretMeta<'a> {
    /// The key id.
    pub kid: &'a str,
    /// When the key was made, Unix seconds.
    pub created_at: i64,
}

/// The embedded secret store.
pub struct LocalSecretStore {
    root: PathBuf,
    key: LessSafeKey,
}

impl fmt::Debug for LocalSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalSecretStore({}, master key ***)", self.root.display())
    }
}

impl LocalSecretStore {
    /// Opens the store under `home` (`home/secrets`, master key `home/master.key`), creating the
    /// folder and the master key on first use. Refuses a master key readable by group or others.
    pub fn open(home: &Path) -> Result<LocalSecretStore, StoreError> {
        let root = home.join("secrets");
        make_private_dir(home)?;
        make_private_dir(&root)?;
        let key_path = home.join("master.key");
        let bytes = match fs::metadata(&key_path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(StoreError::MasterKeyMode { path: key_path, mode });
                }
                Zeroizing::new(fs::read(&key_path).map_err(|source| StoreError::SecretIo {
                    operation: "read master key",
                    path: key_path.clone(),
                    source,
                })?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if holds_sealed_files(&root) {
                    return Err(StoreError::MasterKeyMissing { path: key_path, secrets: root });
                }
                create_master_key(&key_path)?
            }
            Err(source) => return Err(StoreError::SecretIo { operation: "stat master key", path: key_path, source }),
        };
        if bytes.len() != 32 {
            return Err(StoreError::MasterKeyInvalid { path: key_path });
        }
        remove_stale_master_key_copies(home);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| StoreError::MasterKeyInvalid {
            path: key_path.clone(),
        })?);
        Ok(LocalSecretStore { root, key })
    }

    /// Appends the secrets found in one preview's folder `pdir` to `out`.
    fn list_services(&self, preview: &str, pdir: &Path, out: &mut Vec<SecretPath>) -> Result<(), StoreError> {
        let entries = match fs::read_dir(pdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::SecretIo { operation: "list", path: pdir.to_owned(), source }),
        };
        for e in entries.filter_map(Result::ok) {
            let sdir = e.path();
            let service = e.file_name().to_string_lossy().into_owned();
            for slot in KeySlot::ALL {
                // A `.tmp` alone is a write killed before its rename: sealed key material all the
                // same, so it is listed (and found by the orphan audit, removed by `delete`).
                let leaf = slot.leaf();
                if sdir.join(format!("{leaf}.sealed")).exists() || sdir.join(format!("{leaf}.tmp")).exists() {
                    out.push(SecretPath::parse(&format!("preview/{preview}/{service}/{leaf}"))?);
                }
            }
        }
        Ok(())
    }

    fn file(&self, path: &SecretPath) -> PathBuf {
        if path.slot == KeySlot::Shared {
            return self.root.join("shared").join("private-key.sealed");
        }
        self.root.join("preview").join(path.preview.as_str()).join(path.service.as_str()).join(format!("{}.sealed", path.slot.leaf()))
    }

    fn seal(&self, path: &SecretPath, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce_bytes = random_bytes(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&nonce_bytes).map_err(|_| StoreError::Seal)?;
        // Room for the tag up front: appending it must not move (and leave behind) the buffer,
        // which holds the plaintext until it is encrypted in place.
        let mut buf = Zeroizing::new(Vec::with_capacity(value.len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(value);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(path.to_string().as_bytes()), &mut *buf)
            .map_err(|_| StoreError::Seal)?;
        let mut out = SEALED_MAGIC.to_vec();
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    fn unseal(&self, path: &SecretPath, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let bad = || StoreError::Unseal { path: path.to_string() };
        let rest = sealed.strip_prefix(SEALED_MAGIC).ok_or_else(bad)?;
        if rest.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(path.to_string().as_bytes()), &mut buf)
            .map_err(|_| bad())?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[async_trait]
impl SecretStore for LocalSecretStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, path: &SecretPath, value: &[u8]) -> Result<(), StoreError> {
        let file = self.file(path);
        let sealed = self.seal(path, value)?;
        if let Some(dir) = file.parent() {
            make_private_dirs(&self.root, dir)?;
        }
        // Write to a temporary name and rename, so a crash leaves the old value or the new one.
        let tmp = file.with_extension("tmp");
        let io = |operation, source| StoreError::SecretIo { operation, path: file.clone(), source };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        f.write_all(&sealed).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        fs::rename(&tmp, &file).map_err(|e| io("rename", e))?;
        sync_dir(&file);
        Ok(())
    }

    async fn get(&self, path: &SecretPath) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let file = self.file(path);
        match fs::read(&file) {
            Ok(sealed) => self.unseal(path, &sealed).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::SecretIo { operation: "read", path: file, source }),
        }
    }

    async fn delete(&self, path: &SecretPath) -> Result<(), StoreError> {
        let file = self.file(path);
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::SecretIo { operation: "delete", path: file, source }),
        }
        let _ = fs::remove_file(file.with_extension("tmp"));
        // Remove the service and preview folders once empty (errors mean "not empty").
        if path.slot == KeySlot::Shared {
            let _ = fs::remove_dir(self.root.join("shared"));
            return Ok(());
        }
        if let Some(svc_dir) = file.parent() {
            let _ = fs::remove_dir(svc_dir);
            if let Some(preview_dir) = svc_dir.parent() {
                let _ = fs::remove_dir(preview_dir);
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SecretPath>, StoreError> {
        let base = self.root.join("preview");
        let mut out = Vec::new();
        let read = |dir: &Path| -> Result<Vec<(String, PathBuf)>, StoreError> {
            match fs::read_dir(dir) {
                Ok(rd) => Ok(rd
                    .filter_map(Result::ok)
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(source) => Err(StoreError::SecretIo { operation: "list", path: dir.to_owned(), source }),
            }
        };
        for (preview, pdir) in read(&base)? {
            self.list_services(&preview, &pdir, &mut out)?;
        }
        out.sort();
        Ok(out)
    }

    async fn list_preview(&self, preview: &PreviewId) -> Result<Vec<SecretPath>, StoreError> {
        let mut out = Vec::new();
        self.list_services(preview.as_str(), &self.root.join("preview").join(preview.as_str()), &mut out)?;
        out.sort();
        Ok(out)
    }
}

/// Whether any sealed secret exists below `dir`.
fn holds_sealed_files(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else { return false };
    entries.filter_map(Result::ok).any(|e| {
        let p = e.path();
        if p.is_dir() { holds_sealed_files(&p) } else { p.extension().is_some_and(|x| x == "sealed") }
    })
}

/// Creates `dir` with mode 0700, or tightens an existing one to 0700 when group or others have
/// any access: every folder on the way to a key file is pvid's own (`PVID_HOME`, `secrets/...`).
fn make_private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |operation, source| StoreError::SecretIo { operation, path: dir.to_owned(), source };
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(dir).map_err(|e| io("stat folder", e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io("restrict folder", e))?;
            }
            Ok(())
        }
        Err(source) => Err(io("create folder", source)),
    }
}

/// Creates `dir` and its parents below `root`, each 0700.
fn make_private_dirs(root: &Path, dir: &Path) -> Result<(), StoreError> {
    let mut cur = root.to_path_buf();
    for part in dir.strip_prefix(root).unwrap_or(dir).components() {
        cur.push(part);
        make_private_dir(&cur)?;
    }
    Ok(())
}

/// Creates the master key atomically: written and synced under a unique temporary name, then
/// hard-linked into place. A crash at any instant leaves either no `master.key` (the next run
/// creates one) or a complete one, never an empty or partial file that would lock every secret
/// away; two processes racing cannot both win (the link fails when the name exists).
fn create_master_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let key = Zeroizing::new(random_bytes(32));
    let io = |operation, source| StoreError::SecretIo { operation, path: path.to_owned(), source };
    let suffix: String = random_bytes(8).iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("key.tmp-{suffix}"));
    let written = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            sync_dir(path);
            Ok(key)
        }
        // Another process created it first (or removed our temporary copy because it had).
        Err(_) if path.exists() => Ok(Zeroizing::new(fs::read(path).map_err(|e| io("read master key", e))?)),
        Err(e) => Err(io("create master key", e)),
    }
}

/// Removes the temporary copies a creation killed mid-way left next to the master key (each is
/// a key file: an unused key, or a second link to the real one). Called once the key exists.
fn remove_stale_master_key_copies(home: &Path) {
    let Ok(entries) = fs::read_dir(home) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("master.key.tmp-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Syncs the folder holding `path`, so a rename or link into it survives a power loss. Best
/// effort: the file itself was already synced.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, s: &str) -> SecretPath {
        SecretPath::private_key(&p.parse().unwrap(), &s.parse().unwrap())
    }

    #[tokio::test]
    async fn secrets_round_trip_and_are_sealed_at_rest() {
        let home = tempfile::tempdir().unwrap();
        let store = LocalSecretStore::open(home.path()).unwrap();
        let p = path("pr-1", "api");
        store.put(&p, b"very secret bytes").await.unwrap();
        assert_eq!(store.get(&p).await.unwrap().unwrap().as_slice(), b"very secret bytes");
        let on_disk = fs::read(store.file(&p)).unwrap();
        assert!(!on_disk.windows(6).any(|w| w == b"secret"), "plaintext on disk");
        assert_eq!(fs::metadata(store.file(&p)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(home.path().join("master.key")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(store.list().await.unwrap(), vec![p.clone()]);
        assert_eq!(store.list_preview(&"pr-1".parse().unwrap()).await.unwrap(), vec![p.clone()]);
        assert!(store.list_preview(&"pr-2".parse().unwrap()).await.unwrap().is_empty());
        store.delete(&p).await.unwrap();
        store.delete(&p).await.unwrap();
        assert!(store.get(&p).await.unwrap().is_none());
        assert!(store.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_write_killed_before_its_rename_is_listed_and_deleted() {
        // Found by the crash test: a `pvid up` killed between writing `private-key.tmp` and the
        // rename left sealed key material that teardown, the listing and the audit all missed.
        let home = tempfile::tempdir().unwrap();
        let store = LocalSecretStore::open(home.path()).unwrap();
        let p = path("pr-1", "api");
        store.put(&p, b"key").await.unwrap();
        fs::rename(store.file(&p), store.file(&p).with_extension("tmp")).unwrap();
        assert!(store.get(&p).await.unwrap().is_none(), "no complete value");
        assert_eq!(store.list().await.unwrap(), vec![p.clone()], "but listed");
        store.delete(&p).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert!(!store.file(&p).with_extension("tmp").exists());
    }

    #[tokio::test]
    async fn a_sealed_file_moved_to_another_path_does_not_open() {
        let home = tempfile::tempdir().unwrap();
        let store = LocalSecretStore::open(home.path()).unwrap();
        let (a, b) = (path("pr-1", "api"), path("pr-1", "worker"));
        store.put(&a, b"k").await.unwrap();
        store.put(&b, b"other").await.unwrap();
        fs::copy(store.file(&a), store.file(&b)).unwrap();
        assert!(matches!(store.get(&b).await, Err(StoreError::Unseal { .. })));
    }

    #[tokio::test]
    async fn refuses_to_invent_a_master_key_over_existing_secrets() {
        let home = tempfile::tempdir().unwrap();
        let store = LocalSecretStore::open(home.path()).unwrap();
        store.put(&path("pr-1", "api"), b"k").await.unwrap();
        fs::remove_file(home.path().join("master.key")).unwrap();
        let err = LocalSecretStore::open(home.path()).unwrap_err();
        assert!(matches!(err, StoreError::MasterKeyMissing { .. }), "{err}");
        assert!(!home.path().join("master.key").exists());
    }

    #[test]
    fn refuses_a_world_readable_master_key() {
        let home = tempfile::tempdir().unwrap();
        LocalSecretStore::open(home.path()).unwrap();
        let key = home.path().join("master.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalSecretStore::open(home.path()).unwrap_err();
        assert!(matches!(err, StoreError::MasterKeyMode { mode: 0o644, .. }), "{err}");
    }
}
