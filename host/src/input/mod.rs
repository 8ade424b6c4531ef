//! Input: reading images from where callers have them (`read`, with size caps and deadlines),
//! the URL policy for untrusted callers (`url_guard`), and validating/decoding them before any
//! plugin sees them (`decode`), under the caps in `limits`. Uses nothing else of the crate:
//! `config`, `models` and the rest build on it.

mod complete;
mod decode;
mod error;
mod limits;
mod read;
mod url_guard;

pub(crate) use decode::hex;
pub use decode::{downsize, thumbnail, validate, Thumbnail, ValidImage};
pub use error::InputError;
pub use limits::InputLimits;
pub use read::{decode_base64, read_capped, ImageSource};
pub(crate) use read::{describe_reqwest, read_source};
pub use url_guard::{is_public, UrlGuard, UrlRefused};
