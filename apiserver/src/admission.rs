//! The Service admission interface: after the plain defaults, every Service create and update
//! passes through each configured [`ServiceAdmission`] in turn, which returns the object to store
//! (possibly patched with allocations) or a denial the client receives as a Status.
//!
//! The API server defines the interface and implements none of it: the HTTPS webhook client and
//! the in-process allocation module live outside this crate.

use futures::future::BoxFuture;
use serde_json::Value;

/// What the API server is about to do with a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

impl Operation {
    /// The AdmissionReview spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
        }
    }
}

/// One Service write, after defaulting and validation of the client's fields.
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    /// Identifies this admission: the AdmissionReview's `uid`, and what
    /// [`ServiceAdmission::abandon`] is given back for the same write.
    pub uid: String,
    pub operation: Operation,
    pub namespace: String,
    pub name: String,
    /// The Service as it would be stored (a `core/v1 Service` as JSON).
    pub object: Value,
    /// The stored Service an update replaces.
    pub old_object: Option<Value>,
    /// `dryRun=All`: nothing may be allocated for real.
    pub dry_run: bool,
}

/// A refusal, returned to the client as a Status with this code, reason and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub code: u16,
    /// `Invalid`, `Forbidden`, `InternalError`, ...; empty means "derive from the code".
    pub reason: String,
    pub message: String,
    /// The field at fault, e.g. `spec.clusterIPs`.
    pub field: Option<String>,
    /// A webhook's Status details (name, kind, field causes), passed on as given, as
    /// kube-apiserver passes them.
    pub details: Option<Value>,
}

/// Mutating admission for Services.
pub trait ServiceAdmission: Send + Sync {
    /// A short name for logs and error messages.
    fn name(&self) -> &str;

    /// Whether this admission runs where kube-apiserver runs mutating admission webhooks: on a
    /// create, before the name is generated from `generateName`, before the UID and creation
    /// timestamp are set and before validation. The in-process allocation of `svcplane dev`
    /// (false, the default) runs after them, on a validated, named object.
    fn before_naming(&self) -> bool {
        false
    }

    /// The object to store (the request's object, possibly changed) or a denial.
    fn admit(&self, request: AdmissionRequest) -> BoxFuture<'_, Result<Value, Denial>>;

    /// The write this admission admitted did not happen (a later admission denied it, it was
    /// invalid, or the storage refused it): `request.uid` is the admission's, `request.object`
    /// the object as admitted. An admission that took something for that request may give it
    /// back (only what that request took: the object may carry values another write of it
    /// stored). Webhooks cannot be told, so the default does nothing.
    fn abandon(&self, request: AdmissionRequest) -> BoxFuture<'_, ()> {
        let _ = request;
        Box::pin(async {})
    }
}
