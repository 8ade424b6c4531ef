//! The persistent cache: descriptions, vectors and indexed files, keyed by content. The rest of
//! the host uses [`Cache`] and the records of `records`; SQLite sits behind it in `sqlite`, and
//! a second backend goes beside it here. Uses only `types` and `input` (an image's facts).

mod keys;
mod records;
mod sqlite;

pub use keys::{describer_identity, describer_identity_of, file_stamp, text_key};
pub use records::{
    CachedDescription, Entry, FileRecord, ImageMeta, PruneOptions, PruneReport, SpaceStats,
    SpaceVectors, Stats, StoreError,
};
pub use sqlite::{Cache, SCHEMA_VERSION};
