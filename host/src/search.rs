//! Nearest-neighbour search over the vectors of one embedding space.
//!
//! Exact search scans every vector (a dot product per vector: the host L2-normalises every
//! vector, so the dot product is the cosine). The scan is written so the compiler vectorises it
//! (eight independent accumulators over contiguous f32) and is split across cores for large
//! sets. Approximate search uses USearch's HNSW index (a well-kept library used by several
//! databases) for collections where a scan gets slow; its index file is kept beside the
//! database and brought up to date with the entries added since it was built. A PostgreSQL
//! cache answers top-k itself with pgvector (exact, or its per-space HNSW index).

use std::path::PathBuf;

use serde::Serialize;

use crate::store::{Cache, SpaceStats, SpaceVectors, StoreError};

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Compare with every vector.
    Exact,
    /// Use the approximate index.
    Approximate,
    /// Exact below [`AUTO_APPROXIMATE_FROM`] vectors, approximate from there on.
    #[default]
    Auto,
}

/// From this many vectors in a space, [`Method::Auto`] searches approximately.
pub const AUTO_APPROXIMATE_FROM: usize = 50_000;

/// One result.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// Image content hash.
    pub image: String,
    /// Known paths of that content.
    pub paths: Vec<PathBuf>,
    /// Cosine similarity with the query.
    pub score: f32,
}

/// A search's answer, saying what was searched.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// The embedding space searched: the query's.
    pub space: String,
    /// How.
    pub method: Method,
    /// Vectors in the space.
    pub searched: usize,
    /// Best first.
    pub hits: Vec<Hit>,
}

/// Why a search could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The cache failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing is stored in the query's space.
    #[error("nothing indexed is in the query's embedding space {space:?}, and vectors of other spaces are never compared. {}", describe_available(available))]
    EmptySpace {
        /// The query's space.
        space: String,
        /// What the cache does hold.
        available: Vec<SpaceStats>,
    },
    /// The query has another length than the space's vectors (a damaged cache).
    #[error("the query has {query} dimensions but space {space:?} stores {stored}")]
    Dimensions {
        /// The space.
        space: String,
        /// Query length.
        query: usize,
        /// Stored length.
        stored: usize,
    },
    /// The approximate index failed.
    #[error("approximate index for {space:?}: {message}")]
    Index {
        /// The space.
        space: String,
        /// What failed.
        message: String,
    },
}

fn describe_available(available: &[SpaceStats]) -> String {
    if available.is_empty() {
        return "The cache is empty: run `imbed index <folder>` first.".into();
    }
    let spaces: Vec<String> = available
        .iter()
        .map(|s| format!("{:?} ({} images)", s.space, s.entries))
        .collect();
    format!(
        "The cache holds {}. Search with the chain that indexed them (is its first step's backend up?), or re-index with this one (`imbed index --upgrade`).",
        spaces.join(", ")
    )
}

/// Dot product, written for auto-vectorisation: eight independent sums over fixed-size chunks.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// The `k` best (index, score) pairs, best first, keeping only a `k`-long list while scanning.
struct TopK {
    k: usize,
    items: Vec<(usize, f32)>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            items: Vec::with_capacity(k + 1),
        }
    }

    #[inline]
    fn offer(&mut self, index: usize, score: f32) {
        if self.items.len() == self.k {
            match self.items.last() {
                Some(&(_, worst)) if score <= worst => return,
                _ => {}
            }
        }
        let at = self.items.partition_point(|&(_, s)| s >= score);
        self.items.insert(at, (index, score));
        self.items.truncate(self.k);
    }

    fn merge(mut self, other: TopK) -> TopK {
        for (i, s) in other.items {
            self.offer(i, s);
        }
        self
    }
}

/// The `k` vectors of `set` closest to `query` by cosine, best first, skipping those for which
/// `skip` says true.
pub fn exact_top_k(
    set: &SpaceVectors,
    query: &[f32],
    k: usize,
    skip: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<(usize, f32)> {
    if k == 0 || set.is_empty() {
        return Vec::new();
    }
    let scan = |range: std::ops::Range<usize>| {
        let mut top = TopK::new(k);
        for i in range {
            if !skip(i) {
                top.offer(i, dot(set.vector(i), query));
            }
        }
        top
    };
    let n = set.len();
    // Threads pay off only when a scan takes longer than starting them (about 1M floats).
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(n * set.dims / 1_000_000)
        .max(1);
    if threads == 1 {
        return scan(0..n).items;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = t * per..((t + 1) * per).min(n);
                s.spawn(move || scan(range))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| TopK::new(k)))
            .fold(TopK::new(k), TopK::merge)
            .items
    })
}

/// An approximate (HNSW) index over one space's vectors, keyed by entry row id.
pub struct AnnIndex {
    index: usearch::Index,
}

impl AnnIndex {
    fn options(dims: usize) -> usearch::IndexOptions {
        usearch::IndexOptions {
            dimensions: dims,
            metric: usearch::MetricKind::IP,
            quantization: usearch::ScalarKind::F32,
            // 16 links per node (the library's default); a wider search than its default 64
            // candidates: measured in the search benchmark for recall@10 against build and
            // query time (see the closing figures there).
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            multi: false,
        }
    }

    /// Build an index over every vector of `set`.
    pub fn build(set: &SpaceVectors) -> Result<AnnIndex, String> {
        let index = usearch::Index::new(&Self::options(set.dims)).map_err(|e| e.to_string())?;
        let this = AnnIndex { index };
        this.add(set)?;
        Ok(this)
    }

    /// Add the vectors of `set` (entries not in the index yet), on every core: building the
    /// graph is the slow part of approximate search.
    pub fn add(&self, set: &SpaceVectors) -> Result<(), String> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(set.len().div_ceil(1000))
            .max(1);
        self.index
            .reserve_capacity_and_threads(self.index.size() + set.len(), threads)
            .map_err(|e| e.to_string())?;
        let per = set.len().div_ceil(threads);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || -> Result<(), String> {
                        for i in t * per..((t + 1) * per).min(set.len()) {
                            self.index
                                .add(set.ids[i] as u64, set.vector(i))
                                .map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| "an index thread panicked".to_string())?
            })
        })
    }

    /// The `k` nearest entry ids with cosine scores, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(i64, f32)>, String> {
        let found = self.index.search(query, k).map_err(|e| e.to_string())?;
        Ok(found
            .keys
            .into_iter()
            .zip(found.distances)
            // USearch's inner-product distance is 1 - dot.
            .map(|(key, d)| (key as i64, 1.0 - d))
            .collect())
    }

    /// Vectors in the index.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.index.size() == 0
    }

    fn save(&self, path: &std::path::Path) -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        self.index
            .save(&tmp.to_string_lossy())
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    }

    fn load(path: &std::path::Path, dims: usize) -> Result<AnnIndex, String> {
        let index = usearch::Index::new(&Self::options(dims)).map_err(|e| e.to_string())?;
        index
            .load(&path.to_string_lossy())
            .map_err(|e| e.to_string())?;
        if index.dimensions() != dims {
            return Err(format!(
                "the index file has {} dimensions, the space {dims}",
                index.dimensions()
            ));
        }
        Ok(AnnIndex { index })
    }

    /// The name of `space`'s index file in the cache's `ann_dir`.
    fn file_name(space: &str) -> String {
        format!("{}.usearch", crate::store::text_key(space))
    }

    /// Whether `space`'s saved index holds exactly its `entries` entries as they are now:
    /// nothing added, removed or replaced since it was saved (one indexed count).
    fn saved_is_current(store: &Cache, space: &str, entries: u64) -> Result<bool, SearchError> {
        let Some((recorded, indexed, built_max)) = store.ann_record(space)? else {
            return Ok(false);
        };
        let file = Self::file_name(space);
        Ok(recorded == file
            && indexed == entries
            && store.ann_dir().join(&file).is_file()
            && !store.space_changed_below(space, indexed, built_max)?)
    }

    /// The index for `set`'s space: loaded from beside the database and brought up to date,
    /// or built (and saved) when there is none or entries were removed or replaced since.
    pub fn for_space(store: &Cache, set: &SpaceVectors) -> Result<AnnIndex, SearchError> {
        let fail = |message: String| SearchError::Index {
            space: set.space.clone(),
            message,
        };
        let dir = store.ann_dir();
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let file = Self::file_name(&set.space);
        let path = dir.join(&file);
        let max_id = set.ids.iter().copied().max().unwrap_or(0);
        if let Some((recorded, entries, built_max)) = store.ann_record(&set.space)? {
            if recorded == file
                && path.is_file()
                && !store.space_changed_below(&set.space, entries, built_max)?
            {
                match AnnIndex::load(&path, set.dims) {
                    Ok(index) if index.len() as u64 == entries => {
                        let start = set.ids.partition_point(|&id| id <= built_max);
                        if start < set.len() {
                            let newer = tail(set, start);
                            index.add(&newer).map_err(fail)?;
                            index.save(&path).map_err(fail)?;
                            store.put_ann_record(&set.space, &file, index.len() as u64, max_id)?;
                        }
                        return Ok(index);
                    }
                    Ok(_) => tracing::info!(
                        "approximate index for {:?} is out of date; rebuilding",
                        set.space
                    ),
                    Err(e) => tracing::warn!(
                        "approximate index {} unusable ({e}); rebuilding",
                        path.display()
                    ),
                }
            }
        }
        let index = AnnIndex::build(set).map_err(fail)?;
        index.save(&path).map_err(fail)?;
        store.put_ann_record(&set.space, &file, index.len() as u64, max_id)?;
        Ok(index)
    }
}

fn tail(set: &SpaceVectors, start: usize) -> SpaceVectors {
    SpaceVectors {
        space: set.space.clone(),
        dims: set.dims,
        ids: set.ids[start..].to_vec(),
        images: set.images[start..].to_vec(),
        data: set.data[start * set.dims..].to_vec(),
    }
}

/// Get every space's approximate index ready after indexing, so that no search pays for
/// building it: PostgreSQL builds its HNSW index in the database; the embedded cache builds (or
/// brings up to date) its USearch file for spaces large enough to be searched approximately by
/// default. At 100,000 vectors of 768 dimensions that build takes more than a minute on two
/// cores, which the first search used to wait for.
pub fn prepare(store: &Cache) -> Result<(), SearchError> {
    for space in store.spaces()? {
        if store.searches_in_database() {
            store.prepare_search(&space.space)?;
        } else if space.entries as usize >= AUTO_APPROXIMATE_FROM
            // An `imbed index` run that wrote into one space leaves the others' saved indexes
            // as they are, without reading those spaces out of the database.
            && !AnnIndex::saved_is_current(store, &space.space, space.entries)?
        {
            let resident = store.resident_space(&space.space)?;
            if !resident.vectors.is_empty() {
                resident.index(|set| AnnIndex::for_space(store, set))?;
            }
        }
    }
    Ok(())
}

/// Search the cache for the `k` images closest to `query` in `space` (the query's space: a
/// vector is only ever compared with vectors of its own space). `exclude` leaves out one image
/// (the query image itself, for "similar").
pub fn search(
    store: &Cache,
    space: &str,
    query: &[f32],
    k: usize,
    method: Method,
    exclude: Option<&str>,
) -> Result<SearchResult, SearchError> {
    if store.searches_in_database() {
        return search_in_database(store, space, query, k, method, exclude);
    }
    let resident = store.resident_space(space)?;
    let set = &resident.vectors;
    if set.is_empty() {
        return Err(SearchError::EmptySpace {
            space: space.to_string(),
            available: store.spaces()?,
        });
    }
    if set.dims != query.len() {
        return Err(SearchError::Dimensions {
            space: space.to_string(),
            query: query.len(),
            stored: set.dims,
        });
    }
    let method = match method {
        Method::Auto if set.len() >= AUTO_APPROXIMATE_FROM => Method::Approximate,
        Method::Auto => Method::Exact,
        m => m,
    };
    let hits: Vec<(String, f32)> = match method {
        Method::Approximate => {
            let index = resident.index(|set| AnnIndex::for_space(store, set))?;
            // One more than asked, in case the excluded image is among them.
            let found = index
                .search(query, k + usize::from(exclude.is_some()))
                .map_err(|message| SearchError::Index {
                    space: space.to_string(),
                    message,
                })?;
            found
                .into_iter()
                .filter_map(|(id, score)| {
                    let i = set.ids.binary_search(&id).ok()?;
                    Some((set.images[i].clone(), score))
                })
                .filter(|(image, _)| Some(image.as_str()) != exclude)
                .take(k)
                .collect()
        }
        _ => exact_top_k(set, query, k, &|i| Some(set.images[i].as_str()) == exclude)
            .into_iter()
            .map(|(i, score)| (set.images[i].clone(), score))
            .collect(),
    };
    let mut out = Vec::with_capacity(hits.len());
    for (image, score) in hits {
        out.push(Hit {
            paths: store.paths_of(&image)?,
            image,
            score,
        });
    }
    Ok(SearchResult {
        space: space.to_string(),
        method,
        searched: set.len(),
        hits: out,
    })
}

/// [`search`] where the database answers top-k itself (PostgreSQL with pgvector): the same
/// checks and the same rule for [`Method::Auto`], without loading the space.
fn search_in_database(
    store: &Cache,
    space: &str,
    query: &[f32],
    k: usize,
    method: Method,
    exclude: Option<&str>,
) -> Result<SearchResult, SearchError> {
    let (count, dims) = store.space_size(space)?;
    if count == 0 {
        return Err(SearchError::EmptySpace {
            space: space.to_string(),
            available: store.spaces()?,
        });
    }
    if dims != query.len() {
        return Err(SearchError::Dimensions {
            space: space.to_string(),
            query: query.len(),
            stored: dims,
        });
    }
    let method = match method {
        Method::Auto if count >= AUTO_APPROXIMATE_FROM => Method::Approximate,
        Method::Auto => Method::Exact,
        m => m,
    };
    // One more than asked, in case the excluded image is among them.
    let ask = k + usize::from(exclude.is_some());
    let found = store
        .nearest(space, query, ask, method == Method::Approximate)?
        .unwrap_or_default();
    let mut hits = Vec::with_capacity(k);
    for (image, score) in found
        .into_iter()
        .filter(|(image, _)| Some(image.as_str()) != exclude)
        .take(k)
    {
        hits.push(Hit {
            paths: store.paths_of(&image)?,
            image,
            score,
        });
    }
    Ok(SearchResult {
        space: space.to_string(),
        method,
        searched: count,
        hits,
    })
}

/// A page of [`search`] over the indexed collection: only images with a known file path (an
/// image embedded from a URL, an upload or stdin is stored too, but is no part of a folder), the
/// `k` after the first `offset`. `more` says whether a next page may hold anything.
pub fn search_collection(
    store: &Cache,
    space: &str,
    query: &[f32],
    offset: usize,
    k: usize,
    method: Method,
    exclude: Option<&str>,
) -> Result<(SearchResult, bool), SearchError> {
    let want = offset.saturating_add(k);
    // Ask for a little more than a page, then for more while path-less images crowd it out.
    let mut ask = want.saturating_add(1).max(16);
    loop {
        let mut result = search(store, space, query, ask, method, exclude)?;
        let everything = result.hits.len() < ask || ask >= result.searched;
        result.hits.retain(|h| !h.paths.is_empty());
        if result.hits.len() > want || everything {
            // Exact: the search either covered every vector or found one past this page.
            let more = result.hits.len() > want;
            result.hits = result.hits.into_iter().skip(offset).take(k).collect();
            return Ok((result, more));
        }
        ask = ask.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(vectors: &[Vec<f32>]) -> SpaceVectors {
        SpaceVectors {
            space: "s".into(),
            dims: vectors[0].len(),
            ids: (1..=vectors.len() as i64).collect(),
            images: (0..vectors.len()).map(|i| format!("img{i}")).collect(),
            data: vectors.concat(),
        }
    }

    #[test]
    fn dot_matches_the_plain_sum_for_every_remainder() {
        for len in [1, 7, 8, 9, 31, 384] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn top_k_is_ordered_and_skips() {
        let set = set_of(&[
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.7, 0.7],
            vec![-1.0, 0.0],
        ]);
        let top = exact_top_k(&set, &[1.0, 0.0], 3, &|_| false);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 2, 1]);
        let top = exact_top_k(&set, &[1.0, 0.0], 2, &|i| i == 0);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
        assert!(exact_top_k(&set, &[1.0, 0.0], 0, &|_| false).is_empty());
    }
}
