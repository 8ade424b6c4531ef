//! Space ownership in PostgreSQL: the same rule as SQLite's (`sqlite/spaces.rs`), kept by row
//! locks instead of SQLite's one write lock.

use super::*;

/// A space's owner (if pinned) and its writers, oldest first.
type SpaceOwnership = (Option<SpaceOwner>, Vec<SpaceWriterStats>);

/// The tables that hold vectors, each naming its writer.
const VECTOR_TABLES: [&str; 3] = ["entries", "text_vectors", "image_vectors"];

fn owner_of(row: &tokio_postgres::Row) -> SpaceOwner {
    SpaceOwner {
        key: row.get(0),
        name: row.get(1),
        since: row.get(2),
    }
}

/// Space ownership: the same rule as SQLite's (`sqlite/spaces.rs`), kept by PostgreSQL's row
/// locks instead of SQLite's one write lock, so it holds across processes and machines.
impl PostgresStore {
    /// Ask to write into `space`. Pins the space to the claimant when nobody owns it yet, and
    /// records the claimant's component among the space's writers when it may write. Of
    /// processes racing to be first, the unique key lets one insert win: the others' inserts
    /// wait for it to commit, then do nothing, and read back its pin.
    pub fn claim_space(&self, space: &str, claim: &SpaceClaim) -> Result<Ownership> {
        let w = &claim.writer;
        // The common case, read-only: the space is owned, and this writer was recorded
        // recently.
        let rows = self.query(
            "SELECT s.owner_key, s.owner_name, s.first_written, w.last_seen
             FROM spaces s LEFT JOIN space_writers w
               ON w.space = s.space AND w.plugin_key = $2 AND w.component = $3
             WHERE s.space = $1",
            &[&space, &w.key, &w.component],
        )?;
        if let Some(row) = rows.first() {
            let owner = owner_of(row);
            if !claim.allows(&owner.key) {
                return Ok(Ownership::Refused { owner });
            }
            let seen: Option<i64> = row.get(3);
            if seen.is_some_and(|t| now() - t < LAST_SEEN_EVERY_SECS) {
                return Ok(Ownership::Granted { owner });
            }
        }
        self.block_on(async {
            let mut client = self.client().await?;
            // A prune may drop the pin between the insert and the read: then claim again.
            for _ in 0..5 {
                let tx = client.transaction().await.map_err(|e| self.db(e))?;
                let at = now();
                tx.execute(
                    "INSERT INTO spaces (space, owner_key, owner_name, first_written)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (space) DO NOTHING",
                    &[&space, &w.key, &w.name, &at],
                )
                .await
                .map_err(|e| self.db(e))?;
                // FOR SHARE: the pin cannot be dropped under this claim before it commits.
                let Some(row) = tx
                    .query_opt(
                        "SELECT owner_key, owner_name, first_written FROM spaces
                         WHERE space = $1 FOR SHARE",
                        &[&space],
                    )
                    .await
                    .map_err(|e| self.db(e))?
                else {
                    continue;
                };
                let owner = owner_of(&row);
                if !claim.allows(&owner.key) {
                    return Ok(Ownership::Refused { owner });
                }
                tx.execute(
                    "INSERT INTO space_writers
                     (space, plugin_key, plugin_name, component, first_seen, last_seen)
                     VALUES ($1, $2, $3, $4, $5, $5)
                     ON CONFLICT (space, plugin_key, component)
                     DO UPDATE SET last_seen = EXCLUDED.last_seen, plugin_name = EXCLUDED.plugin_name",
                    &[&space, &w.key, &w.name, &w.component, &at],
                )
                .await
                .map_err(|e| self.db(e))?;
                tx.commit().await.map_err(|e| self.db(e))?;
                return Ok(Ownership::Granted { owner });
            }
            Err(StoreError::Connect {
                location: self.inner.location.clone(),
                message: format!(
                    "space {space:?} kept losing its owner while being claimed (a prune running \
                     in a loop?): try again once it is done"
                ),
            })
        })
    }

    /// The plugin `space` is pinned to, if any.
    pub fn space_owner(&self, space: &str) -> Result<Option<SpaceOwner>> {
        Ok(self
            .query(
                "SELECT owner_key, owner_name, first_written FROM spaces WHERE space = $1",
                &[&space],
            )?
            .first()
            .map(owner_of))
    }

    /// Refuse a write by `w` into `space` unless the space is pinned and `w` holds a claim on
    /// it: the last line of defence, inside the write's own transaction. The rows are locked
    /// (FOR SHARE) so a prune cannot drop the claim before the write commits.
    pub(super) async fn check_claim(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        space: &str,
        w: &Writer,
    ) -> Result<()> {
        let claimed = tx
            .query_opt(
                "SELECT 1 FROM space_writers sw JOIN spaces s ON s.space = sw.space
                 WHERE sw.space = $1 AND sw.plugin_key = $2 AND sw.component = $3
                 FOR SHARE",
                &[&space, &w.key, &w.component],
            )
            .await
            .map_err(|e| self.db(e))?
            .is_some();
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
        let mut out: BTreeMap<String, SpaceOwnership> = BTreeMap::new();
        for row in self.query(
            "SELECT owner_key, owner_name, first_written, space FROM spaces",
            &[],
        )? {
            out.entry(row.get(3)).or_default().0 = Some(owner_of(&row));
        }
        for row in self.query(
            "SELECT space, plugin_key, plugin_name, component, first_seen, last_seen
             FROM space_writers ORDER BY space, first_seen, plugin_key, component",
            &[],
        )? {
            out.entry(row.get(0)).or_default().1.push(SpaceWriterStats {
                key: row.get(1),
                name: row.get(2),
                component: row.get(3),
                first_seen: row.get(4),
                last_seen: row.get(5),
            });
        }
        Ok(out)
    }

    /// Copy a space's owner and writers from another cache (`cache migrate`), before its
    /// vectors. A space pinned here to another plugin is refused: copying would mix two
    /// plugins' vectors under one id.
    pub(crate) fn import_space(
        &self,
        space: &str,
        owner: Option<&SpaceOwner>,
        writers: &[SpaceWriterStats],
    ) -> Result<()> {
        self.block_on(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db(e))?;
            if let Some(o) = owner {
                tx.execute(
                    "INSERT INTO spaces (space, owner_key, owner_name, first_written)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (space) DO NOTHING",
                    &[&space, &o.key, &o.name, &o.since],
                )
                .await
                .map_err(|e| self.db(e))?;
                let here: String = tx
                    .query_one(
                        "SELECT owner_key FROM spaces WHERE space = $1 FOR SHARE",
                        &[&space],
                    )
                    .await
                    .map_err(|e| self.db(e))?
                    .get(0);
                if here != o.key {
                    return Err(StoreError::OwnerConflict {
                        space: space.to_string(),
                        source_owner: o.key.clone(),
                        target_owner: here,
                        target: self.inner.location.clone(),
                    });
                }
            }
            for w in writers {
                tx.execute(
                    "INSERT INTO space_writers
                     (space, plugin_key, plugin_name, component, first_seen, last_seen)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (space, plugin_key, component) DO UPDATE SET
                       first_seen = LEAST(space_writers.first_seen, EXCLUDED.first_seen),
                       last_seen = GREATEST(space_writers.last_seen, EXCLUDED.last_seen)",
                    &[
                        &space,
                        &w.key,
                        &w.name,
                        &w.component,
                        &w.first_seen,
                        &w.last_seen,
                    ],
                )
                .await
                .map_err(|e| self.db(e))?;
            }
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// Drop what one writer wrote, in `spaces` (every space with writers when empty), and the
    /// writer's records. A space whose owner has nothing left recorded in it loses its pin.
    pub(super) fn prune_writer(
        &self,
        spaces: &[String],
        filter: &WriterFilter,
        report: &mut PruneReport,
    ) -> Result<()> {
        self.block_on(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db(e))?;
            let targets: Vec<String> = if spaces.is_empty() {
                tx.query(
                    "SELECT DISTINCT space FROM space_writers ORDER BY space",
                    &[],
                )
                .await
                .map_err(|e| self.db(e))?
                .iter()
                .map(|r| r.get(0))
                .collect()
            } else {
                spaces.to_vec()
            };
            let (column, value) = match filter {
                WriterFilter::Plugin(key) => ("plugin_key", key.clone()),
                WriterFilter::Component(prefix) => (
                    "component",
                    self.resolve_component(&tx, &targets, prefix).await?,
                ),
            };
            for space in &targets {
                for table in VECTOR_TABLES {
                    let n = tx
                        .execute(
                            &format!("DELETE FROM {table} WHERE space = $1 AND {column} = $2"),
                            &[space, &value],
                        )
                        .await
                        .map_err(|e| self.db(e))?;
                    match table {
                        "entries" => report.entries += n,
                        "text_vectors" => report.text_vectors += n,
                        _ => report.image_vectors += n,
                    }
                }
                tx.execute(
                    &format!("DELETE FROM space_writers WHERE space = $1 AND {column} = $2"),
                    &[space, &value],
                )
                .await
                .map_err(|e| self.db(e))?;
                let unpinned = tx
                    .execute(
                        "DELETE FROM spaces WHERE space = $1 AND NOT EXISTS
                         (SELECT 1 FROM space_writers w
                          WHERE w.space = spaces.space AND w.plugin_key = spaces.owner_key)",
                        &[space],
                    )
                    .await
                    .map_err(|e| self.db(e))?;
                if unpinned > 0 {
                    report.unpinned.push(space.clone());
                }
            }
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// The one component among the writers of `spaces` whose SHA-256 starts with `prefix`.
    async fn resolve_component(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        spaces: &[String],
        prefix: &str,
    ) -> Result<String> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::PruneTarget(format!(
                "component {prefix:?} is not a SHA-256 prefix: give at least 6 hex digits, as `imbed cache stats` lists them"
            )));
        }
        let found: BTreeSet<String> = tx
            .query(
                "SELECT DISTINCT component FROM space_writers
                 WHERE space = ANY($1) AND component <> '' AND left(component, $3) = $2",
                &[&spaces, &prefix, &(prefix.len() as i32)],
            )
            .await
            .map_err(|e| self.db(e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
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
}
