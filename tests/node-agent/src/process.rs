//! A container's process: forked into the pod's network namespace and a mount namespace of its
//! own (where the pod's volumes are bind-mounted), in a session of its own so that a signal
//! reaches everything it started (redis-server forks for BGSAVE). I/O: fork/exec.

use std::ffi::CString;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;

/// A directory of the pod's bind-mounted at `target` in the container.
#[derive(Clone, Debug)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything one process of a pod needs.
#[derive(Clone, Debug)]
pub struct Spawn {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub netns: String,
    pub mounts: Vec<Mount>,
    pub cwd: PathBuf,
    pub log: PathBuf,
}

pub fn spawn(spec: &Spawn) -> anyhow::Result<tokio::process::Child> {
    let netns = std::fs::File::open(Path::new("/run/netns").join(&spec.netns))
        .with_context(|| format!("opening network namespace {}", spec.netns))?;
    // Mount points are made on the host as empty directories: a mount namespace hides what is
    // mounted, not the directories it is mounted on.
    let mut mounts = Vec::new();
    for mount in &spec.mounts {
        std::fs::create_dir_all(&mount.target)
            .with_context(|| format!("making mount point {}", mount.target.display()))?;
        mounts.push((
            cstring(&mount.source)?,
            cstring(&mount.target)?,
            mount.read_only,
        ));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;
    let program = spec.argv.first().context("a container with no command")?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    let netns_fd = netns.as_raw_fd();
    let root = CString::new("/")?;
    // SAFETY: only async-signal-safe system calls between fork and exec, on memory allocated
    // before the fork; `netns` outlives the spawn (it is dropped at the end of this function).
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            let private = libc::MS_REC | libc::MS_PRIVATE;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ))?;
            for (source, target, read_only) in &mounts {
                let none = std::ptr::null();
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                if *read_only {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                    check(libc::mount(
                        none,
                        target.as_ptr(),
                        none,
                        flags,
                        std::ptr::null(),
                    ))?;
                }
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", spec.argv.join(" ")))?;
    drop(netns);
    Ok(child)
}

/// Signals the process group a spawned process leads.
pub fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstring(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL", path.display()))
}
