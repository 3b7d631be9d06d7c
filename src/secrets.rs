//! The secrets in force, and their live rotation (docs/security.md, "Rotating secrets").
//!
//! [`Secrets`] holds the current values behind one `RwLock<Arc<Current>>`: the upstream client
//! (the `Authorization` header), the webhook verifier, the viewer-token verifier and the admin
//! check each take [`Secrets::current`] once per request, so a request sees one consistent
//! set, and a reload swaps the `Arc` without disturbing anything already holding the old one
//! (requests in flight, cached answers and watch streams are untouched).
//!
//! The `*_FILE` settings are re-read when they change: [`Secrets::poll`] (every
//! `TASKGATE_SECRET_RELOAD_INTERVAL`, from [`Secrets::spawn_poller`]) compares each file's
//! (device, inode, mtime, length) *after following symlinks*, so Kubernetes' atomic swap of
//! the `..data` symlink is seen; [`Secrets::reload_all`] (SIGHUP) re-reads every file at once;
//! [`Secrets::api_key_refused`] (an upstream 401) re-reads the API key file, at most once
//! every [`KEY_REFUSED_RELOAD_EVERY`].
//!
//! A reload that fails (missing, empty, unreadable, bad PEM) keeps what is in force, logs one
//! error naming the setting (never the value) and counts
//! `taskgate_secret_reloads_total{setting,outcome="failed"}`; it never stops the process.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, Instant, SystemTime},
};

use http::HeaderValue;

use crate::{
    config::{self, Config},
    secret::{ApiKey, Secret},
    viewer::{self, PublicKey},
};

/// An upstream 401 re-reads the key file at most this often.
pub const KEY_REFUSED_RELOAD_EVERY: Duration = Duration::from_secs(5);
/// Larger secret files are refused (and reading stops there).
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// One consistent set of secrets.
#[derive(Clone)]
pub struct Current {
    pub api_key: ApiKey,
    /// `Bearer <api key>`, marked sensitive.
    pub authorization: HeaderValue,
    /// Every accepted webhook secret (empty: the route is off, or its file is not yet read).
    pub webhook: Arc<[Secret]>,
    /// `None` = viewer access is off.
    pub access: Option<Arc<viewer::Keys>>,
    access_secrets: Vec<Secret>,
    public_keys: Vec<PublicKey>,
    /// `None` = state-changing admin routes are for loopback peers only.
    pub admin_token: Option<Secret>,
}

/// A setting whose value may live in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSetting {
    ApiKey,
    WebhookSecret,
    AccessSecret,
    AccessPublicKey,
    AdminToken,
}

impl FileSetting {
    /// The variable, as logs and the metric label name it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileSetting::ApiKey => "TASKGATE_API_KEY_FILE",
            FileSetting::WebhookSecret => "TASKGATE_WEBHOOK_SECRET_FILE",
            FileSetting::AccessSecret => "TASKGATE_ACCESS_SECRET_FILE",
            FileSetting::AccessPublicKey => "TASKGATE_ACCESS_PUBLIC_KEY_FILE",
            FileSetting::AdminToken => "TASKGATE_ADMIN_TOKEN_FILE",
        }
    }
}

/// What a file held, parsed.
#[derive(Clone)]
enum Value {
    Key(ApiKey),
    Lines(Vec<Secret>),
    PublicKeys(Vec<PublicKey>),
    Token(Secret),
}

/// What identifies a file's content without reading it: of the symlink's target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    mtime: Option<SystemTime>,
    len: u64,
}

impl Fingerprint {
    /// `None` when the file cannot be looked at (missing, dangling symlink).
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(path).ok()?; // follows symlinks
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

struct Watched {
    setting: FileSetting,
    path: PathBuf,
    /// What the last look saw (whether or not that read worked): a broken file is reported
    /// once, not at every poll.
    seen: Option<Fingerprint>,
}

/// Counts one reload: (the setting's variable, `changed` | `unchanged` | `failed`).
pub type Recorder = Box<dyn Fn(&'static str, &'static str) + Send + Sync>;

/// Told about every new set of secrets.
type Listener = Box<dyn Fn(&Current) + Send + Sync>;

pub struct Secrets {
    current: RwLock<Arc<Current>>,
    files: Mutex<Vec<Watched>>,
    /// Counts each reload by (setting, outcome): `taskgate_secret_reloads_total`. A callback,
    /// so this module stays below `telemetry` in the module graph.
    record: Recorder,
    /// When an upstream 401 last re-read the key file.
    key_refused_at: Mutex<Option<Instant>>,
    /// Called with the new set after every change (the webhook verifier's keys).
    listeners: Mutex<Vec<Listener>>,
}

/// Why the secrets could not be set up at start-up: one line naming the setting.
#[derive(Debug)]
pub struct SecretsError(pub String);

impl Secrets {
    /// The secrets of `cfg`: the inline values and every `*_FILE`, read now.
    pub fn new(cfg: &Config, record: Recorder) -> Result<Self, SecretsError> {
        let mut files = Vec::new();
        let mut watch = |setting, path: &Option<PathBuf>| {
            if let Some(path) = path {
                files.push(Watched {
                    setting,
                    path: path.clone(),
                    seen: Fingerprint::of(path),
                });
            }
        };
        watch(FileSetting::ApiKey, &cfg.api_key_file);
        watch(FileSetting::WebhookSecret, &cfg.webhook_secret_file);
        watch(FileSetting::AccessSecret, &cfg.access_secret_file);
        watch(FileSetting::AccessPublicKey, &cfg.access_public_key_file);
        watch(FileSetting::AdminToken, &cfg.admin_token_file);

        let access_on = cfg.access_secret.is_some()
            || cfg.access_secret_file.is_some()
            || cfg.access_public_key_file.is_some();
        let mut current = Current {
            authorization: authorization(&cfg.api_key)
                .map_err(|e| SecretsError(format!("TASKGATE_API_KEY: {e}")))?,
            api_key: cfg.api_key.clone(),
            webhook: cfg.webhook_secret.iter().cloned().collect(),
            access: None,
            access_secrets: cfg.access_secret.iter().cloned().collect(),
            public_keys: Vec::new(),
            admin_token: cfg.admin_token.clone(),
        };
        for file in &files {
            // The key file was read (and checked) by the configuration already.
            if file.setting == FileSetting::ApiKey {
                continue;
            }
            let value = read(file.setting, &file.path)
                .map_err(|e| SecretsError(format!("{}: {e}", file.setting.as_str())))?;
            apply(&mut current, file.setting, value)
                .map_err(|e| SecretsError(format!("{}: {e}", file.setting.as_str())))?;
        }
        if access_on {
            current.access = Some(Arc::new(viewer::Keys::new(
                &current.access_secrets,
                current.public_keys.clone(),
            )));
        }
        Ok(Self {
            current: RwLock::new(Arc::new(current)),
            files: Mutex::new(files),
            record,
            key_refused_at: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// The secrets in force now. Hold the `Arc` for the length of one request.
    pub fn current(&self) -> Arc<Current> {
        Arc::clone(
            &self
                .current
                .read()
                .expect("the secrets lock is never poisoned"),
        )
    }

    /// Whether any `*_FILE` secret is configured (so there is something to poll).
    pub fn has_files(&self) -> bool {
        !self.files.lock().expect("never poisoned").is_empty()
    }

    /// Calls `f` with the new set after each change.
    pub fn on_change(&self, f: impl Fn(&Current) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .expect("never poisoned")
            .push(Box::new(f));
    }

    /// Re-reads the files whose target changed since the last look.
    pub fn poll(&self) {
        self.reload(|_| true, false);
    }

    /// Re-reads every file now (SIGHUP).
    pub fn reload_all(&self) {
        tracing::info!("re-reading secret files");
        self.reload(|_| true, true);
    }

    /// The API refused the key: re-read its file, unless that was done less than
    /// [`KEY_REFUSED_RELOAD_EVERY`] ago. Returns whether it was re-read.
    pub fn api_key_refused(&self) -> bool {
        {
            let mut at = self.key_refused_at.lock().expect("never poisoned");
            if at.is_some_and(|at| at.elapsed() < KEY_REFUSED_RELOAD_EVERY) {
                return false;
            }
            *at = Some(Instant::now());
        }
        self.reload(|s| s == FileSetting::ApiKey, true);
        true
    }

    /// Re-reads the chosen files (all of them with `force`, else the changed ones) and puts
    /// what changed in force. Serialised by the `files` lock.
    fn reload(&self, chosen: impl Fn(FileSetting) -> bool, force: bool) {
        let mut files = self.files.lock().expect("never poisoned");
        let mut next: Option<Current> = None;
        for file in files.iter_mut().filter(|f| chosen(f.setting)) {
            let seen = Fingerprint::of(&file.path);
            if !force && seen == file.seen {
                continue;
            }
            file.seen = seen;
            let setting = file.setting.as_str();
            let base = next.take().unwrap_or_else(|| (*self.current()).clone());
            let mut candidate = base.clone();
            let outcome = read(file.setting, &file.path)
                .and_then(|value| apply(&mut candidate, file.setting, value));
            match outcome {
                Ok(true) => {
                    tracing::info!(setting, "secret file reloaded");
                    (self.record)(setting, "changed");
                    next = Some(candidate);
                }
                Ok(false) => {
                    (self.record)(setting, "unchanged");
                    next = Some(base);
                }
                Err(error) => {
                    tracing::error!(
                        setting,
                        %error,
                        "secret file reload failed; the secrets in force are kept"
                    );
                    (self.record)(setting, "failed");
                    next = Some(base);
                }
            }
        }
        let Some(mut next) = next else {
            return;
        };
        let now = self.current();
        let access_changed = !same_secrets(&next.access_secrets, &now.access_secrets)
            || next.public_keys.len() != now.public_keys.len()
            || next
                .public_keys
                .iter()
                .zip(&now.public_keys)
                .any(|(a, b)| !a.same_as(b));
        let changed = access_changed
            || next.api_key != now.api_key
            || !same_secrets(&next.webhook, &now.webhook)
            || next.admin_token != now.admin_token;
        if !changed {
            return;
        }
        if access_changed && next.access.is_some() {
            next.access = Some(Arc::new(viewer::Keys::new(
                &next.access_secrets,
                next.public_keys.clone(),
            )));
        }
        let next = Arc::new(next);
        *self.current.write().expect("never poisoned") = Arc::clone(&next);
        for listener in self.listeners.lock().expect("never poisoned").iter() {
            listener(&next);
        }
    }

    /// Polls every `interval` for as long as `self` lives.
    pub fn spawn_poller(self: &Arc<Self>, interval: Duration) {
        if !self.has_files() {
            return;
        }
        let this: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is now: the files were just read
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else {
                    return;
                };
                // File reads are small and local; off the async workers all the same.
                let _ = tokio::task::spawn_blocking(move || this.poll()).await;
            }
        });
    }
}

fn same_secrets(a: &[Secret], b: &[Secret]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a == b)
}

fn authorization(key: &ApiKey) -> Result<HeaderValue, &'static str> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .map_err(|_| "not a valid header value")?;
    value.set_sensitive(true);
    Ok(value)
}

/// Puts `value` in `current`; whether that changed anything.
fn apply(current: &mut Current, setting: FileSetting, value: Value) -> Result<bool, String> {
    Ok(match (setting, value) {
        (FileSetting::ApiKey, Value::Key(key)) => {
            let changed = key != current.api_key;
            current.authorization = authorization(&key)?;
            current.api_key = key;
            changed
        }
        (FileSetting::WebhookSecret, Value::Lines(lines)) => {
            let changed = !same_secrets(&lines, &current.webhook);
            current.webhook = lines.into();
            changed
        }
        (FileSetting::AccessSecret, Value::Lines(lines)) => {
            let changed = !same_secrets(&lines, &current.access_secrets);
            current.access_secrets = lines;
            changed
        }
        (FileSetting::AccessPublicKey, Value::PublicKeys(keys)) => {
            current.public_keys = keys;
            true
        }
        (FileSetting::AdminToken, Value::Token(token)) => {
            let changed = current.admin_token.as_ref() != Some(&token);
            current.admin_token = Some(token);
            changed
        }
        _ => unreachable!("read() returns the value kind of its setting"),
    })
}

/// Reads and parses one file. What is wrong never quotes the content.
fn read(setting: FileSetting, path: &Path) -> Result<Value, String> {
    if setting == FileSetting::ApiKey {
        return config::read_key_file(path).map(Value::Key);
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {path:?} ({e})"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{path:?} is too large for a secret file"));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{path:?} is not UTF-8 text"))?;
    match setting {
        FileSetting::ApiKey => unreachable!("handled above"),
        FileSetting::WebhookSecret | FileSetting::AccessSecret => {
            // One secret per line; a line's trailing CR and spaces are the editor's, not the
            // secret's.
            let lines: Vec<Secret> = text
                .lines()
                .map(|l| l.trim_end())
                .filter(|l| !l.is_empty())
                .map(Secret::new)
                .collect();
            if lines.is_empty() {
                return Err(format!("{path:?} holds no secret (write one per line)"));
            }
            Ok(Value::Lines(lines))
        }
        FileSetting::AccessPublicKey => viewer::parse_public_keys(&text)
            .map(Value::PublicKeys)
            .map_err(|e| format!("{path:?} {e}")),
        FileSetting::AdminToken => {
            let token = text.trim_end();
            if token.is_empty() {
                return Err(format!("{path:?} is empty"));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "the token in {path:?} holds characters a Bearer header cannot carry"
                ));
            }
            Ok(Value::Token(Secret::new(token)))
        }
    }
}

impl std::fmt::Display for SecretsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
