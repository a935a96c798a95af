//! A promote's decisions on the locked source (`FamilyStore::promote`): what it promotes, or
//! why it cannot.

use super::Locked;
use crate::model::{Release, ReleaseStatus, StackStatus};
use crate::store::PromoteError;

/// The source's live release, checked under the source's lock: not `deleting`, in the env
/// the caller named (`from`), with a live release that has services.
pub fn source_release<'a>(
    source: &'a Locked,
    from: Option<&str>,
    to: &str,
) -> Result<&'a Release, PromoteError> {
    if source.stack.status == StackStatus::Deleting {
        return Err(PromoteError::Deleting);
    }
    // Without `from`, the target env may be the source's own: the family's stack for it is
    // the source itself.
    if to == source.stack.environment {
        return Err(PromoteError::InvalidTarget);
    }
    if let Some(from) = from
        && from != source.stack.environment
    {
        return Err(PromoteError::EnvMismatch {
            actual: source.stack.environment.clone(),
        });
    }
    let live = source
        .with_status(ReleaseStatus::Live)
        .last()
        .ok_or(PromoteError::NoLiveRelease)?;
    if live.services.is_empty() {
        return Err(PromoteError::NoServices);
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fixtures::*;
    use crate::model::ReleaseStatus::*;

    #[test]
    fn the_live_release_is_promoted_and_a_pending_one_is_not() {
        let l = locked(
            StackStatus::Building,
            2,
            vec![],
            vec![
                release(1, Live, &["web"]),
                release(2, Pending, &["web", "api"]),
            ],
        );
        assert_eq!(source_release(&l, None, "staging").unwrap().info.version, 1);
        assert_eq!(
            source_release(&l, Some("development"), "staging")
                .unwrap()
                .info
                .version,
            1
        );
    }

    #[test]
    fn a_wrong_from_a_deleting_source_or_no_live_release_refuse() {
        let l = locked(
            StackStatus::Healthy,
            1,
            vec![],
            vec![release(1, Live, &["web"])],
        );
        assert_eq!(
            source_release(&l, Some("staging"), "prod").unwrap_err(),
            PromoteError::EnvMismatch {
                actual: "development".into()
            }
        );
        let deleting = locked(
            StackStatus::Deleting,
            1,
            vec![],
            vec![release(1, Live, &["web"])],
        );
        assert_eq!(
            source_release(&deleting, None, "prod").unwrap_err(),
            PromoteError::Deleting
        );
        let pending = locked(
            StackStatus::Building,
            1,
            vec![],
            vec![release(1, Pending, &["web"])],
        );
        assert_eq!(
            source_release(&pending, None, "prod").unwrap_err(),
            PromoteError::NoLiveRelease
        );
        let empty = locked(StackStatus::Healthy, 1, vec![], vec![release(1, Live, &[])]);
        assert_eq!(
            source_release(&empty, None, "prod").unwrap_err(),
            PromoteError::NoServices
        );
    }
}
