//! Spaces kept in memory between searches in one process (the embedded SQLite cache, which
//! searches in this process; PostgreSQL searches in the database and keeps nothing here).
//!
//! Why: a search used to read the whole space out of SQLite and load its approximate index
//! file each time, which is right for one `imbed search` but made every search of a long-lived
//! process (`imbed serve`, the Python package) pay that again: at 100,000 vectors of 768
//! dimensions, half a second for the read and as much again for the index file, against tens of
//! milliseconds for the search itself. A resident space is reused while its stamp (entries and
//! largest row id, one indexed count) is unchanged. A replaced answer gets a new row id and a
//! removed one lowers the count, so any change, by this process or another one writing the
//! same file, is noticed at the next search.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::records::SpaceVectors;

/// A space's entries and largest row id: what changes whenever its vectors change.
pub(crate) type Stamp = (u64, i64);

/// One space as loaded at a stamp, and the index search built over it.
pub struct ResidentSpace {
    /// The vectors.
    pub vectors: SpaceVectors,
    /// The index search built over `vectors` (type-erased: the store does not know search's
    /// index type; `search` depends on `store`, not the other way round).
    index: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
}

impl ResidentSpace {
    pub(crate) fn new(vectors: SpaceVectors) -> ResidentSpace {
        ResidentSpace {
            vectors,
            index: Mutex::new(None),
        }
    }

    /// The index kept with these vectors, built by `build` the first time. Two searches that
    /// arrive together may both build it; one is kept. A failed build is not kept, so the next
    /// search tries again.
    pub fn index<T, E>(
        &self,
        build: impl FnOnce(&SpaceVectors) -> Result<T, E>,
    ) -> Result<Arc<T>, E>
    where
        T: Any + Send + Sync,
    {
        if let Some(kept) = lock(&self.index).clone() {
            if let Ok(index) = kept.downcast::<T>() {
                return Ok(index);
            }
        }
        let built = Arc::new(build(&self.vectors)?);
        *lock(&self.index) = Some(built.clone());
        Ok(built)
    }
}

impl std::fmt::Debug for ResidentSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResidentSpace")
            .field("space", &self.vectors.space)
            .field("entries", &self.vectors.len())
            .finish()
    }
}

/// Each space's resident copy, with the stamp it was loaded at.
type Spaces = HashMap<String, (Stamp, Arc<ResidentSpace>)>;

/// The resident spaces of one database, shared by the clones of its [`super::Cache`].
#[derive(Clone, Default)]
pub(crate) struct Resident {
    spaces: Arc<Mutex<Spaces>>,
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident")
            .field("spaces", &lock(&self.spaces).len())
            .finish()
    }
}

impl Resident {
    /// `space` at `stamp`: the resident copy when it was loaded at that stamp, else `load`ed
    /// now and kept in its place. The lock is not held while loading, so a slow load of one
    /// space does not hold up searches of another.
    pub(crate) fn get<E>(
        &self,
        space: &str,
        stamp: Stamp,
        load: impl FnOnce() -> Result<SpaceVectors, E>,
    ) -> Result<Arc<ResidentSpace>, E> {
        if let Some((at, kept)) = lock(&self.spaces).get(space) {
            if *at == stamp {
                return Ok(kept.clone());
            }
        }
        // Loaded after the stamp was read: a write in between makes the copy newer than its
        // stamp, and the next search, seeing another stamp, loads again. Never older.
        let fresh = Arc::new(ResidentSpace::new(load()?));
        lock(&self.spaces).insert(space.to_string(), (stamp, fresh.clone()));
        Ok(fresh)
    }
}

/// A poisoned lock only means another search panicked while holding it; the map is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> SpaceVectors {
        SpaceVectors {
            space: "s".into(),
            dims: 1,
            ids: (1..=n as i64).collect(),
            images: (0..n).map(|i| i.to_string()).collect(),
            data: vec![1.0; n],
        }
    }

    #[test]
    fn a_space_is_loaded_again_only_when_its_stamp_changes() {
        let resident = Resident::default();
        let mut loads = 0;
        let mut get = |stamp: Stamp, n: usize| {
            resident
                .get("s", stamp, || {
                    loads += 1;
                    Ok::<_, ()>(set(n))
                })
                .unwrap()
        };
        assert_eq!(get((2, 2), 2).vectors.len(), 2);
        assert_eq!(
            get((2, 2), 9).vectors.len(),
            2,
            "same stamp: the resident copy"
        );
        assert_eq!(get((3, 3), 3).vectors.len(), 3, "an entry added");
        assert_eq!(
            get((3, 4), 3).vectors.ids,
            vec![1, 2, 3],
            "an answer replaced"
        );
        assert_eq!(loads, 3);
    }

    #[test]
    fn the_index_is_built_once_per_copy_and_a_failed_build_is_tried_again() {
        let resident = Resident::default();
        let space = resident.get("s", (1, 1), || Ok::<_, ()>(set(1))).unwrap();
        assert_eq!(space.index(|_| Err::<u32, _>("no room")), Err("no room"));
        let mut builds = 0;
        for _ in 0..3 {
            let index = space
                .index(|v| {
                    builds += 1;
                    Ok::<_, ()>(v.len() as u32)
                })
                .unwrap();
            assert_eq!(*index, 1);
        }
        assert_eq!(builds, 1);
        let newer = resident.get("s", (2, 2), || Ok::<_, ()>(set(2))).unwrap();
        assert_eq!(*newer.index(|v| Ok::<_, ()>(v.len() as u32)).unwrap(), 2);
    }
}
