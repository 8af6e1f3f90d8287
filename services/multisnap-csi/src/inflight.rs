//! Operations in flight, by the name or id they act on. CSI asks a plugin to answer ABORTED to
//! a call on a volume or snapshot that another call is still working on; the sidecars then
//! retry. Keys live only in memory: after a restart nothing is in flight, and every call is
//! idempotent against the agent's state.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tonic::Status;

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Holds keys until dropped.
pub struct Claim {
    keys: Arc<Mutex<HashSet<String>>>,
    held: Vec<String>,
}

impl InFlight {
    /// Claims every key, or none: ABORTED naming the first key already claimed.
    pub fn claim(&self, keys: &[String]) -> Result<Claim, Status> {
        let mut set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(busy) = keys.iter().find(|k| set.contains(*k)) {
            return Err(Status::aborted(format!(
                "an operation on {busy} is already in progress; retry when it ends"
            )));
        }
        for k in keys {
            set.insert(k.clone());
        }
        Ok(Claim {
            keys: self.keys.clone(),
            held: keys.to_vec(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.held {
            set.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_key_aborts_others_until_released() {
        let f = InFlight::default();
        let a = f.claim(&["volume a".into()]).unwrap();
        let err = f
            .claim(&["volume b".into(), "volume a".into()])
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert!(err.message().contains("volume a"));
        // Nothing of the refused claim stayed behind.
        drop(f.claim(&["volume b".into()]).unwrap());
        drop(a);
        drop(f.claim(&["volume a".into()]).unwrap());
    }
}
