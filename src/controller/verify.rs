//! Claims: a state the operator did not sign (a tenant's edit, a restore into another cluster,
//! an adoption annotation, a status rebuilt from `.status`) is a hint. No deployment it names
//! is cancelled, deleted or adopted while another object holds it: the holder is the object
//! whose state the operator signed (see `Context::holder_of`).

use kube::runtime::events::EventType;

use super::decision::Health;
use super::round::Round;
use super::state::Trust;
use crate::api::DeploymentsApi;
use crate::resource::ANNOTATION_DEPLOYMENT_ID;

/// A deployment this object names and another object holds.
pub(super) struct Taken {
    pub id: String,
    pub holder: String,
}

impl<A: DeploymentsApi> Round<'_, A> {
    /// The deployments of an unsigned state that other objects hold.
    pub fn taken(&self) -> Vec<Taken> {
        if self.trust == Trust::Signed {
            return Vec::new();
        }
        self.state
            .ids()
            .into_iter()
            .filter_map(|id| {
                let holder = self.ctx.holder_of(&self.obj, self.trust, &id)?;
                Some(Taken { id, holder })
            })
            .collect()
    }

    /// Deletion of an object that names deployments held by others: those are left alone,
    /// and the user is told which.
    pub async fn let_go_of(&mut self, taken: &[Taken]) {
        for t in taken {
            if self.state.id.as_deref() == Some(t.id.as_str()) {
                self.state.id = None;
            }
            self.state.history.retain(|h| *h != t.id);
            self.event_of(
                EventType::Warning,
                "AlreadyManaged",
                "LeaveInPlace",
                &format!(
                    "left deployment {} in place: it is managed by {}, not by this object",
                    t.id, t.holder
                ),
            )
            .await;
        }
    }
}

/// The condition of an object that names deployments other objects hold.
pub(super) fn already_managed(taken: &[Taken]) -> Health {
    let named: Vec<String> = taken
        .iter()
        .map(|t| format!("{} (managed by {})", t.id, t.holder))
        .collect();
    Health::stalled(
        "AlreadyManaged",
        format!(
            "this object names deployments another object manages: {}; remove annotation {ANNOTATION_DEPLOYMENT_ID} (or git.dev/state) from this object, or delete the other object first",
            named.join(", ")
        ),
    )
}
