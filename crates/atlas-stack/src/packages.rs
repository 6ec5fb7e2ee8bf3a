//! Installing PostgreSQL 15, wal2json and Redis with apt when they are missing.

use std::path::Path;

use crate::StackError;
use crate::process::{Cmd, is_root};

/// (Debian package, a file it installs that we need).
const REQUIRED: &[(&str, &str)] = &[
    ("postgresql-15", "/usr/lib/postgresql/15/bin/initdb"),
    (
        "postgresql-15-wal2json",
        "/usr/lib/postgresql/15/lib/wal2json.so",
    ),
    ("redis-server", "/usr/bin/redis-server"),
    ("redis-tools", "/usr/bin/redis-cli"),
];

const POLICY_RC: &str = "/usr/sbin/policy-rc.d";
const NO_MAIN_CLUSTER: &str = "/etc/postgresql-common/createcluster.d/atlas-no-main-cluster.conf";

/// What the HA stack needs on top: Patroni, etcd's server and its `etcdctl`.
const HA: &[(&str, &str)] = &[
    ("patroni", "/usr/bin/patroni"),
    ("etcd-server", "/usr/bin/etcd"),
    ("etcd-client", "/usr/bin/etcdctl"),
];

/// The required packages that are not installed.
pub fn missing_packages() -> Vec<&'static str> {
    missing(REQUIRED)
}

fn missing(required: &[(&'static str, &str)]) -> Vec<&'static str> {
    required
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect()
}

/// Installs missing packages as root; otherwise reports the exact command to run.
///
/// Installing must not touch the machine's default services: Debian would create and start a
/// `15/main` cluster on 5432 and a Redis on 6379. A temporary `policy-rc.d` keeps services
/// from starting and a `createcluster.d` drop-in keeps the main cluster from being created;
/// both are removed afterwards (only if we created them).
pub fn ensure_packages() -> Result<(), StackError> {
    ensure(REQUIRED)
}

/// [`ensure_packages`] for the HA stack's Patroni and etcd.
pub fn ensure_ha_packages() -> Result<(), StackError> {
    ensure(HA)
}

pub(crate) fn ensure(required: &[(&'static str, &str)]) -> Result<(), StackError> {
    let missing = missing(required);
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!(
        "sudo apt-get update && sudo apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        return Err(StackError::MissingPackages {
            packages: missing.iter().map(|s| (*s).to_owned()).collect(),
            command,
        });
    }
    let io = |path: &str| {
        let path = path.to_owned();
        move |source| StackError::Io {
            path: path.into(),
            source,
        }
    };
    let made_policy = !Path::new(POLICY_RC).exists();
    if made_policy {
        std::fs::write(
            POLICY_RC,
            "#!/bin/sh\n# atlas stack: do not start services during install\nexit 101\n",
        )
        .map_err(io(POLICY_RC))?;
        Cmd::new("chmod")
            .args(["755", POLICY_RC])
            .run("chmod policy-rc.d")?;
    }
    let made_drop_in = !Path::new(NO_MAIN_CLUSTER).exists();
    if made_drop_in {
        std::fs::create_dir_all("/etc/postgresql-common/createcluster.d")
            .map_err(io("/etc/postgresql-common/createcluster.d"))?;
        std::fs::write(NO_MAIN_CLUSTER, "create_main_cluster = false\n")
            .map_err(io(NO_MAIN_CLUSTER))?;
    }
    let result = Cmd::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run("apt-get update")
        .and_then(|_| {
            Cmd::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(missing.iter().copied())
                .env("DEBIAN_FRONTEND", "noninteractive")
                .run("apt-get install")
        });
    if made_policy {
        let _ = std::fs::remove_file(POLICY_RC);
    }
    if made_drop_in {
        let _ = std::fs::remove_file(NO_MAIN_CLUSTER);
    }
    result.map(|_| ())
}
