//! What the cluster reports about itself, read in one place: replication slots and the
//! primary's WAL position, typed. Status, the monitor, CDC, the benches and the tests read
//! them through here.

use tokio_postgres::Client;

/// How much WAL a replication slot still has (`pg_replication_slots.wal_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WalStatus {
    /// Within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size`, kept for the slot (or by `wal_keep_size`).
    Extended,
    /// No longer guaranteed: WAL may be removed at the next checkpoint.
    Unreserved,
    /// Some WAL it needs is gone: its consumer can never catch up.
    Lost,
}

impl WalStatus {
    /// Its name as PostgreSQL writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WalStatus::Reserved => "reserved",
            WalStatus::Extended => "extended",
            WalStatus::Unreserved => "unreserved",
            WalStatus::Lost => "lost",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "reserved" => Some(WalStatus::Reserved),
            "extended" => Some(WalStatus::Extended),
            "unreserved" => Some(WalStatus::Unreserved),
            "lost" => Some(WalStatus::Lost),
            _ => None,
        }
    }
}

impl std::fmt::Display for WalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replication slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Its name.
    pub name: String,
    /// The output plugin of a logical slot (`None`: physical).
    pub plugin: Option<String>,
    /// The database of a logical slot.
    pub database: Option<String>,
    /// Whether a session consumes it right now.
    pub active: bool,
    /// How much WAL it still has (`None`: it reserves none, e.g. created without reserving).
    pub wal_status: Option<WalStatus>,
    /// The larger age of its `xmin` and `catalog_xmin`: how far it holds vacuum back.
    pub xmin_age: Option<i32>,
    /// WAL it retains in bytes: the primary's position minus its `restart_lsn`.
    pub retained_bytes: Option<i64>,
    /// How far its consumer has confirmed, as a byte offset (a logical slot's
    /// `confirmed_flush_lsn`, else its `restart_lsn`): a consumer that peeks and then
    /// advances the slot is never `active` between calls, but moves this.
    pub confirmed: Option<u64>,
}

/// Every column [`Slot`] reads, in its order.
macro_rules! slot_columns {
    () => {
        "SELECT slot_name::text, plugin::text, database::text, active, wal_status, \
                greatest(age(xmin), age(catalog_xmin)), \
                (pg_current_wal_lsn() - restart_lsn)::bigint, \
                (coalesce(confirmed_flush_lsn, restart_lsn) - '0/0'::pg_lsn)::bigint \
         FROM pg_catalog.pg_replication_slots"
    };
}

fn slot(row: &tokio_postgres::Row) -> Slot {
    Slot {
        name: row.get(0),
        plugin: row.get(1),
        database: row.get(2),
        active: row.get(3),
        wal_status: row
            .get::<_, Option<String>>(4)
            .as_deref()
            .and_then(WalStatus::parse),
        xmin_age: row.get(5),
        retained_bytes: row.get(6),
        confirmed: row
            .get::<_, Option<i64>>(7)
            .and_then(|p| u64::try_from(p).ok()),
    }
}

/// Every replication slot of the cluster, by name (read on the primary).
pub async fn slots(client: &Client) -> Result<Vec<Slot>, tokio_postgres::Error> {
    Ok(client
        .query(concat!(slot_columns!(), " ORDER BY 1"), &[])
        .await?
        .iter()
        .map(slot)
        .collect())
}

/// The slot named `name`, if there is one (read on the primary).
pub async fn find_slot(client: &Client, name: &str) -> Result<Option<Slot>, tokio_postgres::Error> {
    Ok(client
        .query_opt(concat!(slot_columns!(), " WHERE slot_name = $1"), &[&name])
        .await?
        .as_ref()
        .map(slot))
}

/// Drops the logical slots of `database` that no session consumes (they keep a database from
/// being dropped); returns how many it dropped.
pub async fn drop_idle_slots_of(
    client: &Client,
    database: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots \
             WHERE database = $1 AND NOT active",
            &[&database],
        )
        .await
}

/// The primary's WAL position as a byte offset (`pg_lsn` has no binary mapping in
/// tokio-postgres). For a prepared statement on a hot path.
pub const WAL_POSITION: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";

/// The primary's current WAL position as a byte offset: after a commit, at or past it.
pub async fn wal_position(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let position: i64 = client.query_one(WAL_POSITION, &[]).await?.get(0);
    Ok(u64::try_from(position).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_status_round_trips_and_refuses_the_unknown() {
        for s in [
            WalStatus::Reserved,
            WalStatus::Extended,
            WalStatus::Unreserved,
            WalStatus::Lost,
        ] {
            assert_eq!(WalStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(WalStatus::parse(""), None);
    }
}

/// Whether the connected database is a Citus database (the extension is created in it).
pub async fn is_citus(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus'",
            &[],
        )
        .await?
        .is_some())
}

/// One node of a Citus cluster as the coordinator's metadata has it, with what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CitusNode {
    /// Citus's node id.
    pub node_id: i32,
    /// Host name as registered.
    pub host: String,
    /// Port as registered.
    pub port: i32,
    /// The coordinator (group 0) rather than a worker.
    pub coordinator: bool,
    /// Whether Citus considers it active.
    pub active: bool,
    /// Placements of distributed-table shards on it (reference-table copies not counted).
    pub shards: i64,
    /// Bytes of every placement on it (reference copies included).
    pub bytes: i64,
}

/// Every primary node of the Citus cluster with its shard count and bytes.
pub async fn citus_nodes(client: &Client) -> Result<Vec<CitusNode>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nodeid, n.nodename, n.nodeport, n.groupid = 0, n.isactive, \
                    count(s.shardid) FILTER (WHERE s.citus_table_type = 'distributed'), \
                    coalesce(sum(s.shard_size), 0)::bigint \
             FROM pg_dist_node n \
             LEFT JOIN citus_shards s ON s.nodename = n.nodename AND s.nodeport = n.nodeport \
             WHERE n.noderole = 'primary' \
             GROUP BY 1, 2, 3, 4, 5 ORDER BY 1",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(CitusNode {
                node_id: r.try_get(0)?,
                host: r.try_get(1)?,
                port: r.try_get(2)?,
                coordinator: r.try_get(3)?,
                active: r.try_get(4)?,
                shards: r.try_get(5)?,
                bytes: r.try_get(6)?,
            })
        })
        .collect()
}

/// Registers a worker with the coordinator (`citus_add_node`; a no-op when it is registered);
/// reference tables are copied to it. The worker must have the database with the citus
/// extension created in it. Returns its node id.
pub async fn citus_add_worker(
    client: &Client,
    host: &str,
    port: i32,
) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT citus_add_node($1::text, $2::integer)",
            &[&host, &port],
        )
        .await?
        .get(0))
}

/// Moves shards until every worker holds a fair share while Atlas keeps running. Shards are
/// copied with writes to the moving shard group blocked for its copy (`block_writes`; reads
/// and every other shard go on), not by logical replication: PostgreSQL 15's apply worker
/// refuses tables with FORCE ROW LEVEL SECURITY unless its role bypasses RLS, and Citus's
/// move subscription runs as a plain member of the tables' owner. Blocks until the moves are
/// done; returns how many shard moves were planned.
pub async fn citus_rebalance(client: &Client) -> Result<i64, tokio_postgres::Error> {
    let planned: i64 = client
        .query_one(
            "SELECT count(*) FROM get_rebalance_table_shards_plan()",
            &[],
        )
        .await?
        .get(0);
    client
        .execute(
            "SELECT rebalance_table_shards(shard_transfer_mode := 'block_writes')",
            &[],
        )
        .await?;
    Ok(planned)
}

/// Puts one tenant on a shard (group) of its own, split out of the shard it shares
/// (`isolate_tenant_to_new_shard` with CASCADE for the co-located tables; writes to the split
/// shard group wait for the copy, as in [`citus_rebalance`]). Returns the new shard id of
/// `entities`.
pub async fn citus_isolate_tenant(
    client: &Client,
    tenant_id: i64,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT isolate_tenant_to_new_shard('public.entities', $1::bigint, 'CASCADE', \
                 shard_transfer_mode := 'block_writes')",
            &[&tenant_id],
        )
        .await?
        .get(0))
}
