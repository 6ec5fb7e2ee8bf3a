//! The source side: the logical slot of the publication, read with the SQL interface.
//! Peeking does not consume; the slot moves only when [`Source::advance`] is called, after the
//! sinks confirmed — so a crash in between replays the same changes (at-least-once).

use atlas_store::cluster::{self, Slot};
use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use crate::CdcError;

/// The publication Atlas's schema creates.
pub const PUBLICATION: &str = "eav_cdc";

/// One peeked message.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// Its LSN.
    pub lsn: u64,
    /// The pgoutput bytes.
    pub data: Vec<u8>,
}

/// Connects with the session output formats every value's text is read by (`typed`): the
/// stream and the snapshot must render values alike.
async fn connect_formatted(url: &str) -> Result<Client, CdcError> {
    let client = atlas_store::connect(url)
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3; \
             SET IntervalStyle = 'iso_8601'; SET bytea_output = 'hex'",
        )
        .await
        .map_err(db("setting the session formats"))?;
    Ok(client)
}

/// A connection to the primary's Atlas database that reads one slot.
pub struct Source {
    client: Client,
    slot: String,
    database: String,
}

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CdcError {
    move |source| CdcError::Db { step, source }
}

impl Source {
    /// Connects with a role that may use replication slots (REPLICATION or superuser) and
    /// fixes the session's output formats: the text of every value is read by them.
    pub async fn connect(url: &str, slot: &str) -> Result<Self, CdcError> {
        let client = connect_formatted(url).await?;
        let database: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(db("reading the database name"))?
            .get(0);
        // On a Citus coordinator the tenant tables' rows are written on the workers: a slot
        // here would see none of them, and a slot per worker needs a merge in commit order
        // that this consumer does not do. Refuse rather than stream an empty history.
        let citus = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus'",
                &[],
            )
            .await
            .map_err(db("checking for Citus"))?
            .is_some();
        if citus {
            return Err(CdcError::Config(format!(
                "atlas cdc does not run on a Citus cluster (database {database} has the citus \
                 extension): the rows are written on the workers, which would each need a slot \
                 (citus.enable_change_data_capture) and a merge of their streams in commit order \
                 per tenant, which atlas cdc does not do yet; use a single-node or HA deployment \
                 for CDC"
            )));
        }
        Ok(Self {
            client,
            slot: slot.to_owned(),
            database,
        })
    }

    /// The source database's name (the envelope's `source.db`).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The name of the slot this source reads.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// Where the source's oldest time-series partition starts (None: it has none): the
    /// primary's retention drops whole partitions, so nothing older is stored there.
    pub async fn oldest_partition(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, CdcError> {
        self.client
            .query_one("SELECT min(lo) FROM public.ts_partition_bounds()", &[])
            .await
            .map_err(db("reading the oldest partition"))?
            .try_get(0)
            .map_err(db("reading the oldest partition"))
    }

    /// Creates the pgoutput slot when missing; true when it was created now.
    pub async fn ensure_slot(&self) -> Result<bool, CdcError> {
        let exists = cluster::find_slot(&self.client, &self.slot)
            .await
            .map_err(db("looking up the slot"))?;
        if let Some(Slot {
            plugin, database, ..
        }) = exists
        {
            if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(&self.database)
            {
                return Err(CdcError::Config(format!(
                    "slot {} exists but decodes {} for database {} (want pgoutput for {})",
                    self.slot,
                    plugin.unwrap_or_else(|| "physical WAL".into()),
                    database.unwrap_or_default(),
                    self.database
                )));
            }
            return Ok(false);
        }
        let published: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&PUBLICATION],
            )
            .await
            .map_err(db("looking up the publication"))?
            .get(0);
        if !published {
            return Err(CdcError::Config(format!(
                "publication {PUBLICATION} is missing: run `atlas migrate` first"
            )));
        }
        match self
            .client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&self.slot],
            )
            .await
        {
            Ok(_) => Ok(true),
            // Another consumer created it first.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                Ok(false)
            }
            Err(e) => Err(CdcError::Db {
                step: "creating the slot",
                source: e,
            }),
        }
    }

    /// The next changes after the confirmed position, whole transactions only, stopping after
    /// the transaction that reaches `max_messages`.
    ///
    /// With synchronous replication on, only transactions the synchronous standby has
    /// flushed: logical decoding reads the primary's local WAL, where a commit appears before
    /// the standby confirms it, and a failover at that moment would leave the analytics store
    /// with a change the new primary never had — and with a recorded position ahead of the
    /// new timeline's first commits, which it would then skip.
    pub async fn peek(&self, max_messages: usize) -> Result<Vec<Peeked>, CdcError> {
        let n = i32::try_from(max_messages).unwrap_or(i32::MAX);
        let rows = self
            .client
            .query(
                "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes($1, \
                   CASE WHEN current_setting('synchronous_standby_names') = '' THEN NULL \
                        ELSE coalesce((SELECT min(flush_lsn) FROM pg_stat_replication \
                                       WHERE sync_state IN ('sync', 'quorum')), '0/0') END, \
                   $2, 'proto_version', '1', 'publication_names', $3, 'messages', 'true')",
                &[&self.slot, &n, &PUBLICATION],
            )
            .await
            .map_err(db("peeking at the slot"))?;
        Ok(rows
            .into_iter()
            .map(|r| Peeked {
                lsn: u64::from(r.get::<_, PgLsn>(0)),
                data: r.get(1),
            })
            .collect())
    }

    /// Confirms everything up to `lsn` (a transaction's end LSN): the WAL before it may go.
    pub async fn advance(&self, lsn: u64) -> Result<(), CdcError> {
        self.client
            .execute(
                "SELECT pg_replication_slot_advance($1, $2)",
                &[&self.slot, &PgLsn::from(lsn)],
            )
            .await
            .map_err(db("advancing the slot"))?;
        Ok(())
    }

    /// Writes a transactional heartbeat message to the WAL: decoding it gives the slot a
    /// commit to advance to and the lag a fresh commit time, even when no table changes.
    pub async fn heartbeat(&self) -> Result<(), CdcError> {
        self.client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, now()::text)",
                &[&crate::event::HEARTBEAT_PREFIX],
            )
            .await
            .map_err(db("writing a heartbeat"))?;
        Ok(())
    }

    /// What the slot retains (None when it does not exist).
    pub async fn state(&self) -> Result<Option<Slot>, CdcError> {
        cluster::find_slot(&self.client, &self.slot)
            .await
            .map_err(db("reading the slot"))
    }

    /// Drops the slot (e.g. after `atlas cdc --drop-slot`); its retained WAL is released.
    pub async fn drop_slot(&self) -> Result<(), CdcError> {
        self.client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(db("dropping the slot"))?;
        Ok(())
    }
}

/// Reads the published tables at one REPEATABLE READ snapshot taken after the slot existed,
/// in chunks, as text typed like the stream's values. Together with the stream from the
/// slot's start (which may repeat rows the snapshot already saw, in commit order) it gives
/// every sink the full state.
pub struct SnapshotReader {
    client: Client,
}

/// One published table as the snapshot reads it.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    /// Its name (the partition root).
    pub table: String,
    /// Published columns (in table order) with their type OIDs.
    pub columns: Vec<(String, u32)>,
    /// Primary-key columns.
    pub key: Vec<String>,
}

impl SnapshotReader {
    /// Opens the snapshot transaction.
    pub async fn begin(url: &str) -> Result<Self, CdcError> {
        let client = connect_formatted(url).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db("starting the snapshot"))?;
        Ok(Self { client })
    }

    /// The publication's tables (roots of partitioned ones), with their published columns
    /// (a publication's column list, as the stream sends them) and keys.
    pub async fn tables(&self) -> Result<Vec<SnapshotTable>, CdcError> {
        let names: Vec<(String, Vec<String>)> = self
            .client
            .query(
                "SELECT tablename::text, attnames::text[] FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = 'public' ORDER BY 1",
                &[&PUBLICATION],
            )
            .await
            .map_err(db("listing the published tables"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut out = Vec::new();
        for (table, published) in names {
            let rows = self
                .client
                .query(
                    "SELECT a.attname::text, a.atttypid, \
                            coalesce(a.attnum = ANY (i.indkey), false) \
                     FROM pg_attribute a \
                     LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                     WHERE a.attrelid = ('public.' || quote_ident($1))::regclass \
                       AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY ($2::text[]) \
                     ORDER BY a.attnum",
                    &[&table, &published],
                )
                .await
                .map_err(db("reading a published table's columns"))?;
            out.push(SnapshotTable {
                columns: rows
                    .iter()
                    .map(|r| (r.get(0), r.get::<_, u32>(1)))
                    .collect(),
                key: rows
                    .iter()
                    .filter(|r| r.get::<_, bool>(2))
                    .map(|r| r.get(0))
                    .collect(),
                table,
            });
        }
        Ok(out)
    }

    /// Opens a cursor over `t`.
    pub async fn open(&self, t: &SnapshotTable) -> Result<(), CdcError> {
        let sql: String = self
            .client
            .query_one(
                "SELECT format('DECLARE atlas_snapshot NO SCROLL CURSOR FOR SELECT %s FROM public.%I', \
                        (SELECT string_agg(quote_ident(c), ', ' ORDER BY n) FROM unnest($2::text[]) WITH ORDINALITY AS x (c, n)), \
                        $1::text)",
                &[&t.table, &t.columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()],
            )
            .await
            .map_err(db("opening the snapshot cursor"))?
            .get(0);
        self.client
            .batch_execute(&sql)
            .await
            .map_err(db("opening the snapshot cursor"))
    }

    /// The next up to `n` rows of the open cursor (the text protocol: values as text, typed
    /// by the column types exactly like the stream's).
    pub async fn fetch(
        &self,
        t: &SnapshotTable,
        n: usize,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, CdcError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let fetch: String = self
            .client
            .query_one(
                "SELECT format('FETCH %s FROM atlas_snapshot', $1::bigint)",
                &[&n],
            )
            .await
            .map_err(db("reading the snapshot"))?
            .get(0);
        // The text protocol: values arrive as text, typed below like the stream's.
        let messages = self
            .client
            .simple_query(&fetch)
            .await
            .map_err(db("reading the snapshot"))?;
        let mut rows = Vec::new();
        for m in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                let mut row = serde_json::Map::new();
                for (i, (name, oid)) in t.columns.iter().enumerate() {
                    let v = r
                        .try_get(i)
                        .map_err(db("reading a snapshot value"))?
                        .map_or(serde_json::Value::Null, |text| {
                            crate::event::typed(*oid, text)
                        });
                    row.insert(name.clone(), v);
                }
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Closes the cursor.
    pub async fn close(&self) -> Result<(), CdcError> {
        self.client
            .batch_execute("CLOSE atlas_snapshot")
            .await
            .map_err(db("closing the snapshot cursor"))
    }
}
