//! The plugin's `[plugins.<name>.settings]` table, read with typed getters whose errors name
//! the setting and say what value would do.
//!
//! The host hands every value over as a string: numbers and booleans in their TOML spelling,
//! arrays and tables as JSON. The free functions read the host's settings; [`Settings`] does the
//! same over any source, so a plugin's settings code is unit-tested natively with
//! [`Settings::from_pairs`]:
//!
//! ```
//! use imbed_plugin_sdk::settings::Settings;
//!
//! let s = Settings::from_pairs([("dimensions", "4")]);
//! let err = s.parse_in("dimensions", 256usize, 8..=8192).unwrap_err();
//! assert_eq!(err.message(), "setting `dimensions` is \"4\": set it to a whole number from 8 to 8192");
//! assert_eq!(s.parse_in("missing", 256usize, 8..=8192).unwrap(), 256);
//! ```

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::Error;

/// Where settings come from: the host, or a fixed table (tests).
#[derive(Debug, Clone)]
enum Source {
    Host,
    Map(BTreeMap<String, String>),
}

/// A view of a plugin's settings with typed getters.
#[derive(Debug, Clone)]
pub struct Settings {
    source: Source,
}

impl Settings {
    /// The settings the host holds for this plugin. Outside a component (native unit tests)
    /// there is no host and no setting is present: use [`Settings::from_pairs`] there.
    pub fn from_host() -> Self {
        Settings {
            source: Source::Host,
        }
    }

    /// Settings from key/value pairs, spelled as the host would hand them over.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Settings {
            source: Source::Map(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The raw value of `key`, `None` when absent.
    pub fn get(&self, key: &str) -> Option<String> {
        match &self.source {
            Source::Host => host_get(key),
            Source::Map(map) => map.get(key).cloned(),
        }
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        match &self.source {
            Source::Host => host_keys(),
            Source::Map(map) => map.keys().cloned().collect(),
        }
    }

    /// The value of `key` as text, or `default` when absent.
    pub fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_string())
    }

    /// The value of `key`, trimmed, or `default`; an error when it is set but empty.
    pub fn non_empty(&self, key: &str, default: &str) -> Result<String, Error> {
        let value = self.string(key, default).trim().to_string();
        if value.is_empty() {
            Err(bad(key, &value, "give it a value"))
        } else {
            Ok(value)
        }
    }

    /// The value of `key`; an error naming the setting when it is absent or empty.
    pub fn required(&self, key: &str) -> Result<String, Error> {
        match self.get(key) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(Error::bad_setting(format!(
                "setting `{key}` is missing: add it to this plugin's [plugins.<name>.settings] in the config"
            ))),
        }
    }

    /// The value of `key` parsed as `T`, `None` when absent, an error when it does not parse.
    pub fn optional<T: FromStr>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| bad(key, &raw, &format!("set it to {}", describe::<T>()))),
        }
    }

    /// The value of `key` parsed as `T`, or `default` when absent.
    pub fn parse<T: FromStr>(&self, key: &str, default: T) -> Result<T, Error> {
        Ok(self.optional(key)?.unwrap_or(default))
    }

    /// The value of `key` parsed as `T` and within `range`, or `default` when absent.
    pub fn parse_in<T>(&self, key: &str, default: T, range: RangeInclusive<T>) -> Result<T, Error>
    where
        T: FromStr + PartialOrd + Display,
    {
        let want = || {
            format!(
                "set it to {} from {} to {}",
                describe::<T>(),
                range.start(),
                range.end()
            )
        };
        match self.get(key) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<T>() {
                Ok(v) if range.contains(&v) => Ok(v),
                _ => Err(bad(key, &raw, &want())),
            },
        }
    }

    /// The value of `key` as `true` or `false`, or `default` when absent.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, Error> {
        match self.get(key).as_deref().map(str::trim) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(bad(key, v, "set it to true or false")),
        }
    }

    /// The value of `key`, one of `choices`, or `default` when absent.
    pub fn choice<'c>(
        &self,
        key: &str,
        default: &'c str,
        choices: &[&'c str],
    ) -> Result<&'c str, Error> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => choices
                .iter()
                .find(|c| **c == raw.trim())
                .copied()
                .ok_or_else(|| {
                    bad(
                        key,
                        &raw,
                        &format!("set it to one of {}", choices.join(", ")),
                    )
                }),
        }
    }

    /// The value of `key` (an array or table in the config) deserialised from JSON, `None`
    /// when absent.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(&raw).map(Some).map_err(|e| {
                bad(
                    key,
                    &raw,
                    &format!("it does not have the expected shape ({e})"),
                )
            }),
        }
    }
}

fn bad(key: &str, value: &str, want: &str) -> Error {
    Error::bad_setting(format!("setting `{key}` is {value:?}: {want}"))
}

/// How to write a `T`, for error messages.
fn describe<T>() -> String {
    let name = std::any::type_name::<T>();
    match name {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128"
        | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "bool" => "true or false".into(),
        "alloc::string::String" => "text".into(),
        other => format!("a valid {}", other.rsplit("::").next().unwrap_or(other)),
    }
}

#[cfg(target_family = "wasm")]
fn host_get(key: &str) -> Option<String> {
    crate::bindings::imbed::plugin::host::get_setting(key)
}

#[cfg(target_family = "wasm")]
fn host_keys() -> Vec<String> {
    crate::bindings::imbed::plugin::host::setting_keys()
}

// Outside a component there is no host to ask.
#[cfg(not(target_family = "wasm"))]
fn host_get(_key: &str) -> Option<String> {
    None
}

#[cfg(not(target_family = "wasm"))]
fn host_keys() -> Vec<String> {
    Vec::new()
}

/// The host's value of `key`, `None` when absent.
pub fn get(key: &str) -> Option<String> {
    Settings::from_host().get(key)
}

/// Every key of the host's settings table, sorted.
pub fn keys() -> Vec<String> {
    Settings::from_host().keys()
}

/// The host's value of `key`, or `default` (see [`Settings::string`]).
pub fn string(key: &str, default: &str) -> String {
    Settings::from_host().string(key, default)
}

/// See [`Settings::non_empty`].
pub fn non_empty(key: &str, default: &str) -> Result<String, Error> {
    Settings::from_host().non_empty(key, default)
}

/// See [`Settings::required`].
pub fn required(key: &str) -> Result<String, Error> {
    Settings::from_host().required(key)
}

/// See [`Settings::optional`].
pub fn optional<T: FromStr>(key: &str) -> Result<Option<T>, Error> {
    Settings::from_host().optional(key)
}

/// See [`Settings::parse`].
pub fn parse<T: FromStr>(key: &str, default: T) -> Result<T, Error> {
    Settings::from_host().parse(key, default)
}

/// See [`Settings::parse_in`].
pub fn parse_in<T>(key: &str, default: T, range: RangeInclusive<T>) -> Result<T, Error>
where
    T: FromStr + PartialOrd + Display,
{
    Settings::from_host().parse_in(key, default, range)
}

/// See [`Settings::flag`].
pub fn flag(key: &str, default: bool) -> Result<bool, Error> {
    Settings::from_host().flag(key, default)
}

/// See [`Settings::choice`].
pub fn choice<'c>(key: &str, default: &'c str, choices: &[&'c str]) -> Result<&'c str, Error> {
    Settings::from_host().choice(key, default, choices)
}

/// See [`Settings::json`].
#[cfg(feature = "json")]
pub fn json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    Settings::from_host().json(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_parsed_and_checked_against_their_range() {
        let s = Settings::from_pairs([("n", " 12 "), ("x", "twelve"), ("f", "0.5")]);
        assert_eq!(s.parse("n", 1u32).unwrap(), 12);
        assert_eq!(s.parse("absent", 7u32).unwrap(), 7);
        assert_eq!(s.parse("f", 0.0f64).unwrap(), 0.5);
        assert_eq!(
            s.parse("x", 1u32).unwrap_err(),
            Error::BadSetting("setting `x` is \"twelve\": set it to a whole number".into())
        );
        assert_eq!(
            s.parse_in("n", 1u32, 1..=10).unwrap_err().message(),
            "setting `n` is \" 12 \": set it to a whole number from 1 to 10"
        );
        assert_eq!(
            s.parse_in("f", 0.0f32, 1.0..=2.0).unwrap_err().message(),
            "setting `f` is \"0.5\": set it to a number from 1 to 2"
        );
        assert_eq!(s.optional::<u8>("absent").unwrap(), None);
    }

    #[test]
    fn flags_choices_and_text() {
        let s = Settings::from_pairs([
            ("on", "true"),
            ("bad", "yes"),
            ("mode", "chat"),
            ("empty", " "),
        ]);
        assert!(s.flag("on", false).unwrap());
        assert!(!s.flag("absent", false).unwrap());
        assert!(s
            .flag("bad", false)
            .unwrap_err()
            .message()
            .contains("true or false"));
        assert_eq!(
            s.choice("mode", "generate", &["generate", "chat"]).unwrap(),
            "chat"
        );
        assert_eq!(
            s.choice("absent", "generate", &["generate", "chat"])
                .unwrap(),
            "generate"
        );
        assert!(s
            .choice("on", "generate", &["generate", "chat"])
            .unwrap_err()
            .message()
            .contains("one of generate, chat"));
        assert!(s.non_empty("empty", "x").is_err());
        assert_eq!(s.non_empty("absent", "llava").unwrap(), "llava");
        assert!(s
            .required("absent")
            .unwrap_err()
            .message()
            .contains("`absent` is missing"));
        assert_eq!(s.keys(), vec!["bad", "empty", "mode", "on"]);
    }

    #[cfg(feature = "json")]
    #[test]
    fn tables_arrive_as_json() {
        let s = Settings::from_pairs([("t", r#"{"a":"b"}"#), ("broken", "{")]);
        let t: std::collections::BTreeMap<String, String> = s.json("t").unwrap().unwrap();
        assert_eq!(t["a"], "b");
        assert!(s.json::<Vec<u8>>("broken").is_err());
        assert_eq!(s.json::<Vec<u8>>("absent").unwrap(), None);
    }

    #[cfg(not(target_family = "wasm"))]
    #[test]
    fn the_host_source_is_empty_outside_a_component() {
        assert_eq!(get("anything"), None);
        assert_eq!(parse("dims", 3u8).unwrap(), 3);
    }
}
