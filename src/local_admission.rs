//! The in-process Service admission of `svcplane dev`: the controller's allocation module
//! behind the API server's admission interface, with no HTTP between them.

use std::sync::Arc;

use apiserver::{AdmissionRequest, Denial, ServiceAdmission};
use controller::{AllocationRequest, ServiceAllocator};
use futures::future::BoxFuture;
use ipam::store::Store;
use serde_json::Value;

/// Allocates ClusterIPs and NodePorts for the Services the API server admits.
pub(crate) struct LocalAdmission<S: Store> {
    allocator: Arc<ServiceAllocator<S>>,
}

impl<S: Store> LocalAdmission<S> {
    pub(crate) fn new(allocator: Arc<ServiceAllocator<S>>) -> LocalAdmission<S> {
        LocalAdmission { allocator }
    }
}

impl<S: Store> ServiceAdmission for LocalAdmission<S> {
    fn name(&self) -> &str {
        "svcplane allocation"
    }

    fn admit(&self, request: AdmissionRequest) -> BoxFuture<'_, Result<Value, Denial>> {
        Box::pin(async move {
            let request = AllocationRequest {
                uid: request.uid,
                object: request.object,
                old_object: request.old_object,
                dry_run: request.dry_run,
                deadline: None,
            };
            match self.allocator.admit(&request).await {
                Ok(admitted) => Ok(admitted.object),
                Err(d) => Err(Denial {
                    code: d.code,
                    reason: d.reason,
                    message: d.message,
                    field: d.field,
                    details: None,
                }),
            }
        })
    }

    fn abandon(&self, request: AdmissionRequest) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.allocator.abandon(&request.uid).await;
        })
    }
}
