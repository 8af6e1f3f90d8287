//! Every decision `multisnap replicate` makes before it streams, without agents.

use super::*;
use std::process::ExitCode;

fn args() -> ReplicateArgs {
    ReplicateArgs {
        volume: "vol".into(),
        to: endpoint::Target::Tcp("http://b:50051".into()),
        to_volume: None,
        snapshot: None,
        full: false,
        no_resume: false,
        cost: StreamCost::default(),
    }
}

/// A ready snapshot taken on the source.
fn taken(id: u64, name: &str) -> pb::Snapshot {
    pb::Snapshot {
        id,
        name: name.into(),
        state: pb::SnapshotState::Ready as i32,
        ..Default::default()
    }
}

/// A ready snapshot the receiver holds, made by an apply of source snapshot `source_id`. Its
/// own id on the receiver is deliberately unrelated to the source's.
fn replicated(name: &str, source_id: u64) -> pb::Snapshot {
    pb::Snapshot {
        id: 1000 + source_id,
        name: name.into(),
        state: pb::SnapshotState::Ready as i32,
        source_snapshot_id: source_id,
        ..Default::default()
    }
}

fn in_state(s: pb::Snapshot, state: pb::SnapshotState) -> pb::Snapshot {
    pb::Snapshot {
        state: state as i32,
        ..s
    }
}

fn send(snapshot: &str, source_id: u64, base: Option<&str>) -> Choice {
    Choice::Send(wanted(snapshot, source_id, base))
}

fn wanted(snapshot: &str, source_id: u64, base: Option<&str>) -> Wanted {
    Wanted {
        snapshot: snapshot.into(),
        source_id,
        base: base.map(String::from),
    }
}

fn idle() -> pb::ApplyState {
    pb::ApplyState::default()
}

fn unfinished(snapshot: &str, source_id: u64, base: &str, resumable: bool) -> pb::ApplyState {
    pb::ApplyState {
        in_progress: true,
        snapshot_name: snapshot.into(),
        source_snapshot_id: source_id,
        base_snapshot: base.into(),
        resumable,
        resume_token: vec![0xab, 0x01],
        ..Default::default()
    }
}

// --- which snapshot is sent --------------------------------------------------------------

#[test]
fn a_source_without_snapshots_is_refused() {
    let err = choose(&[], &[], &args()).unwrap_err();
    assert_eq!(
        err,
        PlanError::NoSnapshots {
            volume: "vol".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "volume vol has no snapshot to replicate; create one first"
    );
}

#[test]
fn snapshots_that_are_not_ready_do_not_count_on_the_source() {
    let source = [
        in_state(taken(1, "deleting"), pb::SnapshotState::Deleting),
        in_state(taken(2, "invalid"), pb::SnapshotState::Invalid),
    ];
    assert!(matches!(
        choose(&source, &[], &args()),
        Err(PlanError::NoSnapshots { .. })
    ));
    // The newest ready one is sent, not a newer one that is being deleted.
    let source = [
        taken(1, "s1"),
        in_state(taken(2, "s2"), pb::SnapshotState::Deleting),
    ];
    assert_eq!(choose(&source, &[], &args()), Ok(send("s1", 1, None)));
}

#[test]
fn a_missing_snapshot_named_by_the_operator_is_refused() {
    let source = [
        taken(1, "s1"),
        in_state(taken(2, "s2"), pb::SnapshotState::Invalid),
    ];
    for name in ["s9", "s2"] {
        let a = ReplicateArgs {
            snapshot: Some(name.into()),
            ..args()
        };
        let err = choose(&source, &[], &a).unwrap_err();
        assert_eq!(
            err,
            PlanError::NoSuchSnapshot {
                volume: "vol".into(),
                name: name.into()
            }
        );
        assert_eq!(
            err.to_string(),
            format!("volume vol has no ready snapshot named \"{name}\"")
        );
    }
}

#[test]
fn the_default_snapshot_is_the_newest_by_id_not_by_list_order_or_name() {
    let source = [taken(3, "a"), taken(7, "b"), taken(5, "z")];
    assert_eq!(choose(&source, &[], &args()), Ok(send("b", 7, None)));
}

#[test]
fn a_named_snapshot_is_sent_even_when_newer_ones_exist() {
    let source = [taken(1, "s1"), taken(2, "s2"), taken(3, "s3")];
    let receiver = [replicated("s1", 1)];
    let a = ReplicateArgs {
        snapshot: Some("s2".into()),
        ..args()
    };
    assert_eq!(
        choose(&source, &receiver, &a),
        Ok(send("s2", 2, Some("s1")))
    );
}

#[test]
fn a_snapshot_the_receiver_holds_is_not_sent_again_even_with_full() {
    let source = [taken(1, "s1"), taken(2, "s2")];
    let receiver = [replicated("s1", 1), replicated("s2", 2)];
    let already = Ok(Choice::AlreadyThere {
        snapshot: "s2".into(),
    });
    assert_eq!(choose(&source, &receiver, &args()), already);
    let full = ReplicateArgs {
        full: true,
        ..args()
    };
    assert_eq!(choose(&source, &receiver, &full), already);
}

// --- from which base -----------------------------------------------------------------------

#[test]
fn an_empty_receiver_gets_a_full_stream() {
    let source = [taken(1, "s1"), taken(2, "s2")];
    assert_eq!(choose(&source, &[], &args()), Ok(send("s2", 2, None)));
}

#[test]
fn the_base_is_the_newest_common_snapshot_by_source_id() {
    // Listed out of order, and names that sort the other way round than the ids.
    let source = [taken(4, "d"), taken(2, "y"), taken(1, "z"), taken(3, "x")];
    let receiver = [replicated("y", 2), replicated("x", 3), replicated("z", 1)];
    assert_eq!(
        choose(&source, &receiver, &args()),
        Ok(send("d", 4, Some("x")))
    );
}

#[test]
fn full_sends_everything_although_the_receiver_holds_a_base() {
    let source = [taken(1, "s1"), taken(2, "s2")];
    let receiver = [replicated("s1", 1)];
    let a = ReplicateArgs {
        full: true,
        ..args()
    };
    assert_eq!(choose(&source, &receiver, &a), Ok(send("s2", 2, None)));
}

#[test]
fn a_common_snapshot_needs_the_same_name_and_source_id() {
    let source = [taken(1, "s1"), taken(2, "s2"), taken(3, "s3")];
    // "s2" there came from another snapshot (say, of a volume recreated under the same name);
    // the copy of source snapshot 2 there was renamed.
    let diverged = [
        replicated("s1", 1),
        replicated("s2", 99),
        replicated("other", 2),
    ];
    assert_eq!(
        choose(&source, &diverged, &args()),
        Ok(send("s3", 3, Some("s1")))
    );
    // Neither counts as holding the target either.
    let target_lookalikes = [replicated("s3", 4), replicated("renamed", 3)];
    assert_eq!(
        choose(&source, &target_lookalikes, &args()),
        Ok(send("s3", 3, None))
    );
}

#[test]
fn snapshots_that_are_not_ready_do_not_count_on_the_receiver() {
    let source = [taken(1, "s1"), taken(2, "s2")];
    let receiver = [
        replicated("s1", 1),
        in_state(replicated("s2", 2), pb::SnapshotState::Deleting),
    ];
    // s2 is not held (so it is sent), s1 is the base.
    assert_eq!(
        choose(&source, &receiver, &args()),
        Ok(send("s2", 2, Some("s1")))
    );
    let receiver = [in_state(replicated("s1", 1), pb::SnapshotState::Invalid)];
    assert_eq!(choose(&source, &receiver, &args()), Ok(send("s2", 2, None)));
}

#[test]
fn only_an_older_snapshot_can_be_the_base_when_the_receiver_is_ahead() {
    let source = [taken(1, "s1"), taken(2, "s2"), taken(3, "s3")];
    let a = ReplicateArgs {
        snapshot: Some("s2".into()),
        ..args()
    };
    let ahead = [replicated("s1", 1), replicated("s3", 3)];
    assert_eq!(choose(&source, &ahead, &a), Ok(send("s2", 2, Some("s1"))));
    let only_newer = [replicated("s3", 3)];
    assert_eq!(choose(&source, &only_newer, &a), Ok(send("s2", 2, None)));
}

#[test]
fn a_base_the_source_no_longer_has_is_not_used() {
    // s1 was deleted on the source after it was replicated.
    let source = [taken(2, "s2"), taken(3, "s3")];
    let receiver = [replicated("s1", 1)];
    assert_eq!(choose(&source, &receiver, &args()), Ok(send("s3", 3, None)));
}

// --- continue or refuse an unfinished apply ------------------------------------------------

#[test]
fn with_no_apply_in_progress_the_choice_stands() {
    let p = plan(wanted("s2", 2, Some("s1")), &idle(), &args()).unwrap();
    assert_eq!(
        p,
        Plan {
            snapshot: "s2".into(),
            base: Some("s1".into()),
            resume_token: Vec::new(),
            resumable: true,
        }
    );
    assert!(!p.resume());
    assert_eq!(p.mode(), "incremental since s1");
    let p = plan(wanted("s2", 2, None), &idle(), &args()).unwrap();
    assert_eq!(p.mode(), "full");
}

#[test]
fn no_resume_asks_the_receiver_not_to_keep_a_partial_apply() {
    let a = ReplicateArgs {
        no_resume: true,
        ..args()
    };
    let p = plan(wanted("s2", 2, None), &idle(), &a).unwrap();
    assert!(!p.resumable);
    assert!(!p.resume());
}

#[test]
fn an_interrupted_apply_of_the_same_snapshot_is_continued_from_its_own_base() {
    // The base it started with wins over the one chosen now, and over --full.
    let state = unfinished("s3", 3, "s1", true);
    for chosen in [Some("s2"), None] {
        let p = plan(wanted("s3", 3, chosen), &state, &args()).unwrap();
        assert_eq!(
            p,
            Plan {
                snapshot: "s3".into(),
                base: Some("s1".into()),
                resume_token: vec![0xab, 0x01],
                resumable: true,
            }
        );
        assert!(p.resume());
        assert_eq!(p.mode(), "resumed");
    }
    // An interrupted full stream stays full.
    let state = unfinished("s3", 3, "", true);
    let p = plan(wanted("s3", 3, Some("s2")), &state, &args()).unwrap();
    assert_eq!(p.base, None);
    assert_eq!(p.mode(), "resumed");
}

#[test]
fn an_unfinished_apply_without_a_token_is_restarted_from_its_own_base() {
    let state = pb::ApplyState {
        resume_token: Vec::new(),
        ..unfinished("s3", 3, "s1", true)
    };
    let p = plan(wanted("s3", 3, Some("s2")), &state, &args()).unwrap();
    assert_eq!(p.base.as_deref(), Some("s1"));
    assert!(!p.resume());
    assert_eq!(p.mode(), "incremental since s1");
}

#[test]
fn an_unfinished_apply_that_cannot_be_continued_is_refused() {
    let refused = |state: pb::ApplyState, a: &ReplicateArgs| {
        plan(wanted("s3", 3, Some("s2")), &state, a).unwrap_err()
    };
    let no_resume = ReplicateArgs {
        no_resume: true,
        ..args()
    };
    for (state, a) in [
        (unfinished("s4", 4, "s2", true), args()), // another snapshot
        (unfinished("s3", 9, "s2", true), args()), // same name, another source snapshot
        (unfinished("other", 3, "s2", true), args()), // same source snapshot, another name
        (unfinished("s3", 3, "s2", false), args()), // not resumable
        (unfinished("s3", 3, "s2", true), no_resume), // --no-resume
    ] {
        let name = state.snapshot_name.clone();
        assert_eq!(
            refused(state, &a),
            PlanError::UnfinishedApply {
                to_volume: "vol".into(),
                snapshot: name,
                receiver: args().to,
            }
        );
    }
}

#[test]
fn the_refusal_names_the_receiver_volume_and_how_to_drop_the_apply() {
    let a = ReplicateArgs {
        to_volume: Some("replica".into()),
        to: endpoint::Target::Unix("/run/b/grpc.sock".into()),
        ..args()
    };
    let err = plan(wanted("s3", 3, None), &unfinished("s4", 4, "", true), &a).unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume replica on the receiver has an unfinished apply of \"s4\"; run \
         `multisnap --endpoint unix:/run/b/grpc.sock delta abort replica` to drop it"
    );
}

// --- the receiver's volume -----------------------------------------------------------------

#[test]
fn the_receiver_volume_must_have_the_source_geometry() {
    let volume = |size_bytes, chunk_size_bytes| pb::Volume {
        size_bytes,
        chunk_size_bytes,
        ..Default::default()
    };
    assert_eq!(
        check_geometry(&volume(1 << 30, 65536), &volume(1 << 30, 65536), "r"),
        Ok(())
    );
    let err = check_geometry(&volume(1 << 30, 65536), &volume(1 << 20, 65536), "r").unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume r on the receiver is 1048576 bytes in chunks of 65536, \
         the source 1073741824 in chunks of 65536"
    );
    let err = check_geometry(&volume(1 << 30, 65536), &volume(1 << 30, 4096), "r").unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume r on the receiver is 1073741824 bytes in chunks of 4096, \
         the source 1073741824 in chunks of 65536"
    );
}

#[test]
fn refusals_exit_with_the_generic_error_code() {
    let err = anyhow::Error::from(PlanError::NoSnapshots {
        volume: "vol".into(),
    });
    assert_eq!(
        crate::exit::code_for(&err),
        ExitCode::from(crate::exit::OTHER)
    );
}
