//! Strict decoding of JWS compact tokens: canonical unpadded base64url and JSON objects with no
//! duplicate member names and bounded nesting. Lenient decoders accept padded, re-spelled or
//! duplicated input that means different things to different parsers; pvid accepts one spelling.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Deepest JSON nesting accepted in a header or claims set.
pub const MAX_JSON_DEPTH: usize = 32;

/// Encodes bytes as unpadded base64url.
pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes canonical unpadded base64url: no `=`, no whitespace, no standard-alphabet characters,
/// and no non-zero trailing bits (so every byte string has exactly one accepted spelling).
pub fn b64_decode(s: &str) -> Result<Vec<u8>, &'static str> {
    if !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
        return Err("segment is not unpadded base64url");
    }
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| "segment is not canonical base64url")?;
    // Defence in depth: the engine already refuses non-zero trailing bits; re-encoding proves it.
    if URL_SAFE_NO_PAD.encode(&bytes) != s {
        return Err("segment is not canonical base64url");
    }
    Ok(bytes)
}

/// Parses a JSON object strictly: duplicate member names (at any depth) and nesting deeper than
/// [`MAX_JSON_DEPTH`] are errors.
pub fn parse_strict_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed { depth: 0 }.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("not a JSON object".to_owned()),
    }
}

struct StrictSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor { depth: self.depth })
    }
}

struct StrictVisitor {
    depth: usize,
}

impl StrictVisitor {
    fn nested<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_JSON_DEPTH {
            return Err(E::custom(format!("JSON nested deeper than {MAX_JSON_DEPTH}")));
        }
        Ok(depth)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.nested()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed { depth })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate member `{}`",
                    key.escape_debug()
                )));
            }
            let v = map.next_value_seed(StrictSeed { depth })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_has_exactly_one_accepted_spelling() {
        assert_eq!(b64_decode("YQ").unwrap(), b"a");
        assert!(b64_decode("YQ==").is_err(), "padding");
        assert!(b64_decode("YR").is_err(), "non-zero trailing bits");
        assert!(b64_decode("Y Q").is_err(), "whitespace");
        assert!(b64_decode("+/8").is_err(), "standard alphabet");
        assert_eq!(b64_decode("-_8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn rejects_duplicate_members_at_any_depth() {
        assert!(parse_strict_object(br#"{"a":1,"a":1}"#).is_err());
        assert!(parse_strict_object(br#"{"x":{"a":1,"a":2}}"#).is_err());
        assert!(parse_strict_object(br#"{"x":[{"a":1,"a":2}]}"#).is_err());
        // Escaped spelling of the same name is still a duplicate.
        assert!(parse_strict_object(br#"{"alg":1,"\u0061lg":2}"#).is_err());
        assert!(parse_strict_object(br#"{"a":1,"b":2}"#).is_ok());
    }

    #[test]
    fn rejects_deep_nesting_and_non_objects() {
        let ok = format!("{{\"x\":{}1{}}}", "[".repeat(31), "]".repeat(31));
        assert!(parse_strict_object(ok.as_bytes()).is_ok());
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(32), "]".repeat(32));
        assert!(parse_strict_object(deep.as_bytes()).is_err());
        let very_deep = format!("{{\"x\":{}1{}}}", "[".repeat(1000), "]".repeat(1000));
        assert!(parse_strict_object(very_deep.as_bytes()).is_err());
        assert!(parse_strict_object(b"[1]").is_err());
        assert!(parse_strict_object(b"{} {}").is_err());
    }
}
