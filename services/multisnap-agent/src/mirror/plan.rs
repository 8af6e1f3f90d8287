//! What one mirror round does, decided from what the two agents report, with no call of its
//! own: send (which snapshot, from which base, resuming or not), nothing (in sync), wait (the
//! target is busy with something else), or stop (the target diverged).
//!
//! The target is a copy of this volume as long as its newest snapshot is one this volume sent
//! (same name, and this volume's id recorded as its source id), no older than the one the
//! mirror last recorded. Anything else means someone wrote to it, snapshotted it, rolled it
//! back or replaced it, and sending on would overwrite that: the mirror stops instead.

/// A ready snapshot of the source volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSnap {
    pub id: u64,
    pub name: String,
}

/// A ready snapshot of the target volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSnap {
    /// The target's own id: the newest has the highest.
    pub local_id: u64,
    pub name: String,
    /// The id it had on the volume it was replicated from; 0 for the target's own snapshots.
    pub source_id: u64,
}

/// An apply in progress on the target (`GetApplyState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetApply {
    pub snapshot: String,
    pub source_id: u64,
    /// The target's base snapshot name; empty for a full stream.
    pub base: String,
    pub resumable: bool,
    /// Past its commit point: it completes on its own.
    pub committing: bool,
    pub token: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The target holds the newest source snapshot (or the source has none).
    InSync,
    /// Send `target` from `base` (a full stream without one), continuing from `resume_token`
    /// when it is not empty.
    Send {
        base: Option<SourceSnap>,
        target: SourceSnap,
        resume_token: Vec<u8>,
    },
    /// Nothing can be sent now, for the reason given; try again later.
    Wait(String),
    /// The target holds an apply of this volume's snapshot `snapshot` that this volume no
    /// longer has (deleted by hand or pruned after the transfer was cut): nobody can ever
    /// continue it, so it is aborted there, and the round plans again without it.
    Abandon { snapshot: String },
    /// The target is no longer a copy of this volume; the reason.
    Diverged(String),
}

/// The round's step, and the newest source snapshot the target holds (to record as the
/// mirror's base when it differs from `recorded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub held: Option<SourceSnap>,
    pub step: Step,
}

fn diverged(reason: String) -> Plan {
    Plan {
        held: None,
        step: Step::Diverged(reason),
    }
}

/// Decides the round. `recorded` is the snapshot the mirror last recorded as on the target;
/// `replica_of_this`: the target volume is bound to this volume's deltas (`Volume.replica_of`;
/// a volume applies streams from one source volume only, bound when its first apply begins).
pub fn plan(
    replica_of_this: bool,
    source: &[SourceSnap],
    target: &[TargetSnap],
    apply: Option<&TargetApply>,
    recorded: Option<&SourceSnap>,
) -> Plan {
    let of_source = |id: u64, name: &str| source.iter().find(|s| s.id == id && s.name == name);
    let held = match target.iter().max_by_key(|t| t.local_id) {
        None => {
            if let Some(r) = recorded {
                return diverged(format!(
                    "the target volume holds no snapshot, but it had received {}: it was emptied or replaced",
                    r.name
                ));
            }
            None
        }
        Some(t) => match of_source(t.source_id, &t.name) {
            Some(s) if recorded.is_some_and(|r| s.id < r.id) => {
                return diverged(format!(
                    "the target's newest snapshot {} is older than {}, which it had received: it was rolled back or its snapshots deleted",
                    t.name,
                    recorded.map_or("", |r| &r.name)
                ))
            }
            Some(s) => Some(s.clone()),
            None if recorded.is_some_and(|r| r.id == t.source_id && r.name == t.name) => {
                return diverged(format!(
                    "snapshot {}, the base of the next incremental, was deleted on this volume: the target can only be seeded anew (clear the mirror and mirror to a new volume)",
                    t.name
                ))
            }
            // A snapshot this volume sent (a replica's snapshots with a source id are its
            // source's), after the recorded base, then deleted here: the transfer was cut past
            // its commit point and the agent stopped before recording it.
            None if replica_of_this
                && t.source_id != 0
                && recorded.is_none_or(|r| t.source_id > r.id) =>
            {
                return diverged(format!(
                    "snapshot {}, the target's newest, was sent by this mirror and then deleted on this volume before the next incremental: the target can only be seeded anew (clear the mirror and mirror to a new volume)",
                    t.name
                ))
            }
            None => {
                return diverged(format!(
                    "the target's newest snapshot {} was not sent by this mirror (the target was snapshotted or written to)",
                    t.name
                ))
            }
        },
    };
    if let Some(a) = apply {
        let step = resume_step(a, source, held.as_ref(), replica_of_this);
        return Plan { held, step };
    }
    let step = match source.iter().max_by_key(|s| s.id) {
        None => Step::InSync,
        Some(newest) if held.as_ref() == Some(newest) => Step::InSync,
        Some(newest) => Step::Send {
            base: held.clone(),
            target: newest.clone(),
            resume_token: Vec::new(),
        },
    };
    Plan { held, step }
}

/// An apply in progress on the target is continued if this mirror can have started it: of a
/// source snapshot, resumable, from the base the target holds. Anything else is waited out
/// (an operator's `multisnap replicate` may be running) rather than clobbered.
fn resume_step(
    a: &TargetApply,
    source: &[SourceSnap],
    held: Option<&SourceSnap>,
    replica_of_this: bool,
) -> Step {
    if a.committing {
        return Step::Wait(format!(
            "the target is completing the apply of {}",
            a.snapshot
        ));
    }
    let target = source
        .iter()
        .find(|s| s.id == a.source_id && s.name == a.snapshot);
    // Snapshot ids are never reused within a volume: one gone from this volume never comes
    // back, so its apply can only be dropped (the target keeps its own snapshots either way).
    if target.is_none() && replica_of_this && !source.iter().any(|s| s.id == a.source_id) {
        return Step::Abandon {
            snapshot: a.snapshot.clone(),
        };
    }
    let base_matches = match held {
        Some(h) => a.base == h.name,
        None => a.base.is_empty(),
    };
    match target {
        Some(t) if a.resumable && base_matches => Step::Send {
            base: held.cloned(),
            target: t.clone(),
            resume_token: a.token.clone(),
        },
        _ => Step::Wait(format!(
            "an apply of {} that this mirror cannot continue is in progress on the target; `multisnap delta abort` there drops it",
            a.snapshot
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn src(ids: &[u64]) -> Vec<SourceSnap> {
        ids.iter()
            .map(|&id| SourceSnap {
                id,
                name: format!("s{id}"),
            })
            .collect()
    }

    /// The target after receiving the source snapshots `ids`, in order.
    fn tgt(ids: &[u64]) -> Vec<TargetSnap> {
        ids.iter()
            .enumerate()
            .map(|(i, &id)| TargetSnap {
                local_id: i as u64 + 1,
                name: format!("s{id}"),
                source_id: id,
            })
            .collect()
    }

    /// A target bound to this volume (or to none yet).
    fn plan(
        source: &[SourceSnap],
        target: &[TargetSnap],
        apply: Option<&TargetApply>,
        recorded: Option<&SourceSnap>,
    ) -> Plan {
        super::plan(true, source, target, apply, recorded)
    }

    /// A target bound to another volume's deltas.
    fn plan_foreign(
        source: &[SourceSnap],
        target: &[TargetSnap],
        apply: Option<&TargetApply>,
        recorded: Option<&SourceSnap>,
    ) -> Plan {
        super::plan(false, source, target, apply, recorded)
    }

    fn snap(id: u64) -> SourceSnap {
        SourceSnap {
            id,
            name: format!("s{id}"),
        }
    }

    fn send(base: Option<u64>, target: u64) -> Step {
        Step::Send {
            base: base.map(snap),
            target: snap(target),
            resume_token: Vec::new(),
        }
    }

    #[test]
    fn first_sync_is_full_then_incremental_to_the_newest() {
        assert_eq!(plan(&src(&[]), &[], None, None).step, Step::InSync);
        assert_eq!(plan(&src(&[1, 2]), &[], None, None).step, send(None, 2));
        let p = plan(&src(&[1, 2, 5, 7]), &tgt(&[2]), None, Some(&snap(2)));
        assert_eq!(p.step, send(Some(2), 7));
        assert_eq!(p.held, Some(snap(2)));
        assert_eq!(
            plan(&src(&[2, 7]), &tgt(&[2, 7]), None, Some(&snap(2))),
            Plan {
                held: Some(snap(7)),
                step: Step::InSync
            }
        );
    }

    #[test]
    fn a_newer_snapshot_on_the_target_is_adopted() {
        // The source agent stopped after the target applied 7 and before it recorded that.
        let p = plan(&src(&[2, 7, 9]), &tgt(&[2, 7]), None, Some(&snap(2)));
        assert_eq!(p.held, Some(snap(7)));
        assert_eq!(p.step, send(Some(7), 9));
    }

    #[test]
    fn a_diverged_target_stops_the_mirror_with_the_reason() {
        let reason = |p: Plan| match p.step {
            Step::Diverged(r) => r,
            other => panic!("not diverged: {other:?}"),
        };
        let mut t = tgt(&[2]);
        t.push(TargetSnap {
            local_id: 9,
            name: "mine".into(),
            source_id: 0,
        });
        assert!(reason(plan(&src(&[2, 3]), &t, None, Some(&snap(2))))
            .contains("newest snapshot mine was not sent by this mirror"));
        assert!(
            reason(plan(&src(&[2, 3]), &[], None, Some(&snap(2)))).contains("holds no snapshot")
        );
        assert!(
            reason(plan(&src(&[2, 3]), &tgt(&[2]), None, Some(&snap(3)))).contains("older than s3")
        );
        assert!(reason(plan(&src(&[3]), &tgt(&[2]), None, Some(&snap(2))))
            .contains("was deleted on this volume"));
        // s5 reached the target, then was deleted here before the mirror recorded it; also as
        // the first snapshot of a new target (nothing recorded yet).
        let deleted =
            "s5, the target's newest, was sent by this mirror and then deleted on this volume";
        let p = plan(&src(&[2, 6]), &tgt(&[2, 5]), None, Some(&snap(2)));
        assert!(reason(p).contains(deleted));
        assert!(reason(plan(&src(&[6]), &tgt(&[5]), None, None)).contains(deleted));
        // The same on a target bound to another volume: not this mirror's.
        let p = plan_foreign(&src(&[6]), &tgt(&[5]), None, None);
        assert!(reason(p).contains("not sent by this mirror"));
        // Same name, another source id: another volume's snapshot.
        let other = vec![TargetSnap {
            local_id: 1,
            name: "s2".into(),
            source_id: 77,
        }];
        let p = plan_foreign(&src(&[2]), &other, None, None);
        assert!(reason(p).contains("not sent by this mirror"));
    }

    #[test]
    fn an_apply_in_progress_is_resumed_only_if_it_is_the_mirrors() {
        let apply = |snapshot: u64, base: &str, resumable: bool| TargetApply {
            snapshot: format!("s{snapshot}"),
            source_id: snapshot,
            base: base.into(),
            resumable,
            committing: false,
            token: vec![1, 2, 3],
        };
        // Resumed even though a newer snapshot exists by now: that one comes next.
        let p = plan(
            &src(&[2, 5, 6]),
            &tgt(&[2]),
            Some(&apply(5, "s2", true)),
            Some(&snap(2)),
        );
        assert_eq!(
            p.step,
            Step::Send {
                base: Some(snap(2)),
                target: snap(5),
                resume_token: vec![1, 2, 3]
            }
        );
        let first = plan(&src(&[5]), &[], Some(&apply(5, "", true)), None);
        assert!(matches!(first.step, Step::Send { base: None, .. }));
        let p = plan_foreign(&src(&[2, 5]), &[], Some(&apply(8, "", true)), None);
        assert!(matches!(p.step, Step::Wait(_)), "{:?}", p.step);
        for a in [apply(5, "s2", false), apply(5, "s1", true)] {
            let p = plan(&src(&[2, 5]), &tgt(&[2]), Some(&a), Some(&snap(2)));
            assert!(matches!(p.step, Step::Wait(_)), "{a:?}: {:?}", p.step);
        }
        let mut busy = apply(5, "s2", true);
        busy.committing = true;
        let p = plan(&src(&[2, 5]), &tgt(&[2]), Some(&busy), Some(&snap(2)));
        assert!(matches!(p.step, Step::Wait(r) if r.contains("completing")));
    }

    /// A transfer of s5 was cut, then s5 was deleted here: the target's apply of it can never
    /// be continued (the mirror used to wait for it forever). It is abandoned, whatever its
    /// base, and only if it is this volume's and not past its commit point.
    #[test]
    fn an_apply_of_a_snapshot_deleted_here_is_abandoned() {
        let apply = |base: &str| TargetApply {
            snapshot: "s5".into(),
            source_id: 5,
            base: base.into(),
            resumable: true,
            committing: false,
            token: vec![7],
        };
        for (target, a) in [(tgt(&[2]), apply("s2")), (vec![], apply(""))] {
            let recorded = target.first().map(|t| snap(t.source_id));
            let p = plan(&src(&[2, 6]), &target, Some(&a), recorded.as_ref());
            assert_eq!(
                p.step,
                Step::Abandon {
                    snapshot: "s5".into()
                }
            );
        }
        let mut committing = apply("s2");
        committing.committing = true;
        let p = plan(&src(&[2, 6]), &tgt(&[2]), Some(&committing), Some(&snap(2)));
        assert!(matches!(p.step, Step::Wait(_)), "{:?}", p.step);
        let p = plan_foreign(&src(&[6]), &[], Some(&apply("")), None);
        assert!(matches!(p.step, Step::Wait(_)), "{:?}", p.step);
    }

    proptest! {
        /// Model: a target that only ever received source snapshots in increasing order is
        /// never declared diverged, and the round always sends the newest source snapshot from
        /// the newest one the target holds (or nothing if it holds it).
        #[test]
        fn a_target_fed_only_by_the_mirror_never_diverges(
            ids in proptest::collection::btree_set(1u64..1000, 1..30),
            cut in 0usize..30,
            recorded_back in 0usize..3,
        ) {
            let ids: Vec<u64> = ids.into_iter().collect();
            let cut = cut.min(ids.len());
            let received: Vec<u64> = ids[..cut].to_vec();
            // The record may lag behind what the target holds (a cut before it was saved).
            let recorded = received.len().checked_sub(1 + recorded_back).map(|i| snap(received[i]));
            let p = plan(&src(&ids), &tgt(&received), None, recorded.as_ref());
            let newest = *ids.last().unwrap();
            match received.last() {
                Some(&h) if h == newest => prop_assert_eq!(p.step, Step::InSync),
                Some(&h) => prop_assert_eq!(p.step, send(Some(h), newest)),
                None => prop_assert_eq!(p.step, send(None, newest)),
            }
        }
    }
}
