//! Canonical JSON: object keys sorted at every level, no whitespace. The same
//! config always hashes to the same digest, whatever built it.

use serde::Serialize;
use serde_json::{Map, Value};

fn sort_value(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k, sort_value(v));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_value).collect()),
        other => other,
    }
}

/// Serialize `value` canonically.
pub fn to_canonical_json<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let v = serde_json::to_value(value)?;
    Ok(serde_json::to_vec(&sort_value(v))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": null}});
        let out = String::from_utf8(to_canonical_json(&v).unwrap()).unwrap();
        assert_eq!(out, r#"{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1}"#);
    }
}
