//! Why an object or a whole update is rejected, and where it came from.

use std::fmt;

/// Where an object came from: source name (usually a file path) and 1-based document index
/// (0 for the whole source, when it could not be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    pub document: usize,
}

/// An object (or document) that was rejected; the rest of the input still loads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub origin: Origin,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Document 0 is the whole source (a file that could not be read).
        match self.origin.document {
            0 => f.write_str(&self.origin.source)?,
            n => write!(f, "{} doc {n}", self.origin.source)?,
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl LoadError {
    /// `(kind, namespace, name)` of the rejected object, when the document named one
    /// (namespaces have an empty namespace).
    pub fn identity(&self) -> Option<(&str, &str, &str)> {
        let (kind, rest) = self.object.as_deref()?.split_once(' ')?;
        match rest.split_once('/') {
            Some((namespace, name)) => Some((kind, namespace, name)),
            None => Some((kind, "", rest)),
        }
    }
}

/// Why an update cannot be applied at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} could not be attributed to an object; the whole update is held back")]
pub struct UnattributedError(pub LoadError);

/// A field-level problem found while converting one object; the builder adds the object and
/// its origin to make a [`LoadError`].
pub(super) struct FieldError {
    pub(super) field: String,
    pub(super) message: String,
}

pub(super) fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}
