//! The API server's limit on the size of an object: a request body of at most 3 MiB
//! (`MaxRequestBodyBytes` in k8s.io/apiserver). `kubectl create` sends the object as compact
//! JSON from Go's encoder and a newline, so that is what is measured, without building it.

use serde_yaml_ng::Value;

/// `MaxRequestBodyBytes`.
pub(super) const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The bytes of the request that creates this object: its JSON as Go's `json.Encoder` writes it
/// (no spaces; `<`, `>`, `&`, U+2028, U+2029 and control characters other than `\b`, `\f`,
/// `\n`, `\r`, `\t` as `\u00XX`), and a newline.
pub(super) fn request_body_bytes(value: &Value) -> usize {
    json_bytes(value) + 1
}

fn json_bytes(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => string_bytes(s),
        Value::Sequence(items) => {
            2 + items.iter().map(json_bytes).sum::<usize>() + items.len().saturating_sub(1)
        }
        Value::Mapping(map) => {
            let entries: usize = map
                .iter()
                .map(|(k, v)| key_bytes(k) + 1 + json_bytes(v))
                .sum();
            2 + entries + map.len().saturating_sub(1)
        }
        Value::Tagged(tagged) => json_bytes(&tagged.value),
    }
}

/// A key is a JSON string; one that is not a YAML string fails to decode later anyway.
fn key_bytes(key: &Value) -> usize {
    match key {
        Value::String(s) => string_bytes(s),
        other => json_bytes(other) + 2,
    }
}

fn string_bytes(s: &str) -> usize {
    let escaped: usize = s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => 6,
            c => c.len_utf8(),
        })
        .sum();
    2 + escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_what_go_would_send() {
        let cases = [
            (
                r#"{a: 1, b: [true, null, "x"]}"#,
                r#"{"a":1,"b":[true,null,"x"]}"#.len(),
            ),
            ("{k: 'a<b&c>d'}", r#"{"k":"a\u003cb\u0026c\u003ed"}"#.len()),
            (
                r#"{k: "\"\\\n\u0001\u0008é"}"#,
                r#"{"k":"\"\\\n\u0001\bé"}"#.len(),
            ),
            ("[]", 2),
            ("{}", 2),
        ];
        for (yaml, json) in cases {
            let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
            assert_eq!(request_body_bytes(&value), json + 1, "{yaml}");
        }
    }
}
