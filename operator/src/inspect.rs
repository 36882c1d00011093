//! `SourceInspector`: reads a function's source without running it (syntax, entry function,
//! signature), with the same Python code as the gateway's deploy check.

use std::collections::HashMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use skython_crds::SkyFunctionSpec;
use skython_runner::{Inspection, RuntimeConfig, Zygote};
use tokio::sync::Mutex;

use crate::status::SourceCheck;

/// Inspections kept; a reconcile of an unchanged function costs no Python round trip.
const CACHE_ENTRIES: usize = 4096;

pub struct SourceInspector {
    zygote: Zygote,
    cache: Mutex<HashMap<[u8; 32], SourceCheck>>,
}

impl SourceInspector {
    /// `python` only needs the standard library: inspection imports nothing of the function's.
    pub fn new(python: PathBuf, runtime_dir: PathBuf) -> std::io::Result<Self> {
        skython_runner::install_python_files(&runtime_dir)?;
        Ok(SourceInspector {
            zygote: Zygote::new(RuntimeConfig {
                python,
                python_path: runtime_dir,
                preload: Some(String::new()),
                workdir: std::env::temp_dir(),
                // Inspection parses; it runs none of the function's code.
                sandbox: skython_runner::Sandbox::None,
                egress_dir: None,
            }),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub async fn start(&self) -> skython_runner::Result<()> {
        self.zygote.start().await.map(|_| ())
    }

    pub async fn check(&self, spec: &SkyFunctionSpec) -> skython_runner::Result<SourceCheck> {
        let filename = format!("{}.py", spec.endpoint);
        let key: [u8; 32] = Sha256::new()
            .chain_update(filename.as_bytes())
            .chain_update([0])
            .chain_update(spec.entrypoint.as_deref().unwrap_or("").as_bytes())
            .chain_update([0])
            .chain_update(spec.source.as_bytes())
            .finalize()
            .into();
        if let Some(hit) = self.cache.lock().await.get(&key) {
            return Ok(hit.clone());
        }
        let check = match self
            .zygote
            .inspect(&spec.source, &filename, spec.entrypoint.as_deref())
            .await?
        {
            Inspection::Ok { signature } => SourceCheck::Valid(signature),
            Inspection::Invalid { error } => SourceCheck::Invalid(error),
        };
        let mut cache = self.cache.lock().await;
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, check.clone());
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same Python as the gateway's deploy check: a source that exhausts the parser is an
    /// invalid source with its code, which the status reports (Ready=False), not an error.
    /// Python is `$SKYTHON_PYTHON` (the runtime venv under `make test`), else `python3`.
    #[tokio::test]
    async fn a_source_too_deeply_nested_is_an_invalid_source() {
        let dir = tempfile::tempdir().unwrap();
        let python = std::env::var_os("SKYTHON_PYTHON")
            .map(Into::into)
            .unwrap_or_else(|| "python3".into());
        let inspector = SourceInspector::new(python, dir.path().to_path_buf()).unwrap();
        let source = format!("x = {}1\ndef main(): return 1\n", "1+".repeat(300_000));
        let spec = SkyFunctionSpec::new("a", "f", &source);
        match inspector.check(&spec).await.unwrap() {
            SourceCheck::Invalid(e) => assert_eq!(e.code, "source_too_deeply_nested"),
            other => panic!("{other:?}"),
        }
        let spec = SkyFunctionSpec::new("a", "g", "def main(): return 1\n");
        assert!(matches!(
            inspector.check(&spec).await.unwrap(),
            SourceCheck::Valid(_)
        ));
    }
}
