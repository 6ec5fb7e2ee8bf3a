//! Running the service programs, as the postgres OS user where PostgreSQL demands it.

use std::path::Path;
use std::process::{Command, Output};

use crate::StackError;

/// True when this process runs as root.
pub(crate) fn is_root() -> bool {
    // The real uid from /proc: no libc dependency for one check.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Gives a path to the postgres OS user (only when root; otherwise we already own it).
pub(crate) fn chown_to_postgres(path: &Path) -> Result<(), StackError> {
    if !is_root() {
        return Ok(());
    }
    Cmd::new("chown")
        .args(["postgres:postgres", &path.to_string_lossy()])
        .run("chown to postgres")
        .map(|_| ())
}

/// A command line, run to completion.
pub(crate) struct Cmd {
    program: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Cmd {
    pub(crate) fn new(program: &str) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// A PostgreSQL program: through `runuser -u postgres` when root (initdb and postgres
    /// refuse to run as root).
    pub(crate) fn pg(program: &str) -> Self {
        if is_root() {
            Self::new("runuser").args(["-u", "postgres", "--", program])
        } else {
            Self::new(program)
        }
    }

    pub(crate) fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    pub(crate) fn args<'a>(mut self, a: impl IntoIterator<Item = &'a str>) -> Self {
        self.args.extend(a.into_iter().map(str::to_owned));
        self
    }

    pub(crate) fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_owned(), v.to_owned()));
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c.stdin(std::process::Stdio::null());
        c
    }

    /// Runs and returns the output whatever the exit status.
    pub(crate) fn output_quiet(&self) -> Result<Output, StackError> {
        self.command().output().map_err(|source| StackError::Spawn {
            program: self.program.clone(),
            source,
        })
    }

    /// Runs; a non-zero exit is an error carrying the program's output. Returns stdout.
    pub(crate) fn run(&self, what: &str) -> Result<String, StackError> {
        let out = self.output_quiet()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&stdout);
        let tail: String = text
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(StackError::Command {
            what: what.to_owned(),
            status: out.status.to_string(),
            output: tail,
        })
    }
}

/// The postgres OS user's (uid, gid), from /etc/passwd.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == "postgres").then_some(())?;
        let (uid, gid) = (f.nth(1)?, f.next()?);
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// Starts a long-running service in the background, in its own process group (a Ctrl-C of
/// the `atlas` that started it does not reach it), with stdout and stderr appended to `log`;
/// as the postgres OS user when `as_postgres` and we are root. Returns its pid.
pub(crate) fn spawn_daemon(
    program: &str,
    args: &[&str],
    log: &Path,
    as_postgres: bool,
) -> Result<u32, StackError> {
    use std::os::unix::process::CommandExt;
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| StackError::Io {
                path: log.to_path_buf(),
                source,
            })
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?)
        .process_group(0);
    if as_postgres && is_root() {
        let (uid, gid) = postgres_ids().ok_or_else(|| StackError::Spawn {
            program: program.to_owned(),
            source: std::io::Error::other("no postgres user in /etc/passwd"),
        })?;
        cmd.uid(uid).gid(gid).env("HOME", "/var/lib/postgresql");
    }
    let child = cmd.spawn().map_err(|source| StackError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    Ok(child.id())
}

/// Whether `pid` is a live (not zombie) process whose command line contains `needle`.
pub(crate) fn pid_runs(pid: u32, needle: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
}

/// Sends `signal` (e.g. "TERM", "KILL", "STOP", "CONT") to `pid`.
pub(crate) fn signal(pid: u32, signal: &str) -> Result<(), StackError> {
    Cmd::new("kill")
        .args([format!("-{signal}").as_str(), pid.to_string().as_str()])
        .run(&format!("kill -{signal} {pid}"))
        .map(|_| ())
}

/// The postmaster's pid from a data directory's `postmaster.pid` (its first line).
pub(crate) fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}
