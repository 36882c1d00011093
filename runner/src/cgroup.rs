//! Control groups per function: a hard memory limit on the real pages its workers use and a cap
//! on their processes and threads, so that one function cannot starve the machine or the
//! others (rlimits are per process, and the sandbox uid's process limit is shared).
//!
//! Works on cgroup v2 (one unified hierarchy with the `memory` and `pids` controllers) and v1
//! (separate `memory` and `pids` hierarchies, as on machines whose kubelet uses cgroupfs). The
//! gateway needs write access to the hierarchy (root, or a delegated subtree); without it,
//! functions keep their rlimits only and `skython up` says so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq)]
pub enum Hierarchy {
    V1 { memory: PathBuf, pids: PathBuf },
    V2 { root: PathBuf },
}

/// What one function's group allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// The directories of a group and the files to write, for a hierarchy: pure, unit-tested.
pub fn layout(
    h: &Hierarchy,
    path: &Path,
    limits: GroupLimits,
) -> Vec<(PathBuf, Vec<(&'static str, String)>)> {
    let mem = limits.memory_bytes.to_string();
    let pids = limits.pids.to_string();
    match h {
        // No swap on the machines this targets; where there is, memsw may be absent: the
        // memory limit alone still bounds resident pages.
        Hierarchy::V1 { memory, pids: p } => vec![
            (memory.join(path), vec![("memory.limit_in_bytes", mem)]),
            (p.join(path), vec![("pids.max", pids)]),
        ],
        Hierarchy::V2 { root } => vec![(
            root.join(path),
            vec![
                ("memory.max", mem),
                ("memory.swap.max", "0".into()),
                ("pids.max", pids),
            ],
        )],
    }
}

/// The machine's cgroups, under a parent group of this gateway's own.
#[derive(Debug)]
pub struct Cgroups {
    hierarchy: Hierarchy,
    parent: PathBuf,
    /// Groups of retired versions whose last processes were still exiting when they were
    /// dropped; [`Cgroups::sweep`] removes them once empty.
    graveyard: Arc<Mutex<Vec<PathBuf>>>,
}

impl Cgroups {
    /// Finds a writable hierarchy with memory and pids control; `Err` says why there is none.
    pub fn detect(name: &str) -> Result<Self, String> {
        let base = Path::new("/sys/fs/cgroup");
        let hierarchy = if base.join("cgroup.controllers").exists() {
            let controllers =
                std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            if !(controllers.contains("memory") && controllers.contains("pids")) {
                return Err("cgroup v2 without the memory and pids controllers".into());
            }
            Hierarchy::V2 { root: base.into() }
        } else if base.join("memory").is_dir() && base.join("pids").is_dir() {
            Hierarchy::V1 {
                memory: base.join("memory"),
                pids: base.join("pids"),
            }
        } else {
            return Err("no memory and pids cgroup hierarchies under /sys/fs/cgroup".into());
        };
        let parent = PathBuf::from(name);
        if let Some(shared) = parent.parent() {
            remove_stale(&hierarchy, shared);
        }
        let dirs: Vec<PathBuf> = match &hierarchy {
            Hierarchy::V1 { memory, pids } => vec![memory.join(&parent), pids.join(&parent)],
            Hierarchy::V2 { root } => vec![root.join(&parent)],
        };
        for d in &dirs {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        if let Hierarchy::V2 { root } = &hierarchy {
            // Children of our parent may use the controllers.
            std::fs::write(
                root.join(&parent).join("cgroup.subtree_control"),
                "+memory +pids",
            )
            .map_err(|e| format!("cannot enable controllers under {}: {e}", parent.display()))?;
        }
        Ok(Cgroups {
            hierarchy,
            parent,
            graveyard: Arc::default(),
        })
    }

    /// A group for one function version (`name` must be unique among live ones).
    pub fn group(&self, name: &str, limits: GroupLimits) -> std::io::Result<Group> {
        let path = self.parent.join(sanitize(name));
        let mut dirs = Vec::new();
        for (dir, files) in layout(&self.hierarchy, &path, limits) {
            std::fs::create_dir_all(&dir)?;
            dirs.push(dir.clone());
            for (file, value) in files {
                // memory.swap.max is absent without swap accounting: the memory limit holds anyway.
                if let Err(e) = std::fs::write(dir.join(file), &value)
                    && !(file == "memory.swap.max" && e.kind() == std::io::ErrorKind::NotFound)
                {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", dir.join(file).display()),
                    ));
                }
            }
        }
        Ok(Group {
            dirs,
            graveyard: self.graveyard.clone(),
        })
    }

    /// Removes the groups of retired versions that have emptied since; returns how many are
    /// still waiting.
    pub fn sweep(&self) -> usize {
        let mut waiting = self.graveyard.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
        waiting.len()
    }
}

/// A single path component, whatever the name: `fn-` and only `[A-Za-z0-9._-]`.
/// Removes the groups of gateways that are gone (named by their pid), so that crashed ones do not
/// leave their directories behind forever. Groups that still hold processes stay.
fn remove_stale(h: &Hierarchy, shared: &Path) {
    let roots = match h {
        Hierarchy::V1 { memory, pids } => vec![memory.join(shared), pids.join(shared)],
        Hierarchy::V2 { root } => vec![root.join(shared)],
    };
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if let Ok(children) = std::fs::read_dir(e.path()) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

fn sanitize(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("fn-{safe}")
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let dirs = match &self.hierarchy {
            Hierarchy::V1 { memory, pids } => {
                vec![memory.join(&self.parent), pids.join(&self.parent)]
            }
            Hierarchy::V2 { root } => vec![root.join(&self.parent)],
        };
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// One function version's group; removed when dropped if no process is left in it.
#[derive(Debug)]
pub struct Group {
    dirs: Vec<PathBuf>,
    graveyard: Arc<Mutex<Vec<PathBuf>>>,
}

impl Group {
    /// Moves a process (by host pid) into the group, in every hierarchy.
    pub fn add(&self, pid: i32) -> std::io::Result<()> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Busy while the pool's last workers exit (they were just signalled): swept later.
        let busy: Vec<PathBuf> = self
            .dirs
            .drain(..)
            .filter(|d| std::fs::remove_dir(d).is_err() && d.exists())
            .collect();
        if !busy.is_empty() {
            self.graveyard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(busy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_layouts() {
        let limits = GroupLimits {
            memory_bytes: 512 << 20,
            pids: 256,
        };
        let v1 = Hierarchy::V1 {
            memory: "/cg/memory".into(),
            pids: "/cg/pids".into(),
        };
        assert_eq!(
            layout(&v1, Path::new("skython-1/admin.add.3"), limits),
            vec![
                (
                    PathBuf::from("/cg/memory/skython-1/admin.add.3"),
                    vec![("memory.limit_in_bytes", "536870912".to_string())]
                ),
                (
                    PathBuf::from("/cg/pids/skython-1/admin.add.3"),
                    vec![("pids.max", "256".to_string())]
                ),
            ]
        );
        let v2 = Hierarchy::V2 { root: "/cg".into() };
        let l = layout(&v2, Path::new("p/f"), limits);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, PathBuf::from("/cg/p/f"));
        assert!(l[0].1.contains(&("memory.max", "536870912".to_string())));
        assert!(l[0].1.contains(&("pids.max", "256".to_string())));
    }

    #[test]
    fn names_cannot_escape_the_parent() {
        assert_eq!(sanitize(".."), "fn-..");
        assert_eq!(sanitize("alice/add.7"), "fn-alice_add.7");
        assert!(!sanitize("a/b/../c").contains('/'));
    }
}
