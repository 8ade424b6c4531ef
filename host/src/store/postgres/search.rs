//! Search inside the database: one HNSW index per space, a partial index over that space's
//! rows cast to its size, and queries that repeat the index's expression and predicate so the
//! planner picks it.

use super::*;

/// pgvector's HNSW indexes `vector` up to this many dimensions; `halfvec` up to twice that.
const VECTOR_INDEX_MAX_DIMS: usize = 2_000;
const HALFVEC_INDEX_MAX_DIMS: usize = 4_000;

/// A space id as an SQL string literal (standard_conforming_strings is on since 9.1).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The vector type a space's index uses, and its size.
fn index_type(dims: usize, halfvec: bool) -> Option<&'static str> {
    if dims == 0 || dims > HALFVEC_INDEX_MAX_DIMS {
        None
    } else if halfvec || dims > VECTOR_INDEX_MAX_DIMS {
        Some("halfvec")
    } else {
        Some("vector")
    }
}

impl PostgresStore {
    /// Number of entries in `space` and their length (0 when empty).
    pub fn space_size(&self, space: &str) -> Result<(usize, usize)> {
        // The count reads only the (space, id) index once the table is vacuumed; the length
        // comes from any one row (a space's vectors all have its length). `MAX(dims)` made every
        // search read each of the space's rows, tens of milliseconds at 100,000.
        let row = &self.query(
            "SELECT (SELECT COUNT(*) FROM entries WHERE space = $1),
                    COALESCE((SELECT dims FROM entries WHERE space = $1 LIMIT 1), 0)",
            &[&space],
        )?[0];
        Ok((row.get::<_, i64>(0) as usize, row.get::<_, i32>(1) as usize))
    }

    /// The name of `space`'s HNSW index (by the space's hash: identifiers are at most 63 bytes).
    fn index_name(space: &str) -> String {
        format!("entries_hnsw_{}", &crate::store::text_key(space)[..24])
    }

    pub(super) fn drop_search_index(&self, space: &str) -> Result<()> {
        let name = Self::index_name(space);
        self.block_on(async {
            let client = self.client().await?;
            client
                .batch_execute(&format!(
                    "DROP INDEX IF EXISTS {name}; DELETE FROM space_indexes WHERE space = {}",
                    literal(space)
                ))
                .await
                .map_err(|e| self.db(e))
        })?;
        self.inner
            .indexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(space);
        Ok(())
    }

    /// Make sure `space` has its HNSW index (built over the rows it has; later rows are added
    /// to it as they are written). Returns the vector type indexed, or None when the space is
    /// empty or too wide for pgvector's indexes (it is then searched exactly).
    pub fn ensure_search_index(&self, space: &str) -> Result<Option<&'static str>> {
        let (count, dims) = self.space_size(space)?;
        let Some(kind) = index_type(dims, self.inner.options.halfvec) else {
            return Ok(None);
        };
        if count == 0 {
            return Ok(None);
        }
        if self
            .inner
            .indexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(space)
        {
            return Ok(Some(kind));
        }
        let name = Self::index_name(space);
        self.block_on(async {
            let client = self.client().await?;
            // One builder per space at a time, across processes: others wait, then find it.
            let key = i64::from_str_radix(&crate::store::text_key(space)[..15], 16).unwrap_or(0);
            client
                .execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(|e| self.db(e))?;
            // The build is fast only while the graph fits maintenance_work_mem; the planner
            // picks the index only once it knows how many rows the space has (ANALYZE).
            let built = client
                .batch_execute(&format!(
                    "SET maintenance_work_mem = '512MB';
                     CREATE INDEX IF NOT EXISTS {name} ON entries USING hnsw \
                     ((embedding::{kind}({dims})) {kind}_ip_ops) WHERE space = {space_lit} AND dims = {dims};
                     INSERT INTO space_indexes (space, index_name, dims, half, built_at)
                     VALUES ({space_lit}, '{name}', {dims}, {half}, {now})
                     ON CONFLICT (space) DO NOTHING;
                     RESET maintenance_work_mem;
                     ANALYZE entries",
                    space_lit = literal(space),
                    half = kind == "halfvec",
                    now = now(),
                ))
                .await
                .map_err(|e| self.db(e));
            let unlocked = client
                .execute("SELECT pg_advisory_unlock($1)", &[&key])
                .await
                .map_err(|e| self.db(e));
            built.and(unlocked.map(drop))
        })?;
        self.inner
            .indexed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(space.to_string());
        Ok(Some(kind))
    }

    /// The `k` entries of `space` closest to `query` by inner product (the host normalises
    /// vectors: the cosine), best first, as (image, score). Approximate search uses the space's
    /// HNSW index at `hnsw.ef_search`, re-ranked exactly when configured; exact search scans.
    pub fn nearest(
        &self,
        space: &str,
        query: &[f32],
        k: usize,
        approximate: bool,
    ) -> Result<Vec<(String, f32)>> {
        let dims = query.len();
        let kind = if approximate {
            self.ensure_search_index(space)?
        } else {
            None
        };
        let sql = self.nearest_sql(space, dims, kind);
        let limit = k as i64;
        let options = &self.inner.options;
        self.block_on(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db(e))?;
            tx.batch_execute(&format!(
                "SET LOCAL hnsw.ef_search = {}",
                options.ef_search.clamp(1, 1000)
            ))
            .await
            .map_err(|e| self.db(e))?;
            let full = Vector::from(query.to_vec());
            let rows = match kind {
                Some("halfvec") => {
                    let half = HalfVector::from_f32_slice(query);
                    tx.query(&sql, &[&half, &limit, &full]).await
                }
                Some(_) => tx.query(&sql, &[&full, &limit, &full]).await,
                None => tx.query(&sql, &[&full, &limit]).await,
            }
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1) as f32))
                .collect())
        })
    }

    /// The query `nearest` runs: $1 the query in the index's type, $2 the limit, $3 the query
    /// in full precision. The index's expression and predicate appear literally, as the
    /// planner only uses a partial expression index for a query that repeats both.
    fn nearest_sql(&self, space: &str, dims: usize, kind: Option<&str>) -> String {
        let space_lit = literal(space);
        match kind {
            None => format!(
                "SELECT image, -(embedding <#> $1::vector) AS score FROM entries
                 WHERE space = {space_lit} AND dims = {dims}
                 ORDER BY embedding <#> $1::vector LIMIT $2"
            ),
            Some(kind) => {
                let candidates = format!(
                    "SELECT image, embedding FROM entries WHERE space = {space_lit} AND dims = {dims}
                     ORDER BY embedding::{kind}({dims}) <#> $1::{kind}({dims})"
                );
                if self.inner.options.exact_rerank {
                    // Four times the candidates, then the exact order among them.
                    format!(
                        "SELECT image, -(embedding <#> $3::vector) AS score
                         FROM ({candidates} LIMIT $2::bigint * 4) c
                         ORDER BY embedding <#> $3::vector LIMIT $2"
                    )
                } else {
                    format!(
                        "SELECT image, -(embedding <#> $3::vector) AS score
                         FROM ({candidates} LIMIT $2) c
                         ORDER BY embedding <#> $3::vector"
                    )
                }
            }
        }
    }

    /// `EXPLAIN` of the approximate query for `space` (for tests and `imbed doctor`).
    pub fn explain_nearest(&self, space: &str, dims: usize) -> Result<String> {
        let kind = self.ensure_search_index(space)?;
        let sql = self.nearest_sql(space, dims, kind);
        let zeros = vec![0f32; dims];
        let limit = 10i64;
        self.block_on(async {
            let client = self.client().await?;
            let explain = format!("EXPLAIN {sql}");
            let full = Vector::from(zeros.clone());
            let rows = match kind {
                Some("halfvec") => {
                    let half = HalfVector::from_f32_slice(&zeros);
                    client.query(&explain, &[&half, &limit, &full]).await
                }
                Some(_) => client.query(&explain, &[&full, &limit, &full]).await,
                None => client.query(&explain, &[&full, &limit]).await,
            }
            .map_err(|e| self.db(e))?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_spaces_are_indexed_as_halfvec_and_the_widest_not_at_all() {
        assert_eq!(index_type(384, false), Some("vector"));
        assert_eq!(index_type(384, true), Some("halfvec"));
        assert_eq!(index_type(3072, false), Some("halfvec"));
        assert_eq!(index_type(5000, false), None);
        assert_eq!(literal("it's"), "'it''s'");
    }
}
