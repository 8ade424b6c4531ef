//! Space ownership in SQLite: each space is pinned to the plugin that first wrote into it
//! (`spaces`), every component that wrote into it is listed (`space_writers`), and a vector is
//! written only by a writer holding a claim on its space, checked in the write's transaction.
//! Its behaviour is tested through `Cache` on both backends
//! (`tests/integration/store_backends.rs`); the migration of an SQLite cache from before
//! ownership is tested here.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{now, Result, SqliteStore};
use crate::store::records::*;

/// A space's owner (if pinned) and its writers, oldest first.
type SpaceOwnership = (Option<SpaceOwner>, Vec<SpaceWriterStats>);

/// The tables that hold vectors, each naming its writer.
const VECTOR_TABLES: [&str; 3] = ["entries", "text_vectors", "image_vectors"];

fn read_owner(conn: &Connection, space: &str) -> rusqlite::Result<Option<SpaceOwner>> {
    conn.query_row(
        "SELECT owner_key, owner_name, first_written FROM spaces WHERE space = ?1",
        params![space],
        |r| {
            Ok(SpaceOwner {
                key: r.get(0)?,
                name: r.get(1)?,
                since: r.get(2)?,
            })
        },
    )
    .optional()
}

fn last_seen(conn: &Connection, space: &str, w: &Writer) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT last_seen FROM space_writers
         WHERE space = ?1 AND plugin_key = ?2 AND component = ?3",
        params![space, w.key, w.component],
        |r| r.get(0),
    )
    .optional()
}

impl SqliteStore {
    /// Ask to write into `space`. Pins the space to the claimant when nobody owns it yet, and
    /// records the claimant's component among the space's writers when it may write. Two
    /// processes racing to be first take the write lock in turn, and the second finds the
    /// first's pin: only one can win.
    pub fn claim_space(&self, space: &str, claim: &SpaceClaim) -> Result<Ownership> {
        let w = &claim.writer;
        {
            // The common case, read-only: the space is owned, and this writer was recorded
            // recently.
            let conn = self.conn();
            if let Some(owner) = read_owner(&conn, space).map_err(|e| self.sql(e))? {
                if !claim.allows(&owner.key) {
                    return Ok(Ownership::Refused { owner });
                }
                let seen = last_seen(&conn, space, w).map_err(|e| self.sql(e))?;
                if seen.is_some_and(|t| now() - t < LAST_SEEN_EVERY_SECS) {
                    return Ok(Ownership::Granted { owner });
                }
            }
        }
        let mut conn = self.conn();
        // IMMEDIATE: the write lock from the start, so the pin read below is the one this
        // transaction's insert competed with.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let at = now();
        tx.execute(
            "INSERT OR IGNORE INTO spaces (space, owner_key, owner_name, first_written)
             VALUES (?1, ?2, ?3, ?4)",
            params![space, w.key, w.name, at],
        )
        .map_err(|e| self.sql(e))?;
        let owner = read_owner(&tx, space)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| self.sql(rusqlite::Error::QueryReturnedNoRows))?;
        if !claim.allows(&owner.key) {
            return Ok(Ownership::Refused { owner });
        }
        tx.execute(
            "INSERT INTO space_writers
             (space, plugin_key, plugin_name, component, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (space, plugin_key, component)
             DO UPDATE SET last_seen = excluded.last_seen, plugin_name = excluded.plugin_name",
            params![space, w.key, w.name, w.component, at],
        )
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(Ownership::Granted { owner })
    }

    /// The plugin `space` is pinned to, if any.
    pub fn space_owner(&self, space: &str) -> Result<Option<SpaceOwner>> {
        read_owner(&self.conn(), space).map_err(|e| self.sql(e))
    }

    /// Refuse a write by `writer` into `space` unless the space is pinned and the writer holds
    /// a claim on it: the last line of defence, inside the write's own transaction.
    pub(super) fn check_claim(&self, tx: &Transaction<'_>, space: &str, w: &Writer) -> Result<()> {
        let claimed: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM space_writers sw JOIN spaces s ON s.space = sw.space
                 WHERE sw.space = ?1 AND sw.plugin_key = ?2 AND sw.component = ?3)",
            )
            .and_then(|mut select| {
                select.query_row(params![space, w.key, w.component], |r| r.get(0))
            })
            .map_err(|e| self.sql(e))?;
        if claimed {
            Ok(())
        } else {
            Err(StoreError::NotClaimed {
                space: space.to_string(),
                key: w.key.clone(),
                component: w.component.clone(),
            })
        }
    }

    /// Owners and writers of every space that has either.
    pub(super) fn ownership(&self) -> Result<BTreeMap<String, SpaceOwnership>> {
        let conn = self.conn();
        let mut out: BTreeMap<String, SpaceOwnership> = BTreeMap::new();
        let mut stmt = conn
            .prepare("SELECT space, owner_key, owner_name, first_written FROM spaces")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    SpaceOwner {
                        key: r.get(1)?,
                        name: r.get(2)?,
                        since: r.get(3)?,
                    },
                ))
            })
            .map_err(|e| self.sql(e))?;
        for row in rows {
            let (space, owner) = row.map_err(|e| self.sql(e))?;
            out.entry(space).or_default().0 = Some(owner);
        }
        let mut stmt = conn
            .prepare(
                "SELECT space, plugin_key, plugin_name, component, first_seen, last_seen
                 FROM space_writers ORDER BY space, first_seen, plugin_key, component",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    SpaceWriterStats {
                        key: r.get(1)?,
                        name: r.get(2)?,
                        component: r.get(3)?,
                        first_seen: r.get(4)?,
                        last_seen: r.get(5)?,
                    },
                ))
            })
            .map_err(|e| self.sql(e))?;
        for row in rows {
            let (space, writer) = row.map_err(|e| self.sql(e))?;
            out.entry(space).or_default().1.push(writer);
        }
        Ok(out)
    }

    /// Drop what one writer wrote, in `spaces` (every space with writers when empty), and the
    /// writer's records. A space whose owner has nothing left recorded in it loses its pin.
    pub(super) fn prune_writer(
        &self,
        spaces: &[String],
        filter: &WriterFilter,
        report: &mut PruneReport,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let targets: Vec<String> = if spaces.is_empty() {
            let mut stmt = tx
                .prepare("SELECT DISTINCT space FROM space_writers ORDER BY space")
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| self.sql(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.sql(e))?
        } else {
            spaces.to_vec()
        };
        // Which column names the writer, and the value to match.
        let (column, value) = match filter {
            WriterFilter::Plugin(key) => ("plugin_key", key.clone()),
            WriterFilter::Component(prefix) => {
                ("component", self.resolve_component(&tx, &targets, prefix)?)
            }
        };
        for space in &targets {
            for table in VECTOR_TABLES {
                let n = tx
                    .execute(
                        &format!("DELETE FROM {table} WHERE space = ?1 AND {column} = ?2"),
                        params![space, value],
                    )
                    .map_err(|e| self.sql(e))? as u64;
                match table {
                    "entries" => report.entries += n,
                    "text_vectors" => report.text_vectors += n,
                    _ => report.image_vectors += n,
                }
            }
            tx.execute(
                &format!("DELETE FROM space_writers WHERE space = ?1 AND {column} = ?2"),
                params![space, value],
            )
            .map_err(|e| self.sql(e))?;
            let unpinned = tx
                .execute(
                    "DELETE FROM spaces WHERE space = ?1 AND NOT EXISTS
                     (SELECT 1 FROM space_writers w
                      WHERE w.space = spaces.space AND w.plugin_key = spaces.owner_key)",
                    params![space],
                )
                .map_err(|e| self.sql(e))?;
            if unpinned > 0 {
                report.unpinned.push(space.clone());
            }
        }
        tx.commit().map_err(|e| self.sql(e))
    }

    /// The one component among the writers of `spaces` whose SHA-256 starts with `prefix`.
    fn resolve_component(
        &self,
        tx: &Transaction<'_>,
        spaces: &[String],
        prefix: &str,
    ) -> Result<String> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::PruneTarget(format!(
                "component {prefix:?} is not a SHA-256 prefix: give at least 6 hex digits, as `imbed cache stats` lists them"
            )));
        }
        let mut found = std::collections::BTreeSet::new();
        for space in spaces {
            let mut stmt = tx
                .prepare(
                    "SELECT DISTINCT component FROM space_writers
                     WHERE space = ?1 AND component <> '' AND substr(component, 1, ?3) = ?2",
                )
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map(params![space, prefix, prefix.len() as i64], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(|e| self.sql(e))?;
            for row in rows {
                found.insert(row.map_err(|e| self.sql(e))?);
            }
        }
        let mut found = found.into_iter();
        match (found.next(), found.next()) {
            (Some(one), None) => Ok(one),
            (None, _) => Err(StoreError::PruneTarget(format!(
                "no component starting with {prefix} wrote into {}: `imbed cache stats` lists each space's writers",
                if spaces.is_empty() { "any space".to_string() } else { format!("{spaces:?}") }
            ))),
            (Some(a), Some(b)) => Err(StoreError::PruneTarget(format!(
                "component prefix {prefix} matches more than one component ({a}, {b}{}): give more digits",
                if found.next().is_some() { ", ..." } else { "" }
            ))),
        }
    }

    /// Forget who owns and wrote `space` (it is being dropped whole). Whether it had an owner.
    pub(super) fn unpin(&self, tx: &Transaction<'_>, space: &str) -> Result<bool> {
        tx.execute("DELETE FROM space_writers WHERE space = ?1", params![space])
            .map_err(|e| self.sql(e))?;
        Ok(tx
            .execute("DELETE FROM spaces WHERE space = ?1", params![space])
            .map_err(|e| self.sql(e))?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Embedding;

    fn writer(key: &str, component: &str) -> Writer {
        Writer {
            key: key.into(),
            name: format!("{key}-name"),
            component: component.into(),
        }
    }

    fn claim(key: &str, component: &str, shares: &[&str]) -> SpaceClaim {
        SpaceClaim {
            writer: writer(key, component),
            shares_with: shares.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn granted(o: Ownership) -> SpaceOwner {
        match o {
            Ownership::Granted { owner } => owner,
            Ownership::Refused { owner } => panic!("refused, owned by {owner:?}"),
        }
    }

    fn refused(o: Ownership) -> SpaceOwner {
        match o {
            Ownership::Refused { owner } => owner,
            Ownership::Granted { owner } => panic!("granted, owned by {owner:?}"),
        }
    }

    fn embedding(key: &str, space: &str) -> Embedding {
        serde_json::from_value(serde_json::json!({
            "vector": [0.6, 0.8],
            "provenance": {
                "step": 0, "step_kind": "image-embed",
                "plugin": {"key": key, "name": key, "version": "1"},
                "model": "m", "space": space, "dimensions": 2,
                "degraded": false, "attempts": []
            }
        }))
        .unwrap()
    }

    fn meta(i: u8) -> ImageMeta {
        ImageMeta {
            sha256: format!("{i:064x}"),
            mime: "image/png".into(),
            width: 1,
            height: 1,
            bytes: 1,
        }
    }

    #[test]
    fn a_schema_3_cache_pins_each_space_its_entries_agree_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = SqliteStore::create_with_schema(&path, 3).unwrap();
        {
            let conn = old.conn();
            let put = |image: u8, key: &str, space: &str| {
                let p = serde_json::to_string(&embedding(key, space).provenance).unwrap();
                conn.execute(
                    "INSERT INTO entries (image, space, dims, vector, provenance, degraded, created_at)
                     VALUES (?1, ?2, 2, ?3, ?4, 0, 100)",
                    params![meta(image).sha256, space, super::super::to_blob(&[0.6, 0.8]), p],
                )
                .unwrap();
            };
            put(1, "hash", "one");
            put(2, "hash", "one");
            put(1, "hash", "mixed");
            put(2, "rogue", "mixed");
        }
        drop(old);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 4);
        let spaces = store.spaces().unwrap();
        let one = spaces.iter().find(|s| s.space == "one").unwrap();
        assert_eq!(one.owner.as_ref().map(|o| o.key.as_str()), Some("hash"));
        assert_eq!(one.writers.len(), 1);
        assert_eq!(one.writers[0].component, "");
        let mixed = spaces.iter().find(|s| s.space == "mixed").unwrap();
        assert_eq!(mixed.owner, None);
        assert_eq!(mixed.writers.len(), 2);
        // Unpinned until the next write, which pins it.
        granted(
            store
                .claim_space("mixed", &claim("hash", "ee", &[]))
                .unwrap(),
        );
        refused(
            store
                .claim_space("mixed", &claim("rogue", "ff", &[]))
                .unwrap(),
        );
        // Entries from before name their plugin, so a plugin's old rows can be pruned.
        let mut report = PruneReport::default();
        store
            .prune_writer(
                &["mixed".to_string()],
                &WriterFilter::Plugin("rogue".into()),
                &mut report,
            )
            .unwrap();
        assert_eq!(report.entries, 1);
        assert_eq!(store.load_space("mixed").unwrap().len(), 1);
    }
}
