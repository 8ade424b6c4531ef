//! `Located<T>`: a value with its byte span when TOML knows it, and the plain value when it
//! does not (implicitly created tables), so every valid spelling of a config reads the same.

use serde::Deserialize;

/// A value with its place in the file when TOML knows it.
///
/// `toml::Spanned` fails on a table that has no span of its own, which is every table TOML
/// creates implicitly: `[[chain.steps]]` without a `[chain]` line, `limits.warm = true` dotted
/// keys, `[plugins.x.limits]` before `[plugins.x]`. Those are the same data as the explicit
/// spellings, so they must deserialize the same; `Located` takes the span when the deserializer
/// offers one (the `serde_spanned` protocol `toml::Spanned` uses) and the plain value otherwise.
pub(super) struct Located<T> {
    span: Option<std::ops::Range<usize>>,
    value: T,
}

impl<T> Located<T> {
    pub(super) fn get_ref(&self) -> &T {
        &self.value
    }

    pub(super) fn span(&self) -> Option<std::ops::Range<usize>> {
        self.span.clone()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde_spanned::__unstable as spanned;
        deserializer.deserialize_struct(
            spanned::NAME,
            &[
                spanned::START_FIELD,
                spanned::END_FIELD,
                spanned::VALUE_FIELD,
            ],
            LocatedVisitor(std::marker::PhantomData),
        )
    }
}

struct LocatedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for LocatedVisitor<T> {
    type Value = Located<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Located<T>, A::Error> {
        use serde::de::value::MapAccessDeserializer;
        use serde_spanned::__unstable as spanned;
        let Some(first) = map.next_key::<String>()? else {
            // An empty table: nothing to replay.
            let value = T::deserialize(MapAccessDeserializer::new(map))?;
            return Ok(Located { span: None, value });
        };
        if first != spanned::START_FIELD {
            // A table without a span: the key read to find out is handed back to `T`.
            let value = T::deserialize(MapAccessDeserializer::new(Replay {
                first: Some(first),
                rest: map,
            }))?;
            return Ok(Located { span: None, value });
        }
        let start: usize = map.next_value()?;
        expect_key(&mut map, spanned::END_FIELD)?;
        let end: usize = map.next_value()?;
        expect_key(&mut map, spanned::VALUE_FIELD)?;
        let value: T = map.next_value()?;
        Ok(Located {
            span: Some(start..end),
            value,
        })
    }

    // Scalars and arrays always come with spans from the TOML parser; these keep `Located`
    // correct for any other deserializer too.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Located<T>, A::Error> {
        let value = T::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Located { span: None, value })
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }
}

fn expect_key<'de, A: serde::de::MapAccess<'de>>(
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    match map.next_key::<String>()? {
        Some(k) if k == name => Ok(()),
        _ => Err(serde::de::Error::custom(format!(
            "spanned value without {name}"
        ))),
    }
}

/// A map whose first key was already read: yields that key again, then the rest.
struct Replay<A> {
    first: Option<String>,
    rest: A,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::IntoDeserializer;
        match self.first.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => self.rest.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.rest.next_value_seed(seed)
    }
}
