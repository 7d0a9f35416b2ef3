//! The API server's rules for names, labels and annotations (`k8s.io/apimachinery`
//! `util/validation`), checked before an object is accepted.

use super::error::{field_error, FieldError};
use crate::model::Labels;

/// `TotalAnnotationSizeLimitB`: the keys and values of an object's annotations, in bytes.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// IANA_SVC_NAME (`IsValidPortName`): at most 15 lowercase letters, digits and '-', with a
/// letter, no leading, trailing or double '-'.
pub(super) fn validate_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid port name (IANA_SVC_NAME)"))
    }
}

/// `ValidateLabels`: every key a qualified name, every value a label value.
pub(super) fn validate_labels(labels: &Labels, field: &str) -> Result<(), FieldError> {
    for (k, v) in labels {
        validate_label_key(k).map_err(|m| field_error(format!("{field}[{k}]"), m))?;
        validate_label_value(v).map_err(|m| field_error(format!("{field}[{k}]"), m))?;
    }
    Ok(())
}

/// `ValidateAnnotations`: every key (lowercased) a qualified name, keys and values together at
/// most 256 KiB.
pub(super) fn validate_annotations(annotations: &Labels, field: &str) -> Result<(), FieldError> {
    let mut total = 0;
    for (k, v) in annotations {
        // Go's `strings.ToLower` maps each character alone ('İ' is 'i', not "i\u{307}").
        let lower: String = k
            .chars()
            .map(|c| c.to_lowercase().next().unwrap_or(c))
            .collect();
        if !is_qualified_name(&lower) {
            let message = format!("{k:?} is not a valid annotation key");
            return Err(field_error(format!("{field}[{k}]"), message));
        }
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_MAX_BYTES {
        return Err(field_error(
            field,
            format!("{total} bytes, more than the {ANNOTATIONS_MAX_BYTES} allowed"),
        ));
    }
    Ok(())
}

/// A qualified name segment: 1-63 alphanumerics, '-', '_' or '.', beginning and ending alphanumeric.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 label: 1-63 lowercase alphanumerics and '-', beginning and ending alphanumeric.
pub(super) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_label_part(s)
}

fn is_dns_label_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !part.starts_with('-')
        && !part.ends_with('-')
}

/// A DNS-1123 subdomain: at most 253 characters, DNS-1123 labels (of any length) joined by '.'.
pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label_part)
}

/// `IsQualifiedName`: a label name, optionally prefixed by a DNS subdomain and '/'.
pub(super) fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

pub(super) fn validate_label_key(key: &str) -> Result<(), String> {
    if is_qualified_name(key) {
        Ok(())
    } else {
        Err(format!("{key:?} is not a valid label key"))
    }
}

pub(super) fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}
