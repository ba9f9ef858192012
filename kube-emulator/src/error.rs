//! API errors, answered as `Status` objects like the real apiserver's.

use serde_json::{Value, json};

use crate::resource::Resource;

/// A failed API operation: the HTTP code, the `Status` reason and the message the real
/// apiserver would give.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// The HTTP status code (404, 409, ...).
    pub code: u16,
    /// The machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: String,
    /// The human-readable message (`pods "x" not found`).
    pub message: String,
    /// The `details` of the Status (`{"name": .., "group": .., "kind": ..}`), if any.
    pub details: Option<Value>,
}

/// The reason the real server gives with a code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// An error with the reason that goes with `code`.
    pub(crate) fn from_code(code: u16, message: impl Into<String>) -> Self {
        Self::new(code, reason_for(code), message)
    }

    fn with_object(mut self, res: Resource, name: &str) -> Self {
        let mut d = json!({"name": name, "kind": res.plural()});
        if !res.group().is_empty() {
            d["group"] = json!(res.group());
        }
        self.details = Some(d);
        self
    }

    pub(crate) fn not_found(res: Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .with_object(res, name)
    }

    pub(crate) fn already_exists(res: Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .with_object(res, name)
    }

    pub(crate) fn conflict(res: Resource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                res.qualified()
            ),
        )
        .with_object(res, name)
    }

    pub(crate) fn invalid(res: Resource, name: &str, why: &str) -> Self {
        let kind = match res.group() {
            "" => res.kind().to_string(),
            g => format!("{}.{g}", res.kind()),
        };
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {why}"),
        )
        .with_object(res, name)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub(crate) fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    /// The error as a `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}
