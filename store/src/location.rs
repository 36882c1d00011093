//! Where a store lives, as given on the command line (`--store`, `skython store copy`): the
//! embedded SQLite file or a MongoDB deployment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{SqliteStore, Store, StoreError};

/// A parsed `--store` value.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `sqlite://PATH`: everything after the scheme is a file path (`sqlite:///var/lib/x.db` is
    /// absolute, `sqlite://x.db` relative to the working directory).
    Sqlite(PathBuf),
    /// `mongodb://…` or `mongodb+srv://…`, passed to the driver as it is.
    MongoDb(String),
}

impl StoreLocation {
    /// The embedded default: `skython.db` in the data directory.
    pub fn in_data_dir(data_dir: &Path) -> StoreLocation {
        StoreLocation::Sqlite(data_dir.join("skython.db"))
    }

    pub fn parse(s: &str) -> Result<StoreLocation, StoreError> {
        let invalid = |why: &str| {
            StoreError::Invalid(format!(
                "store {:?}: {why}; expected sqlite://PATH or mongodb://HOST/DATABASE \
                 (or mongodb+srv://…)",
                redacted(s)
            ))
        };
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("no file path after sqlite://"));
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = s
            .strip_prefix("mongodb://")
            .or_else(|| s.strip_prefix("mongodb+srv://"))
        {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(invalid("no host after mongodb://"));
            }
            return Ok(StoreLocation::MongoDb(s.to_string()));
        }
        Err(invalid("unknown scheme"))
    }

    /// Opens (and creates, if new) the store.
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreLocation::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
            StoreLocation::MongoDb(uri) => Arc::new(crate::MongoStore::connect(uri).await?),
        })
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Never shows a MongoDB URI's password (logs, errors, `--help` output).
impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreLocation::MongoDb(uri) => f.write_str(&redacted(uri)),
        }
    }
}

/// `uri` with the password of its user info replaced by `***`.
pub fn redacted(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{hosts}{tail}")
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_follow_the_scheme() {
        assert_eq!(
            StoreLocation::parse("sqlite:///var/lib/skython.db").unwrap(),
            StoreLocation::Sqlite("/var/lib/skython.db".into())
        );
        assert_eq!(
            StoreLocation::parse("sqlite://data/s.db").unwrap(),
            StoreLocation::Sqlite("data/s.db".into())
        );
    }

    #[test]
    fn mongodb_uris_are_kept_whole() {
        for uri in [
            "mongodb://a:1,b:2/skython?replicaSet=rs0&tls=true",
            "mongodb+srv://u:p@cluster.example.net/skython",
        ] {
            assert_eq!(
                StoreLocation::parse(uri).unwrap(),
                StoreLocation::MongoDb(uri.into())
            );
        }
    }

    #[test]
    fn other_values_are_refused_naming_what_is_expected() {
        for bad in [
            "postgres://x",
            "skython.db",
            "sqlite://",
            "mongodb://",
            "mongodb:///db",
        ] {
            let e = StoreLocation::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected sqlite://PATH or mongodb://"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn passwords_are_never_shown() {
        let uri = "mongodb://app:s3cret@db1:27017,db2/skython?authSource=admin";
        let shown = StoreLocation::parse(uri).unwrap().to_string();
        assert_eq!(
            shown,
            "mongodb://app:***@db1:27017,db2/skython?authSource=admin"
        );
        let e = StoreLocation::parse("mongo://app:s3cret@db1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert_eq!(redacted("mongodb://app@db1/x"), "mongodb://app@db1/x");
        assert_eq!(redacted("mongodb://db1/x?a=b@c"), "mongodb://db1/x?a=b@c");
    }
}
