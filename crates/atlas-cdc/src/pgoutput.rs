//! Decoding of PostgreSQL's `pgoutput` protocol (version 1, non-streaming), as returned by
//! `pg_logical_slot_peek_binary_changes`: one message per row.
//! <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>

use crate::CdcError;

/// A column of a published relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Type OID (the value's text form is read by it).
    pub type_oid: u32,
    /// Part of the replica identity (the primary key by default).
    pub key: bool,
}

/// A published relation, as pgoutput names it: the partition root for partitioned tables
/// (the publication has `publish_via_partition_root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub id: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Columns, in tuple order.
    pub columns: Vec<Column>,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value the WAL does not carry.
    Unchanged,
    /// The value in its text form.
    Text(String),
}

/// The old row image of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica-identity columns are meaningful (`K`).
    Key(Vec<Cell>),
    /// The whole old row (`O`, REPLICA IDENTITY FULL).
    Full(Vec<Cell>),
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// LSN of its commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts_us: i64,
        /// Transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past it: where the slot may be advanced to.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts_us: i64,
    },
    /// A relation's description (sent before its first change in each decoding call).
    Relation(Relation),
    /// A row was inserted.
    Insert {
        /// Relation OID.
        rel: u32,
        /// The new row.
        new: Vec<Cell>,
    },
    /// A row was updated.
    Update {
        /// Relation OID.
        rel: u32,
        /// The old row, when the replica identity or a key change makes pgoutput send it.
        old: Option<OldTuple>,
        /// The new row.
        new: Vec<Cell>,
    },
    /// A row was deleted.
    Delete {
        /// Relation OID.
        rel: u32,
        /// The old row (key columns at least).
        old: OldTuple,
    },
    /// Tables were truncated.
    Truncate {
        /// Relation OIDs.
        rels: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Logical {
        /// Its prefix.
        prefix: String,
    },
    /// Anything else (type, origin): not needed for the change stream.
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CdcError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err(CdcError::Protocol(format!(
                "message truncated at byte {} (wanted {n} more of {})",
                self.pos,
                self.buf.len()
            )));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CdcError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, CdcError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CdcError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, CdcError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CdcError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, CdcError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<String, CdcError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|b| *b == 0) else {
            return Err(CdcError::Protocol("unterminated string".into()));
        };
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.pos += nul + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>, CdcError> {
        let n = self.i16()?;
        let n = usize::try_from(n)
            .map_err(|_| CdcError::Protocol(format!("negative column count {n}")))?;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?;
                    let len = usize::try_from(len)
                        .map_err(|_| CdcError::Protocol(format!("negative value length {len}")))?;
                    Cell::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                other => {
                    return Err(CdcError::Protocol(format!(
                        "unknown tuple cell kind {:?}",
                        char::from(other)
                    )));
                }
            });
        }
        Ok(cells)
    }
    fn old_tuple(&mut self, kind: u8) -> Result<OldTuple, CdcError> {
        match kind {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(CdcError::Protocol(format!(
                "expected K or O before an old tuple, got {:?}",
                char::from(other)
            ))),
        }
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message, CdcError> {
    let mut r = Reader { buf, pos: 0 };
    Ok(match r.u8()? {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_ts_us: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_ts_us: r.i64()?,
            }
        }
        b'R' => {
            let id = r.u32()?;
            let schema = r.cstr()?;
            let table = r.cstr()?;
            let _identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.i32()?;
                columns.push(Column {
                    name,
                    type_oid,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                id,
                schema,
                table,
                columns,
            })
        }
        b'I' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    rel,
                    new: r.tuple()?,
                },
                other => {
                    return Err(CdcError::Protocol(format!(
                        "insert: expected N, got {:?}",
                        char::from(other)
                    )));
                }
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(r.old_tuple(kind)?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(CdcError::Protocol(format!(
                    "update: expected N, got {:?}",
                    char::from(kind)
                )));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            let kind = r.u8()?;
            Message::Delete {
                rel,
                old: r.old_tuple(kind)?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let mut rels = Vec::new();
            for _ in 0..n {
                rels.push(r.u32()?);
            }
            Message::Truncate { rels }
        }
        b'M' => {
            let _flags = r.u8()?;
            let _lsn = r.u64()?;
            Message::Logical { prefix: r.cstr()? }
        }
        b'Y' | b'O' => Message::Other,
        other => {
            return Err(CdcError::Protocol(format!(
                "unknown pgoutput message {:?}",
                char::from(other)
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<u8> {
        let mut v = vec![b't'];
        v.extend_from_slice(&i32::try_from(s.len()).unwrap_or(0).to_be_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn decodes_relation_insert_and_update_with_old_key() {
        let mut rel = vec![b'R'];
        rel.extend_from_slice(&16_384u32.to_be_bytes());
        rel.extend_from_slice(b"public\0entities\0");
        rel.push(b'd');
        rel.extend_from_slice(&2i16.to_be_bytes());
        rel.push(1);
        rel.extend_from_slice(b"entity_id\0");
        rel.extend_from_slice(&20u32.to_be_bytes());
        rel.extend_from_slice(&(-1i32).to_be_bytes());
        rel.push(0);
        rel.extend_from_slice(b"entity_type\0");
        rel.extend_from_slice(&1043u32.to_be_bytes());
        rel.extend_from_slice(&104i32.to_be_bytes());
        let Message::Relation(r) = decode(&rel).unwrap_or(Message::Other) else {
            panic!("not a relation");
        };
        assert_eq!(
            (r.schema.as_str(), r.table.as_str()),
            ("public", "entities")
        );
        assert!(r.columns[0].key && !r.columns[1].key);
        assert_eq!(r.columns[1].type_oid, 1043);

        let mut upd = vec![b'U'];
        upd.extend_from_slice(&16_384u32.to_be_bytes());
        upd.push(b'K');
        upd.extend_from_slice(&2i16.to_be_bytes());
        upd.extend(text("7"));
        upd.push(b'n');
        upd.push(b'N');
        upd.extend_from_slice(&2i16.to_be_bytes());
        upd.extend(text("8"));
        upd.push(b'u');
        assert_eq!(
            decode(&upd).ok(),
            Some(Message::Update {
                rel: 16_384,
                old: Some(OldTuple::Key(vec![Cell::Text("7".into()), Cell::Null])),
                new: vec![Cell::Text("8".into()), Cell::Unchanged],
            })
        );
    }

    #[test]
    fn truncated_and_unknown_messages_are_errors_not_panics() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[b'B', 0, 0]).is_err());
        assert!(decode(b"Z").is_err());
        let mut ins = vec![b'I'];
        ins.extend_from_slice(&1u32.to_be_bytes());
        ins.push(b'N');
        ins.extend_from_slice(&1i16.to_be_bytes());
        ins.push(b't');
        ins.extend_from_slice(&100i32.to_be_bytes());
        ins.extend_from_slice(b"short");
        assert!(decode(&ins).is_err());
    }
}
