//! A strict JSON tree for the policy file: object members keep their order
//! and a key given twice is a syntax error, as containers/image refuses
//! duplicated fields (serde_json's own maps keep the last one silently).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A parsed JSON value; numbers are kept only as "a number" (the policy
/// format has none, so their value never matters).
#[derive(Debug)]
pub(super) enum Json {
    Null,
    Bool,
    Number,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What the value is, for "expected X, found Y" errors.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Number => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Number)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Number)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Number)
    }
    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members: Vec<(String, Json)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value()?;
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

/// Where in the file a value is: `transports.docker."reg.example/app"[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl JsonPath {
    pub(super) fn key(&self, k: &str) -> JsonPath {
        let mut p = self.clone();
        p.0.push(Segment::Key(k.to_string()));
        p
    }

    pub(super) fn index(&self, i: usize) -> JsonPath {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Index(i) => write!(f, "[{i}]")?,
                Segment::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    let bare = k
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let e = serde_json::from_str::<Json>(r#"{"a":{"b":1,"b":2}}"#).unwrap_err();
        assert_eq!(e.to_string(), r#"duplicate key "b" at line 1 column 15"#);
        assert!(serde_json::from_str::<Json>(r#"{"a":[{"b":1},{"b":2}]}"#).is_ok());
    }

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        let p = JsonPath::default()
            .key("transports")
            .key("docker")
            .key("reg.example/app")
            .index(0)
            .key("signedIdentity");
        assert_eq!(
            p.to_string(),
            r#"transports.docker."reg.example/app"[0].signedIdentity"#
        );
        assert_eq!(JsonPath::default().key("").to_string(), r#""""#);
        assert_eq!(
            JsonPath::default().key("default").index(2).to_string(),
            "default[2]"
        );
    }
}
