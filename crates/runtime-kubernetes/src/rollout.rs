//! Whether a service's rollout is done, from the Deployment and pods the API server reports
//! (kubernetes.md, "Rollout, failure, teardown, logs").
//!
//! The `Progressing` condition's `NewReplicaSetAvailable` is never taken as done: it stays
//! true from the previous rollout until the controller has seen the new template. Only the
//! replica counts of an observed generation at least the applied one say the new pods serve.

use crate::render::{ENV_SHA256_ANNOTATION, RELEASE_ANNOTATION};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Waiting reasons that will not resolve by waiting: the release fails at once.
const FATAL_WAITING: [&str; 4] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
];

/// The longest condition or container message quoted in a failure reason.
const MAX_MESSAGE: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the applied template and is available.
    Ready,
    /// Not there yet; ask again.
    Progressing,
    /// It will not get there: the reason names the service's container (or init container)
    /// and why, and is safe to show the stack owner.
    Failed { reason: String },
}

/// The state of the rollout of `deployment` after an apply that returned
/// `applied_generation`, given the pods of the service. Pods whose template annotations
/// (release, env hash) differ from the Deployment's belong to an earlier rollout and are
/// ignored: an old pod crash-looping must not fail the release replacing it.
pub fn rollout(deployment: &Deployment, applied_generation: i64, pods: &[Pod]) -> Rollout {
    let status = deployment.status.clone().unwrap_or_default();
    // Until the controller has observed our generation, every condition and count describes
    // the previous template.
    if status.observed_generation.unwrap_or(0) < applied_generation {
        return Rollout::Progressing;
    }
    if let Some(stuck) = status.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.status.as_deref() == Some("False")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        let mut reason = "did not become ready within the deploy timeout".to_owned();
        if let Some(message) = stuck.message.as_deref().filter(|m| !m.is_empty()) {
            reason.push_str(": ");
            reason.push_str(&truncate(message));
        }
        return Rollout::Failed { reason };
    }
    if let Some(reason) = pods
        .iter()
        .filter(|pod| same_template(deployment, pod))
        .find_map(fatal_waiting)
    {
        return Rollout::Failed { reason };
    }
    let want = deployment.spec.replicas.unwrap_or(1);
    let ready = status.updated_replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want;
    if ready {
        Rollout::Ready
    } else {
        Rollout::Progressing
    }
}

/// Whether `pod` was made from the Deployment's current template, as far as Stackyard's
/// annotations tell.
fn same_template(deployment: &Deployment, pod: &Pod) -> bool {
    let template = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    let pod = pod.metadata.annotations.as_ref();
    [RELEASE_ANNOTATION, ENV_SHA256_ANNOTATION]
        .iter()
        .all(|key| {
            let want = template.and_then(|a| a.get(*key));
            want.is_none() || want == pod.and_then(|a| a.get(*key))
        })
}

/// The first container of `pod`, init containers first, waiting for a reason that will not
/// pass, as a failure reason.
fn fatal_waiting(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    init.map(|c| ("init container", c))
        .chain(main.map(|c| ("container", c)))
        .find_map(|(what, c)| {
            let (reason, message) = waiting(c)?;
            if !FATAL_WAITING.contains(&reason) {
                return None;
            }
            let mut out = format!("{what} `{}` is waiting: {reason}", c.name);
            if let Some(message) = message.filter(|m| !m.is_empty()) {
                out.push_str(" (");
                out.push_str(&truncate(message));
                out.push(')');
            }
            Some(out)
        })
}

fn waiting(c: &ContainerStatus) -> Option<(&str, Option<&str>)> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    Some((waiting.reason.as_deref()?, waiting.message.as_deref()))
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn annotations(release: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([
            (RELEASE_ANNOTATION.to_owned(), release.to_owned()),
            (ENV_SHA256_ANNOTATION.to_owned(), "abc".to_owned()),
        ]))
    }

    /// A Deployment of release 2 whose status the controller last wrote for `observed`.
    fn deployment(observed: i64, counts: (i32, i32, i32)) -> Deployment {
        let (replicas, updated, available) = counts;
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                replicas: Some(1),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: annotations("2"),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..DeploymentSpec::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ready_replicas: Some(available),
                ..DeploymentStatus::default()
            }),
        }
    }

    fn with_condition(mut d: Deployment, status: &str, reason: &str) -> Deployment {
        if let Some(s) = d.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: Some("Progressing".into()),
                status: Some(status.into()),
                reason: Some(reason.into()),
                message: Some("ReplicaSet \"web-5d4f\" has timed out progressing.".into()),
                ..DeploymentCondition::default()
            }]);
        }
        d
    }

    fn pod(release: &str, init: Option<(&str, &str)>, main: Option<(&str, &str)>) -> Pod {
        let status = |c: Option<(&str, &str)>| {
            c.map(|(name, reason)| {
                vec![ContainerStatus {
                    name: name.into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some(format!("{reason} for {name}")),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]
            })
        };
        Pod {
            metadata: ObjectMeta {
                annotations: annotations(release),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                init_container_statuses: status(init),
                container_statuses: status(main),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn ready_once_the_applied_generation_is_observed_and_every_replica_is_updated() {
        assert_eq!(rollout(&deployment(2, (1, 1, 1)), 2, &[]), Rollout::Ready);
        assert_eq!(rollout(&deployment(3, (1, 1, 1)), 2, &[]), Rollout::Ready);
    }

    #[test]
    fn stale_new_replica_set_available_from_the_previous_rollout_is_not_ready() {
        // The controller has not seen generation 2 yet: its counts and its
        // "NewReplicaSetAvailable" describe release 1.
        let d = with_condition(deployment(1, (1, 1, 1)), "True", "NewReplicaSetAvailable");
        assert_eq!(rollout(&d, 2, &[]), Rollout::Progressing);
    }

    #[test]
    fn new_replica_set_available_alone_is_not_ready() {
        // Observed, but the new pod is not available yet while the old one still is.
        let d = with_condition(deployment(2, (2, 1, 1)), "True", "NewReplicaSetAvailable");
        assert_eq!(rollout(&d, 2, &[]), Rollout::Progressing);
        let d = with_condition(deployment(2, (1, 1, 0)), "True", "NewReplicaSetAvailable");
        assert_eq!(rollout(&d, 2, &[]), Rollout::Progressing);
    }

    #[test]
    fn old_pod_still_available_during_the_surge_is_not_ready() {
        assert_eq!(
            rollout(&deployment(2, (2, 1, 2)), 2, &[]),
            Rollout::Progressing
        );
    }

    #[test]
    fn replicas_default_to_one() {
        let mut d = deployment(2, (1, 1, 1));
        d.spec.replicas = None;
        assert_eq!(rollout(&d, 2, &[]), Rollout::Ready);
    }

    #[test]
    fn missing_status_is_progressing() {
        let mut d = deployment(2, (1, 1, 1));
        d.status = None;
        assert_eq!(rollout(&d, 2, &[]), Rollout::Progressing);
    }

    #[test]
    fn progress_deadline_exceeded_fails() {
        let d = with_condition(
            deployment(2, (2, 1, 1)),
            "False",
            "ProgressDeadlineExceeded",
        );
        let Rollout::Failed { reason } = rollout(&d, 2, &[]) else {
            panic!("expected a failure");
        };
        assert!(reason.contains("deploy timeout"), "{reason}");
        assert!(reason.contains("timed out progressing"), "{reason}");
    }

    #[test]
    fn progress_deadline_exceeded_of_the_previous_rollout_is_ignored() {
        let d = with_condition(
            deployment(1, (1, 1, 1)),
            "False",
            "ProgressDeadlineExceeded",
        );
        assert_eq!(rollout(&d, 2, &[]), Rollout::Progressing);
    }

    #[test]
    fn each_fatal_waiting_reason_fails_and_names_the_container() {
        for reason in FATAL_WAITING {
            let d = deployment(2, (2, 1, 1));
            let got = rollout(&d, 2, &[pod("2", None, Some(("web", reason)))]);
            assert_eq!(
                got,
                Rollout::Failed {
                    reason: format!("container `web` is waiting: {reason} ({reason} for web)")
                }
            );
        }
    }

    #[test]
    fn init_container_failure_names_the_init_container() {
        let d = deployment(2, (2, 1, 1));
        let got = rollout(
            &d,
            2,
            &[pod("2", Some(("fetch", "CrashLoopBackOff")), None)],
        );
        assert_eq!(
            got,
            Rollout::Failed {
                reason: "init container `fetch` is waiting: CrashLoopBackOff \
                         (CrashLoopBackOff for fetch)"
                    .into()
            }
        );
    }

    #[test]
    fn passing_waiting_reasons_keep_progressing() {
        let d = deployment(2, (2, 1, 1));
        let pods = [
            pod("2", Some(("fetch", "PodInitializing")), None),
            pod("2", None, Some(("web", "ContainerCreating"))),
        ];
        assert_eq!(rollout(&d, 2, &pods), Rollout::Progressing);
    }

    #[test]
    fn pods_of_the_previous_release_do_not_fail_the_rollout() {
        let d = deployment(2, (2, 1, 1));
        let old = pod("1", None, Some(("web", "CrashLoopBackOff")));
        assert_eq!(rollout(&d, 2, &[old]), Rollout::Progressing);
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(1000);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE + 1);
    }
}
