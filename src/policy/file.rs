//! The file source (`PAYSYNC_POLICIES`): a YAML file, or a directory of them, holding the same
//! manifests a user would `kubectl apply` — `SyncPolicy` objects and the `v1` `Secret`s they
//! reference (`data` base64 or `stringData`). It is watched: a change applies without a
//! restart; a file that does not load keeps the last good policies and says why, naming the
//! document and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use notify::{RecursiveMode, Watcher as _};
use secrecy::SecretString;
use serde::Deserialize as _;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Credentials, NotReady, PolicyDefinition, PolicyRegistry};
use crate::crd::{SyncPolicy, reasons};
use crate::metrics::{Outcomes, Registry, count};

/// Changes arriving this close together are one reload (an editor writes in several steps).
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Namespace of a manifest without one, as `kubectl apply` would use.
const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The policies the file (or directory) at `path` defines.
pub fn load(path: &Path) -> Result<Vec<PolicyDefinition>, LoadError> {
    Contents::read(path)?.definitions()
}

/// The text of every file the source is made of, by path: what a reload compares, so that
/// content that did not change applies nothing.
#[derive(Debug, PartialEq, Eq)]
struct Contents(Vec<(String, String)>);

impl Contents {
    fn read(path: &Path) -> Result<Self, LoadError> {
        let mut texts = Vec::new();
        for file in files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
                path: file.display().to_string(),
                source,
            })?;
            texts.push((file.display().to_string(), text));
        }
        Ok(Self(texts))
    }

    fn definitions(&self) -> Result<Vec<PolicyDefinition>, LoadError> {
        let mut manifests = Manifests::default();
        for (file, text) in &self.0 {
            manifests.read(file, text)?;
        }
        manifests.definitions()
    }
}

fn files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.display().to_string(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_yaml(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The documents read so far.
#[derive(Default)]
struct Manifests {
    policies: Vec<(String, SyncPolicy)>,
    /// By namespace and name.
    secrets: BTreeMap<(String, String), Secret>,
}

impl Manifests {
    fn read(&mut self, file: &str, text: &str) -> Result<(), LoadError> {
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let at = format!("{file}, document {}", index + 1);
            let value = serde_yaml_ng::Value::deserialize(document)
                .map_err(|e| LoadError::Invalid(format!("{at}: not YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let json = serde_json::to_value(&value)
                .map_err(|e| LoadError::Invalid(format!("{at}: {e}")))?;
            self.read_document(&at, json)?;
        }
        Ok(())
    }

    fn read_document(&mut self, at: &str, json: serde_json::Value) -> Result<(), LoadError> {
        let invalid = |message: String| LoadError::Invalid(format!("{at}: {message}"));
        let kind = json["kind"].as_str().unwrap_or_default().to_owned();
        let api_version = json["apiVersion"].as_str().unwrap_or_default().to_owned();
        match (api_version.as_str(), kind.as_str()) {
            ("paysync.dev/v1alpha1", "SyncPolicy") => {
                let policy: SyncPolicy = serde_json::from_value(json)
                    .map_err(|e| invalid(format!("SyncPolicy: {e}")))?;
                let name = policy.metadata.name.clone().unwrap_or_default();
                super::check(&policy).map_err(|problems| {
                    invalid(format!("SyncPolicy {name}: {}", problems.join("; ")))
                })?;
                if self
                    .policies
                    .iter()
                    .any(|(_, p)| p.metadata.name == policy.metadata.name)
                {
                    return Err(invalid(format!("SyncPolicy {name} is defined twice")));
                }
                self.policies.push((at.to_owned(), policy));
            }
            ("v1", "Secret") => {
                let secret: Secret =
                    serde_json::from_value(json).map_err(|e| invalid(format!("Secret: {e}")))?;
                let key = (
                    namespace(secret.metadata.namespace.as_deref()),
                    secret.metadata.name.clone().unwrap_or_default(),
                );
                self.secrets.insert(key, secret);
            }
            _ => {
                return Err(invalid(format!(
                    "{api_version} {kind} is not a SyncPolicy (paysync.dev/v1alpha1) or a Secret (v1)"
                )));
            }
        }
        Ok(())
    }

    fn definitions(self) -> Result<Vec<PolicyDefinition>, LoadError> {
        Ok(self
            .policies
            .into_iter()
            .map(|(_, policy)| {
                let ns = namespace(policy.metadata.namespace.as_deref());
                let reference = &policy.spec.stripe_secret_ref;
                let credentials = match self.secrets.get(&(ns.clone(), reference.name.clone())) {
                    None => Err(NotReady {
                        reason: reasons::SECRET_NOT_FOUND,
                        message: format!("Secret {ns}/{} is not in the file", reference.name),
                    }),
                    Some(secret) => Ok(credentials(
                        secret,
                        &reference.api_key_key,
                        &reference.webhook_secrets_key,
                    )),
                };
                PolicyDefinition {
                    name: policy.metadata.name.clone().unwrap_or_default(),
                    spec: policy.spec,
                    credentials,
                }
            })
            .collect())
    }
}

fn namespace(namespace: Option<&str>) -> String {
    namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned()
}

/// A Secret's value under `key`, from `stringData` or (decoded) `data`.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.string_data.as_ref().and_then(|data| data.get(key)) {
        return Some(value.clone());
    }
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The credentials a Secret holds for a policy.
pub fn credentials(secret: &Secret, api_key_key: &str, webhook_secrets_key: &str) -> Credentials {
    let api_key = secret_value(secret, api_key_key)
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
        .map(SecretString::from);
    let webhook_secrets = secret_value(secret, webhook_secrets_key)
        .map(|secrets| {
            secrets
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| SecretString::from(s.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Credentials {
        api_key,
        webhook_secrets,
    }
}

/// `paysync_policy_reloads_total{outcome}`.
#[derive(Debug)]
pub struct ReloadMetrics {
    reloads: Outcomes,
}

impl ReloadMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reloads: Outcomes::default(),
        };
        registry.register(
            "policy_reloads",
            "Reloads of the policies file (PAYSYNC_POLICIES), by outcome (applied; invalid: \
             the last good policies stay)",
            metrics.reloads.clone(),
        );
        metrics
    }
}

/// Watches `path` until `shutdown`, applying every change that loads; a change that does not
/// load is logged and counted, and the last good policies stay. Only changes to the source's
/// own files count (not reads, not other files in the folder), and a save that leaves the
/// text as it was applies nothing and logs nothing.
pub async fn watch(
    path: PathBuf,
    registry: Arc<PolicyRegistry>,
    pool: PgPool,
    metrics: Arc<ReloadMetrics>,
    shutdown: CancellationToken,
) {
    let (tx, mut changed) = mpsc::unbounded_channel();
    let (source, directory) = (path.clone(), path.is_dir());
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| touches(&source, directory, &event)) {
            let _ = tx.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher
            .watch(&watched_folder(&path), RecursiveMode::NonRecursive)
            .map(|()| watcher)
    });
    let _watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            error!(path = %path.display(), error = %e, "cannot watch the policies file; changes need a restart");
            return;
        }
    };
    // What changed between start-up's load and the watch is applied now, without a count.
    let mut last = Contents::read(&path).ok();
    if let Some(contents) = &last {
        apply_contents(&path, contents, &registry, &pool);
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            event = changed.recv() => if event.is_none() { return },
        }
        // Let the burst of events of one save settle.
        tokio::time::sleep(DEBOUNCE).await;
        while changed.try_recv().is_ok() {}
        if let Some(outcome) = reload(&path, &mut last, &registry, &pool) {
            count(&metrics.reloads, outcome);
        }
    }
}

/// The folder to watch: editors replace a file by renaming another over it, which a watch on
/// the file itself would lose.
fn watched_folder(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_owned();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Whether `event` may have changed the source at `path` (a `directory` of YAML files or one
/// file): a write, creation, removal or rename of the file itself (or of a YAML file in the
/// directory), never a read.
fn touches(path: &Path, directory: bool, event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    let writes = match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(kind) => !matches!(kind, ModifyKind::Metadata(_)),
        EventKind::Access(_) | EventKind::Other => false,
    };
    writes
        && event.paths.iter().any(|changed| {
            if directory {
                is_yaml(changed)
            } else {
                changed.file_name() == path.file_name()
            }
        })
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml")
}

/// Applies the source if its text changed since `last`: the outcome to count, or `None` when
/// nothing changed.
fn reload(
    path: &Path,
    last: &mut Option<Contents>,
    registry: &PolicyRegistry,
    pool: &PgPool,
) -> Option<&'static str> {
    let contents = match Contents::read(path) {
        Ok(contents) if last.as_ref() == Some(&contents) => return None,
        Ok(contents) => contents,
        Err(e) => {
            error!(error = %e, "the policies file does not load; the last good policies stay in effect");
            return Some("invalid");
        }
    };
    let outcome = apply_contents(path, &contents, registry, pool);
    if outcome == "applied" {
        *last = Some(contents);
    }
    Some(outcome)
}

fn apply_contents(
    path: &Path,
    contents: &Contents,
    registry: &PolicyRegistry,
    pool: &PgPool,
) -> &'static str {
    match contents.definitions() {
        Ok(definitions) => {
            let changes = super::apply(registry, Some(pool), definitions);
            if !changes.is_empty() {
                info!(
                    added = %changes.added.join(","), changed = %changes.changed.join(","),
                    removed = %changes.removed.join(","),
                    "policies reloaded from {}", path.display()
                );
            }
            "applied"
        }
        Err(e) => {
            error!(error = %e, "the policies file does not load; the last good policies stay in effect");
            "invalid"
        }
    }
}

#[cfg(test)]
#[path = "file/tests.rs"]
mod tests;
