//! The operating-system sandbox of the zygote and of every worker it forks (workers inherit it
//! and can only tighten it).
//!
//! [bubblewrap](https://github.com/containers/bubblewrap) (`bwrap`, from Debian) does the work:
//! new user, PID, mount, IPC, UTS, network and cgroup namespaces; a root file system with only
//! what the runtime needs, read-only; no further user namespaces; `no_new_privs`; and, installed
//! last just before `exec`, the zygote's seccomp filters built here.
//!
//! Functions share their runtime's zygote, so each worker then separates itself from the
//! others (in the runtime's `isolation` module, before any user code): new mount, IPC and
//! network namespaces of its own ([`WORKER_NAMESPACES`]), with private size-capped `/tmp` and
//! `/dev/shm`, its own pseudo-terminals, a read-only `/proc/sys` and a loopback of its own. That is
//! why the zygote keeps `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` *inside* the sandbox's user namespace
//! and may call `unshare` with exactly those flags and `mount`; then the worker drops every
//! capability, installs the stricter worker filter (passed to the zygote on
//! [`WORKER_SECCOMP_FD`]) and scopes itself with Landlock. A worker's namespaces die with it.
//!
//! When the gateway runs as root, sandboxed code must also run as an unprivileged host uid of
//! its own. That uid cannot traverse directories like `/root` where the runtime often lives,
//! so a small helper (`skython sandbox-exec`, [`exec_staged`]) first bind-mounts the runtime's
//! directories into a private staging tmpfs, as root and in a mount namespace of its own, then
//! drops to the sandbox uid and execs `bwrap`. Nothing of this happens in the gateway's process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// How the zygote is confined.
#[derive(Debug, Clone, PartialEq)]
pub enum Sandbox {
    /// Unconfined: only for trusted code (`--insecure-no-sandbox`), or where something else is
    /// the sandbox (a restricted Kubernetes pod).
    None,
    Bubblewrap(BwrapConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BwrapConfig {
    pub bwrap: PathBuf,
    /// Set when the gateway runs as root: sandboxed code runs as this host uid/gid, through the
    /// staging helper.
    pub drop_to: Option<DropTo>,
    /// Size cap of each worker's private `/tmp`.
    pub tmp_bytes: u64,
    /// Size cap of each worker's private `/dev/shm`.
    pub shm_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DropTo {
    pub uid: u32,
    pub gid: u32,
    /// The `skython` binary, whose `sandbox-exec` subcommand is the staging helper.
    pub helper: PathBuf,
    /// An empty directory to mount the staging tmpfs on (only in the helper's mount namespace).
    pub stage_dir: PathBuf,
    /// Processes and threads the sandbox uid may have in all (`RLIMIT_NPROC` of workers).
    pub max_procs: u32,
}

/// System directories that every sandbox sees read-only, when they exist: the dynamic loader,
/// shared libraries, and TLS roots for `requests`. Never `/etc` as a whole (passwords, secrets).
const SYSTEM_RO: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/localtime",
    "/etc/ld.so.cache",
];

/// The uid and gid the code sees inside its user namespace.
pub const INNER_ID: u32 = 1000;
/// The zygote's seccomp programs reach bwrap on these descriptors (3 is the zygote's control
/// socket).
const SECCOMP_FDS: [i32; 2] = [4, 5];
/// The workers' program reaches the zygote on this one; it reads it once at start.
pub const WORKER_SECCOMP_FD: i32 = 6;
/// The zygote's own `/tmp` (workers mount theirs over it).
const ZYGOTE_TMP_BYTES: u64 = 1 << 20;
/// The namespaces each worker makes for itself: the `unshare` flags the zygote's filter allows.
pub const WORKER_NAMESPACES: u64 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET) as u64;

/// The command that starts `argv` (the zygote) inside the sandbox, as program and arguments,
/// with the descriptors it must inherit at fixed numbers.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// (descriptor, the number it must have in the child)
    pub fds: Vec<(OwnedFd, i32)>,
}

/// A host directory the runtime reads, and where the sandbox sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub host: PathBuf,
    pub inside: PathBuf,
}

/// Where the runtime's own Python files appear in the sandbox (not at their host path, which
/// is inside the data directory).
pub const RUNTIME_INSIDE: &str = "/opt/skython/runtime";

/// Where each mount comes from: the host directory, or its staged copy when the helper runs.
fn sources(cfg: &BwrapConfig, mounts: &[Mount]) -> Vec<(PathBuf, PathBuf)> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| match &cfg.drop_to {
            Some(d) => (d.stage_dir.join(i.to_string()), m.inside.clone()),
            None => (m.host.clone(), m.inside.clone()),
        })
        .collect()
}

/// The `bwrap` arguments, as a pure function of the configuration (unit-tested).
pub fn bwrap_args(cfg: &BwrapConfig, mounts: &[Mount], argv: &[OsString]) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&[
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--uid",
        &INNER_ID.to_string(),
        "--gid",
        &INNER_ID.to_string(),
        "--hostname",
        "skython",
        "--die-with-parent",
        "--new-session",
        // Only inside the sandbox's user namespace, and dropped by each worker (module doc).
        "--cap-add",
        "CAP_SYS_ADMIN",
        "--cap-add",
        "CAP_NET_ADMIN",
        "--proc",
        "/proc",
        // The device nodes only, read-only: workers mount their own /dev/shm and /dev/pts.
        "--dev",
        "/dev",
        "--remount-ro",
        "/dev",
        "--size",
        &ZYGOTE_TMP_BYTES.to_string(),
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/tmp",
    ]);
    for dir in SYSTEM_RO {
        push(&["--ro-bind-try", dir, dir]);
    }
    for (src, dst) in sources(cfg, mounts) {
        a.extend(["--ro-bind".into(), src.into(), dst.into_os_string()]);
    }
    // bwrap's root is a tmpfs owned by the sandbox uid, shared by every worker: read-only, or
    // it would be a place where tenants leave each other files.
    a.extend(["--remount-ro".into(), "/".into()]);
    for fd in SECCOMP_FDS {
        a.extend(["--add-seccomp-fd".into(), fd.to_string().into()]);
    }
    a.push("--".into());
    a.extend(argv.iter().cloned());
    a
}

/// The whole launch: `bwrap …` directly, or through the staging helper when dropping to
/// another uid.
pub fn launch(cfg: &BwrapConfig, mounts: &[Mount], argv: &[OsString]) -> std::io::Result<Launch> {
    let bwrap = bwrap_args(cfg, mounts, argv);
    let filters = seccomp_filters().map_err(std::io::Error::other)?;
    let fds = filters
        .zygote
        .iter()
        .zip(SECCOMP_FDS)
        .chain([(&filters.worker, WORKER_SECCOMP_FD)])
        .map(|(prog, n)| Ok((program_pipe(prog)?, n)))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(match &cfg.drop_to {
        None => Launch {
            program: cfg.bwrap.clone(),
            args: bwrap,
            fds,
        },
        Some(d) => {
            let mut args: Vec<OsString> = vec![
                "sandbox-exec".into(),
                "--stage".into(),
                d.stage_dir.clone().into(),
                "--uid".into(),
                d.uid.to_string().into(),
                "--gid".into(),
                d.gid.to_string().into(),
            ];
            for m in mounts {
                args.extend(["--bind".into(), m.host.clone().into_os_string()]);
            }
            args.push("--".into());
            args.push(cfg.bwrap.clone().into());
            args.extend(bwrap);
            Launch {
                program: d.helper.clone(),
                args,
                fds,
            }
        }
    })
}

/// Syscalls that functions never need and that widen the kernel's attack surface: tracing and
/// reading other processes, mounting, namespaces, BPF, io_uring, userfaultfd, perf, keyrings,
/// kernel modules, kexec, clocks, swap, reboot, handles that bypass paths.
fn denied_syscalls() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_userfaultfd,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_syslog,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_quotactl,
        libc::SYS_fanotify_init,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_lookup_dcookie,
    ]);
    v
}

/// `clone` flags that create namespaces (`unshare` is denied outright).
const CLONE_NEW_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

fn target_arch() -> Result<seccompiler::TargetArch, seccompiler::Error> {
    std::env::consts::ARCH
        .try_into()
        .map_err(seccompiler::Error::Backend)
}

/// The seccomp programs of a sandbox.
pub struct Filters {
    /// Installed by bwrap for the zygote (so inherited by every worker): the deny list (EPERM)
    /// less what a worker needs to separate itself (`unshare(WORKER_NAMESPACES)`, `mount`), and
    /// `clone3` answering ENOSYS, whose flags a filter cannot read (they are in memory): the C
    /// library then falls back to `clone`, whose flags the deny list checks.
    pub zygote: Vec<seccompiler::BpfProgram>,
    /// Added by each worker once separated: the whole deny list.
    pub worker: seccompiler::BpfProgram,
}

pub fn seccomp_filters() -> Result<Filters, seccompiler::Error> {
    let arch = target_arch()?;
    let deny = |rules: BTreeMap<i64, Vec<SeccompRule>>| {
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .and_then(seccompiler::BpfProgram::try_from)
    };
    let flag_rule = |op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(0, SeccompCmpArgLen::Qword, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    let mut worker: BTreeMap<i64, Vec<SeccompRule>> =
        denied_syscalls().into_iter().map(|s| (s, vec![])).collect();
    let clone_rules = CLONE_NEW_FLAGS
        .iter()
        .map(|&flag| flag_rule(SeccompCmpOp::MaskedEq(flag), flag))
        .collect::<Result<Vec<_>, _>>()?;
    worker.insert(libc::SYS_clone, clone_rules);
    let mut zygote = worker.clone();
    zygote.remove(&libc::SYS_mount);
    zygote.insert(
        libc::SYS_unshare,
        vec![flag_rule(SeccompCmpOp::Ne, WORKER_NAMESPACES)?],
    );
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(Filters {
        zygote: vec![deny(zygote)?, clone3.try_into()?],
        worker: deny(worker)?,
    })
}

/// A program as bwrap and the zygote read it (a raw `struct sock_filter` array), on a pipe.
fn program_pipe(prog: &seccompiler::BpfProgram) -> std::io::Result<OwnedFd> {
    let bytes: Vec<u8> = prog
        .iter()
        .flat_map(|f| {
            let mut b = Vec::with_capacity(8);
            b.extend_from_slice(&f.code.to_ne_bytes());
            b.push(f.jt);
            b.push(f.jf);
            b.extend_from_slice(&f.k.to_ne_bytes());
            b
        })
        .collect();
    // A pipe holds 64 KiB, far more than these programs (8 bytes per instruction).
    // Close-on-exec until moved into place, so no other child holds the write end open.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut w = std::fs::File::from(write);
    std::io::Write::write_all(&mut w, &bytes)?;
    Ok(read)
}

/// The staging helper (`skython sandbox-exec`): in a private mount namespace, mounts a tmpfs on
/// `stage`, bind-mounts each of `dirs` read-only at `stage/<index>`, drops to `uid`/`gid`, and
/// execs `argv`. Returns only on failure.
pub fn exec_staged(
    stage: &Path,
    dirs: &[PathBuf],
    uid: u32,
    gid: u32,
    argv: &[OsString],
) -> std::io::Error {
    match stage_and_drop(stage, dirs, uid, gid) {
        Ok(()) => {}
        Err(e) => return e,
    }
    let Some(program) = argv.first() else {
        return std::io::Error::other("sandbox-exec: no command");
    };
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(program).args(&argv[1..]),
    );
    std::io::Error::new(
        err.kind(),
        format!("executing {}: {err}", Path::new(program).display()),
    )
}

fn stage_and_drop(stage: &Path, dirs: &[PathBuf], uid: u32, gid: u32) -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    let ctx = |what: &str| {
        let what = what.to_string();
        move |e: nix::Error| std::io::Error::other(format!("sandbox-exec: {what}: {e}"))
    };
    std::fs::create_dir_all(stage)?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(ctx("unshare"))?;
    // Our mounts must not propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx("making mounts private"))?;
    mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(ctx("mounting the staging tmpfs"))?;
    for (i, dir) in dirs.iter().enumerate() {
        let target = stage.join(i.to_string());
        std::fs::create_dir(&target)?;
        mount(
            Some(dir.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(ctx(&format!("binding {}", dir.display())))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(ctx(&format!("making {} read-only", dir.display())))?;
    }
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    nix::unistd::setgroups(&[]).map_err(ctx("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(ctx("setgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(ctx("setuid"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(drop_to: Option<DropTo>) -> BwrapConfig {
        BwrapConfig {
            bwrap: "bwrap".into(),
            drop_to,
            tmp_bytes: 64 << 20,
            shm_bytes: 64 << 20,
        }
    }

    fn pairs(args: &[OsString], flag: &str) -> Vec<(String, String)> {
        args.windows(3)
            .filter(|w| w[0] == flag)
            .map(|w| (w[1].to_string_lossy().into(), w[2].to_string_lossy().into()))
            .collect()
    }

    #[test]
    fn every_namespace_is_new_and_the_command_comes_last() {
        let argv = [
            "/venv/bin/python".into(),
            "-m".into(),
            "skython_runtime".into(),
        ];
        let venv = Mount {
            host: "/venv".into(),
            inside: "/venv".into(),
        };
        let a = bwrap_args(&cfg(None), &[venv], &argv);
        for flag in [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
        ] {
            assert!(a.contains(&flag.into()), "{flag}");
        }
        let dash = a.iter().position(|x| x == "--").unwrap();
        assert_eq!(&a[dash + 1..], &argv);
        let size = a.iter().position(|x| x == "--size").unwrap();
        assert_eq!(
            (a[size + 1].clone(), a[size + 2].clone()),
            (ZYGOTE_TMP_BYTES.to_string().into(), "--tmpfs".into())
        );
        let caps: Vec<_> = a
            .windows(2)
            .filter(|w| w[0] == "--cap-add")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(
            caps,
            ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"],
            "the only capabilities kept, for the workers' own namespaces"
        );
        let root = a.iter().rposition(|x| x == "--remount-ro").unwrap();
        assert_eq!(
            a[root + 1],
            "/",
            "the root is read-only once everything is mounted"
        );
        assert!(
            !a[root..].iter().any(|x| x == "--ro-bind" || x == "--tmpfs"),
            "no mount after it"
        );
        let dev = a.iter().position(|x| x == "--dev").unwrap();
        assert_eq!(&a[dev + 1..dev + 4], ["/dev", "--remount-ro", "/dev"]);
        assert_eq!(pairs(&a, "--ro-bind"), [("/venv".into(), "/venv".into())]);
        assert!(
            !pairs(&a, "--ro-bind-try")
                .iter()
                .any(|(s, _)| s == "/etc" || s.starts_with("/root"))
        );
    }

    #[test]
    fn a_root_gateway_stages_the_runtime_and_drops_to_the_sandbox_uid() {
        let drop_to = DropTo {
            uid: 10001,
            gid: 10001,
            helper: "/bin/skython".into(),
            stage_dir: "/run/stage".into(),
            max_procs: 1024,
        };
        let mounts = [
            Mount {
                host: "/root/.pyenv/versions/3.11.7".into(),
                inside: "/root/.pyenv/versions/3.11.7".into(),
            },
            Mount {
                host: "/data/runtime".into(),
                inside: RUNTIME_INSIDE.into(),
            },
        ];
        let l = launch(&cfg(Some(drop_to)), &mounts, &["python".into()]).unwrap();
        assert_eq!(l.program, PathBuf::from("/bin/skython"));
        let args: Vec<String> = l.args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            &args[..7],
            [
                "sandbox-exec",
                "--stage",
                "/run/stage",
                "--uid",
                "10001",
                "--gid",
                "10001"
            ]
        );
        assert_eq!(
            pairs(&l.args, "--ro-bind"),
            [
                ("/run/stage/0".into(), "/root/.pyenv/versions/3.11.7".into()),
                ("/run/stage/1".into(), RUNTIME_INSIDE.into())
            ]
        );
        assert_eq!(
            l.fds.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [SECCOMP_FDS[0], SECCOMP_FDS[1], WORKER_SECCOMP_FD]
        );
        let binds: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--bind")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            binds,
            ["/root/.pyenv/versions/3.11.7", "/data/runtime"],
            "the helper stages the host paths"
        );
    }

    #[test]
    fn the_seccomp_programs_compile() {
        let f = seccomp_filters().unwrap();
        assert_eq!(f.zygote.len(), 2);
        assert!(
            f.worker.len() > denied_syscalls().len(),
            "one check per denied syscall at least"
        );
        assert_ne!(f.zygote[0], f.worker, "the zygote may still mount");
    }
}
