//! Errors of the stack crate.

use std::path::PathBuf;

/// Why the stack could not be brought up, inspected or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// Required packages are missing and we are not root to install them.
    #[error("missing packages {packages:?}; install them with:\n    {command}")]
    MissingPackages {
        /// Debian package names.
        packages: Vec<String>,
        /// The exact command to run.
        command: String,
    },
    /// A program failed.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// What was being done.
        what: String,
        /// Exit status.
        status: String,
        /// Its stderr and stdout (tail).
        output: String,
    },
    /// A program could not be started at all.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The stack's state file is unreadable.
    #[error("stack state {path} is invalid: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Another server (not this stack's) already listens on one of the stack's ports.
    #[error(
        "port {port} is already used by another server; stop it (or the other stack) before starting {what} here"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// The service that needs it.
        what: String,
    },
    /// A switchover candidate that is not a standby of the HA stack.
    #[error("cannot switch over to `{name}`: {reason}")]
    BadCandidate {
        /// The name given.
        name: String,
        /// Why not, and which members could be.
        reason: String,
    },
    /// The Citus extension is not installed.
    #[error("Citus is not installed into PostgreSQL 15: {how}")]
    CitusMissing {
        /// What to do about it.
        how: String,
    },
    /// A service did not become ready in time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// The service.
        what: String,
    },
}
