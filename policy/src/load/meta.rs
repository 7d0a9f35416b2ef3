//! `ValidateObjectMeta` as the API server runs it on the objects the loader takes: name,
//! namespace, generation, labels, annotations, owner references and finalizers, in its order
//! (managed fields, which only the API server writes, are not checked).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::error::{field_error, FieldError};
use super::validate::{
    is_dns_label, is_dns_subdomain, is_qualified_name, validate_annotations, validate_labels,
};

/// What an object's name must be.
#[derive(Clone, Copy)]
pub(super) enum NameRule {
    /// `NameIsDNSSubdomain` (Pod, NetworkPolicy).
    Subdomain,
    /// `NameIsDNSLabel` (Namespace).
    Label,
}

impl NameRule {
    fn check(self, name: &str) -> Result<(), String> {
        let (ok, what) = match self {
            NameRule::Subdomain => (is_dns_subdomain(name), "DNS-1123 subdomain"),
            NameRule::Label => (is_dns_label(name), "DNS-1123 label"),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{name:?} is not a valid {what}"))
        }
    }
}

/// The finalizers the API server knows without a domain prefix.
const STANDARD_FINALIZERS: [&str; 3] = ["kubernetes", "orphan", "foregroundDeletion"];

/// The checks of `ValidateObjectMeta` on an object whose (non-empty) name and defaulted
/// namespace the caller already read: cluster-scoped objects pass `None` (the API server clears
/// their namespace).
pub(super) fn validate_object_meta(
    meta: &ObjectMeta,
    rule: NameRule,
    namespace: Option<&str>,
) -> Result<(), FieldError> {
    if let Some(prefix) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        // `maskTrailingDash`: a generated name ends with random characters after the prefix.
        let bytes = prefix.as_bytes();
        let masked = if bytes.len() > 1 && prefix.ends_with('-') {
            format!("{}a", String::from_utf8_lossy(&bytes[..bytes.len() - 2]))
        } else {
            prefix.to_string()
        };
        rule.check(&masked).map_err(|_| {
            field_error("metadata.generateName", format!("{prefix:?} is not valid"))
        })?;
    }
    if let Some(name) = &meta.name {
        rule.check(name)
            .map_err(|m| field_error("metadata.name", m))?;
    }
    if let Some(namespace) = namespace {
        if !is_dns_label(namespace) {
            let message = format!("{namespace:?} is not a valid DNS-1123 label");
            return Err(field_error("metadata.namespace", message));
        }
    }
    if let Some(generation) = meta.generation.filter(|g| *g < 0) {
        let message = format!("{generation} is negative");
        return Err(field_error("metadata.generation", message));
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, "metadata.labels")?;
    }
    if let Some(annotations) = &meta.annotations {
        validate_annotations(annotations, "metadata.annotations")?;
    }
    validate_owner_references(meta)?;
    validate_finalizers(meta.finalizers.as_deref().unwrap_or_default())
}

/// `ValidateOwnerReferences`: apiVersion with a version, kind, name and uid set, not an Event,
/// at most one controller.
fn validate_owner_references(meta: &ObjectMeta) -> Result<(), FieldError> {
    const FIELD: &str = "metadata.ownerReferences";
    let mut controller: Option<String> = None;
    for (i, owner) in meta.owner_references.iter().flatten().enumerate() {
        let field = |child: &str| format!("{FIELD}[{i}].{child}");
        // `schema.ParseGroupVersion`: "v" or "group/v"; more than one '/' is no version at all.
        let (group, version) = match owner.api_version.split('/').collect::<Vec<_>>()[..] {
            [version] => ("", version),
            [group, version] => (group, version),
            _ => ("", ""),
        };
        if version.is_empty() {
            return Err(field_error(field("apiVersion"), "has no version"));
        }
        for (child, value) in [
            ("kind", &owner.kind),
            ("name", &owner.name),
            ("uid", &owner.uid),
        ] {
            if value.is_empty() {
                return Err(field_error(field(child), "must not be empty"));
            }
        }
        if (group, version, owner.kind.as_str()) == ("", "v1", "Event") {
            let message = "an Event may not be an owner";
            return Err(field_error(format!("{FIELD}[{i}]"), message));
        }
        if owner.controller == Some(true) {
            let this = format!("{}/{}", owner.kind, owner.name);
            if let Some(first) = &controller {
                let message =
                    format!("only one may be the controller, not both {first} and {this}");
                return Err(field_error(FIELD, message));
            }
            controller = Some(this);
        }
    }
    Ok(())
}

/// `ValidateFinalizers` and then `validateKubeFinalizerName`: qualified names, not both
/// `orphan` and `foregroundDeletion`, and a name without a '/' only when it is a standard one.
fn validate_finalizers(finalizers: &[String]) -> Result<(), FieldError> {
    const FIELD: &str = "metadata.finalizers";
    if let Some(bad) = finalizers.iter().find(|f| !is_qualified_name(f)) {
        return Err(field_error(
            FIELD,
            format!("{bad:?} is not a qualified name"),
        ));
    }
    let has = |name: &str| finalizers.iter().any(|f| f == name);
    if has("orphan") && has("foregroundDeletion") {
        let message = "orphan and foregroundDeletion cannot be both set";
        return Err(field_error(FIELD, message));
    }
    for (i, finalizer) in finalizers.iter().enumerate() {
        if !finalizer.contains('/') && !STANDARD_FINALIZERS.contains(&finalizer.as_str()) {
            let message = format!("{finalizer:?} is neither a standard finalizer nor qualified");
            return Err(field_error(format!("{FIELD}[{i}]"), message));
        }
    }
    Ok(())
}
