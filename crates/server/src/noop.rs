//! The `noop` runtime: runs nothing, but walks every service through `building → deploying →
//! healthy` on the same job path the real runtimes use. For demos, API tests and CI.

use stackyard_core::StackSlug;
use stackyard_core::model::ServiceStatus;
use stackyard_core::runtime::{BoxFuture, DeployPlan, Runtime, RuntimeError, StatusSink};
use std::time::Duration;

pub struct NoopRuntime {
    /// Pause between steps, so in-flight states are observable.
    pub step: Duration,
}

impl Runtime for NoopRuntime {
    fn name(&self) -> &'static str {
        "noop"
    }

    /// It runs nothing, so like a runtime that runs images it takes any build context.
    fn needs_start_command(&self) -> bool {
        false
    }

    fn deploy<'a>(
        &'a self,
        plan: &'a DeployPlan,
        sink: &'a dyn StatusSink,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            for status in [
                ServiceStatus::Building,
                ServiceStatus::Deploying,
                ServiceStatus::Healthy,
            ] {
                for svc in &plan.services {
                    sink.service_status(&svc.name, status, None, None).await;
                }
                tokio::time::sleep(self.step).await;
            }
            Ok(())
        })
    }

    fn teardown<'a>(&'a self, _slug: &'a StackSlug) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            tokio::time::sleep(self.step).await;
            Ok(())
        })
    }
}
