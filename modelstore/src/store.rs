//! Scanning `models/`, verifying files, routing requests to versions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::features::{self, FeatureError, FeatureVector};
use crate::metadata::{FamilyMetadata, ModelMetadata};

/// Errors loading the store. Each names the file at fault.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: sha256 is {actual}, but its metadata says {expected}; refusing to load it")]
    Sha256Mismatch { path: PathBuf, expected: String, actual: String },
    #[error("no models found under {0} (expected <name>/model.json and <name>/<version>/metadata.json)")]
    Empty(PathBuf),
    #[error("no model version under {root} could be loaded: {}", refused.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NoneLoaded { root: PathBuf, refused: Vec<Refused> },
}

/// A model version (or a whole model, `version` `*`) the store refused, and why. The store
/// serves every other version; a request for this one is refused with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub model: String,
    pub version: String,
    /// The file at fault.
    pub path: PathBuf,
    pub reason: String,
    /// The sha256 its metadata claims, when the metadata could be read.
    pub sha256: Option<String>,
}

impl Refused {
    /// `model/version`, as [`ModelVersion::key`].
    pub fn key(&self) -> String {
        format!("{}/{}", self.model, self.version)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} refused: {}", self.key(), self.reason)
    }
}

/// Why a request cannot be routed to a model version.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error("unknown model {model:?} (known: {known:?})")]
    UnknownModel { model: String, known: Vec<String> },
    #[error("model {model} has no version {version:?} (known: {known:?})")]
    UnknownVersion { model: String, version: String, known: Vec<String> },
    #[error("model {model} version {version:?} was refused when loaded: {reason}")]
    Refused { model: String, version: String, reason: String },
}

/// A loaded, verified model version.
#[derive(Debug)]
pub struct ModelVersion {
    pub meta: ModelMetadata,
    /// Path of the verified ONNX file.
    pub onnx_path: PathBuf,
}

impl ModelVersion {
    /// `name/version`, for logs and metrics.
    /// The ONNX file's bytes, checked against the metadata's sha256: what a backend loads is
    /// exactly what was hashed (the file is read once; a file changed since the store was
    /// opened is refused).
    pub fn read_verified(&self) -> Result<Vec<u8>, StoreError> {
        let bytes =
            std::fs::read(&self.onnx_path).map_err(|source| StoreError::Io { path: self.onnx_path.clone(), source })?;
        let actual = streamscore_contracts::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&self.meta.sha256) {
            return Err(StoreError::Sha256Mismatch {
                path: self.onnx_path.clone(),
                expected: self.meta.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.meta.name, self.meta.version)
    }

    /// Checks a request's features and returns the model's input vector.
    pub fn check<S: std::hash::BuildHasher>(
        &self,
        features: &HashMap<String, f64, S>,
    ) -> Result<FeatureVector, FeatureError> {
        features::check(&self.meta, features)
    }
}

#[derive(Debug, Clone)]
struct Family {
    default_version: String,
    fallback: Option<String>,
    versions: BTreeMap<String, Arc<ModelVersion>>,
    /// Versions whose folder exists but did not load, with the reason.
    refused: BTreeMap<String, String>,
}

/// Every model version under a directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    families: BTreeMap<String, Family>,
    refused: Vec<Refused>,
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Io { path: path.to_owned(), source })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    serde_json::from_slice(&read(path)?)
        .map_err(|e| StoreError::Invalid { path: path.to_owned(), reason: e.to_string() })
}

/// The file an error names.
fn error_path(error: &StoreError) -> Option<&Path> {
    match error {
        StoreError::Io { path, .. } | StoreError::Invalid { path, .. } | StoreError::Sha256Mismatch { path, .. } => {
            Some(path)
        }
        StoreError::Empty(path) | StoreError::NoneLoaded { root: path, .. } => Some(path),
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, StoreError> {
    Ok(streamscore_contracts::sha256_hex(&read(path)?))
}

fn load_version(dir: &Path, family: &str) -> Result<ModelVersion, StoreError> {
    let meta_path = dir.join("metadata.json");
    let meta: ModelMetadata = parse(&meta_path)?;
    let invalid = |reason: String| StoreError::Invalid { path: meta_path.clone(), reason };
    if meta.name != family {
        return Err(invalid(format!("name {:?} does not match its folder {family:?}", meta.name)));
    }
    let folder = dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    if meta.version != folder {
        return Err(invalid(format!("version {:?} does not match its folder {folder:?}", meta.version)));
    }
    if meta.features.is_empty() {
        return Err(invalid("no features".to_owned()));
    }
    if meta.labels.len() != 2 {
        return Err(invalid(format!("expected 2 labels, found {}", meta.labels.len())));
    }
    for f in &meta.features {
        if !(f.min <= f.max) {
            return Err(invalid(format!("feature {} has min {} above max {}", f.name, f.min, f.max)));
        }
    }
    meta.check_baseline().map_err(|reason| invalid(format!("{reason} (models/train.py writes the training means)")))?;
    // The ONNX file lives in the version's folder: no absolute path, no way out of it.
    let relative = Path::new(&meta.onnx_file);
    if meta.onnx_file.is_empty()
        || relative.is_absolute()
        || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid(format!("onnx_file {:?} must be a path inside the version folder", meta.onnx_file)));
    }
    let onnx_path = dir.join(relative);
    let actual = sha256_file(&onnx_path)?;
    if !actual.eq_ignore_ascii_case(&meta.sha256) {
        return Err(StoreError::Sha256Mismatch { path: onnx_path, expected: meta.sha256.clone(), actual });
    }
    Ok(ModelVersion { meta, onnx_path })
}

impl ModelStore {
    /// Loads every model under `root`, verifying each ONNX file's sha256. A version (or a
    /// model) that does not load is refused, listed in [`ModelStore::refused`], and the others
    /// are served; only a root that cannot be read or where nothing loads is an error.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let mut families = BTreeMap::new();
        let mut refused = Vec::new();
        let entries = std::fs::read_dir(&root).map_err(|source| StoreError::Io { path: root.clone(), source })?;
        let mut dirs: Vec<PathBuf> =
            entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join("model.json").is_file()).collect();
        dirs.sort();
        if dirs.is_empty() {
            return Err(StoreError::Empty(root));
        }
        for family_dir in dirs {
            let folder = family_dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let refuse = |version: &str, error: &StoreError, sha256: Option<String>| Refused {
                model: folder.clone(),
                version: version.to_owned(),
                path: error_path(error).unwrap_or(&family_dir).to_owned(),
                reason: error.to_string(),
                sha256,
            };
            let family_meta: FamilyMetadata = match parse(&family_dir.join("model.json")) {
                Ok(meta) => meta,
                Err(e) => {
                    refused.push(refuse("*", &e, None));
                    continue;
                }
            };
            let mut family = Family {
                default_version: family_meta.default_version,
                fallback: family_meta.fallback,
                versions: BTreeMap::new(),
                refused: BTreeMap::new(),
            };
            let mut version_dirs: Vec<PathBuf> = std::fs::read_dir(&family_dir)
                .map_err(|source| StoreError::Io { path: family_dir.clone(), source })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("metadata.json").is_file())
                .collect();
            version_dirs.sort();
            for dir in version_dirs {
                let version = dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                match load_version(&dir, &family_meta.name) {
                    Ok(loaded) => {
                        family.versions.insert(loaded.meta.version.clone(), Arc::new(loaded));
                    }
                    Err(e) => {
                        let sha256 = parse::<ModelMetadata>(&dir.join("metadata.json")).ok().map(|m| m.sha256);
                        let mut refusal = refuse(&version, &e, sha256);
                        refusal.model.clone_from(&family_meta.name);
                        family.refused.insert(version, refusal.reason.clone());
                        refused.push(refusal);
                    }
                }
            }
            let default = &family.default_version;
            if !family.versions.contains_key(default) && !family.refused.contains_key(default) {
                let reason = format!("default version {default:?} has no folder");
                let error = StoreError::Invalid { path: family_dir.join("model.json"), reason };
                let mut refusal = refuse(default, &error, None);
                refusal.model.clone_from(&family_meta.name);
                family.refused.insert(default.clone(), refusal.reason.clone());
                refused.push(refusal);
            }
            families.insert(family_meta.name.clone(), family);
        }
        if families.values().all(|f| f.versions.is_empty()) {
            return Err(StoreError::NoneLoaded { root, refused });
        }
        Ok(Self { root, families, refused })
    }

    /// What did not load, and why.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    /// The directory the store was loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Loads the store again and returns it with the versions that are new since `self`.
    pub fn rescan(&self) -> Result<(Self, Vec<Arc<ModelVersion>>), StoreError> {
        let next = Self::open(&self.root)?;
        let added = next.versions().filter(|v| self.get(&v.meta.name, &v.meta.version).is_none()).collect();
        Ok((next, added))
    }

    /// Every version of every model.
    pub fn versions(&self) -> impl Iterator<Item = Arc<ModelVersion>> + '_ {
        self.families.values().flat_map(|f| f.versions.values().cloned())
    }

    /// Model names.
    pub fn models(&self) -> Vec<String> {
        self.families.keys().cloned().collect()
    }

    pub fn get(&self, model: &str, version: &str) -> Option<Arc<ModelVersion>> {
        self.families.get(model)?.versions.get(version).cloned()
    }

    pub fn default_version(&self, model: &str) -> Option<&str> {
        self.families.get(model).map(|f| f.default_version.as_str())
    }

    /// `model`'s fallback version (`model.json`'s `fallback`), when it has one the store holds.
    pub fn fallback(&self, model: &str) -> Option<Arc<ModelVersion>> {
        let family = self.families.get(model)?;
        family.versions.get(family.fallback.as_deref()?).cloned()
    }

    /// Routes a request: the version it names, else the tenant's pin, else the default.
    pub fn route(
        &self,
        model: &str,
        requested: Option<&str>,
        tenant_pin: Option<&str>,
    ) -> Result<Arc<ModelVersion>, RouteError> {
        let family = self
            .families
            .get(model)
            .ok_or_else(|| RouteError::UnknownModel { model: model.to_owned(), known: self.models() })?;
        let version = requested.or(tenant_pin).unwrap_or(&family.default_version);
        if let Some(reason) = family.refused.get(version) {
            return Err(RouteError::Refused {
                model: model.to_owned(),
                version: version.to_owned(),
                reason: reason.clone(),
            });
        }
        family.versions.get(version).cloned().ok_or_else(|| RouteError::UnknownVersion {
            model: model.to_owned(),
            version: version.to_owned(),
            known: family.versions.keys().cloned().collect(),
        })
    }
}

/// The current store, shared by the stages and replaced when new versions are dropped in.
#[derive(Debug, Clone)]
pub struct SharedStore(Arc<std::sync::RwLock<Arc<ModelStore>>>);

impl SharedStore {
    pub fn new(store: ModelStore) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Arc::new(store))))
    }

    /// A snapshot of the store now.
    pub fn current(&self) -> Arc<ModelStore> {
        Arc::clone(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn replace(&self, store: ModelStore) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(store);
    }
}
