//! Groups over real volumes in a temporary data directory: idempotency, refusals, restarts,
//! a crash at every step of creation and deletion, and a model-based sequence test.

use super::*;
use crate::volumes::{NewVolume, Volumes};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;

fn load(root: &Path) -> Volumes {
    let dir = crate::datadir::DataDir::open_locked(root).unwrap();
    let policy = crate::origin_policy::OriginPolicy::new(root, &[]).unwrap();
    Volumes::load(dir, policy, 1 << 20, 0).unwrap()
}

fn with_volumes(root: &Path, names: &[&str]) -> Volumes {
    let volumes = load(root);
    for name in names {
        volumes
            .create(&NewVolume::for_tests(name, 1 << 20))
            .unwrap();
    }
    volumes
}

fn name(s: &str) -> GroupName {
    GroupName::parse(s).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn create(volumes: &Volumes, group: &str, members: &[&str]) -> Result<GroupRecord, VolumeError> {
    volumes
        .groups
        .create(&volumes.current(), &name(group), &strings(members))
}

/// The volumes holding a snapshot named `snapshot`.
fn holders(volumes: &Volumes, snapshot: &str) -> Vec<String> {
    volumes
        .list()
        .iter()
        .filter(|v| v.store.snapshot_by_name(snapshot).is_ok())
        .map(|v| v.name.clone())
        .collect()
}

#[test]
fn the_same_name_and_volumes_are_the_same_group_and_other_volumes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let volumes = with_volumes(tmp.path(), &["a", "b", "c"]);
    let first = create(&volumes, "g", &["b", "a"]).unwrap();
    assert_eq!(first.volumes(), ["a", "b"]);
    assert_eq!(create(&volumes, "g", &["a", "b"]).unwrap(), first);
    let err = create(&volumes, "g", &["a", "c"]).unwrap_err();
    assert!(matches!(err, VolumeError::GroupExists(_)), "{err}");
    assert!(matches!(
        create(&volumes, "h", &["a", "nope"]).unwrap_err(),
        VolumeError::NotFound(_)
    ));
    assert!(matches!(
        create(&volumes, "h", &["a", "a"]).unwrap_err(),
        VolumeError::InvalidArgument(_)
    ));
    assert!(matches!(
        create(&volumes, "h", &[]).unwrap_err(),
        VolumeError::InvalidArgument(_)
    ));
    assert_eq!(holders(&volumes, "h"), Vec::<String>::new());
    // A volume whose snapshot already has the name cannot join under it.
    volumes
        .get("c")
        .unwrap()
        .store
        .create_snapshot("k")
        .unwrap();
    assert!(matches!(
        create(&volumes, "k", &["a", "c"]).unwrap_err(),
        VolumeError::GroupExists(_)
    ));
    assert_eq!(holders(&volumes, "k"), ["c"]);
}

#[test]
fn members_are_tied_to_their_group_until_it_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let volumes = with_volumes(tmp.path(), &["a", "b"]);
    create(&volumes, "g", &["a", "b"]).unwrap();
    assert_eq!(volumes.groups.member_of("a", "g"), Some(name("g")));
    assert_eq!(volumes.groups.member_of("a", "other"), None);
    let err = volumes.delete("a", true).unwrap_err();
    assert!(matches!(err, VolumeError::FailedPrecondition(_)), "{err}");
    volumes
        .groups
        .delete(&volumes.current(), &name("g"))
        .unwrap();
    assert_eq!(holders(&volumes, "g"), Vec::<String>::new());
    assert!(matches!(
        volumes
            .groups
            .delete(&volumes.current(), &name("g"))
            .unwrap_err(),
        VolumeError::GroupNotFound(_)
    ));
    volumes.delete("a", true).unwrap();
}

#[test]
fn groups_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let volumes = with_volumes(tmp.path(), &["a", "b"]);
    let made = create(&volumes, "g", &["a", "b"]).unwrap();
    drop(volumes);
    let volumes = load(tmp.path());
    assert_eq!(volumes.groups.list(), [made]);
    assert_eq!(holders(&volumes, "g"), ["a", "b"]);
}

#[test]
fn a_damaged_record_stops_the_start_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let volumes = with_volumes(tmp.path(), &["a"]);
    create(&volumes, "g", &["a"]).unwrap();
    drop(volumes);
    let path = tmp.path().join("groups/g.group");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("member a", "member b")).unwrap();
    let dir = crate::datadir::DataDir::open_locked(tmp.path()).unwrap();
    let policy = crate::origin_policy::OriginPolicy::new(tmp.path(), &[]).unwrap();
    let err = Volumes::load(dir, policy, 1 << 20, 0).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("g.group") && msg.contains("checksum"), "{msg}");
}

/// A crash at each step of a creation and of a deletion, then a start: the group is either
/// whole (every member there, shown) or gone (no member left, not shown), never in between.
#[test]
fn a_crash_at_any_step_leaves_a_whole_group_or_none() {
    let creation = [
        Step::CreatingRecorded,
        Step::MembersCut,
        Step::ReadyRecorded,
    ];
    for step in creation {
        let tmp = tempfile::tempdir().unwrap();
        let volumes = with_volumes(tmp.path(), &["a", "b", "c"]);
        *volumes.groups.crash_at.lock() = Some(step);
        assert!(create(&volumes, "g", &["a", "b", "c"]).is_err());
        drop(volumes);
        // A record never renamed into place is removed too.
        std::fs::write(tmp.path().join("groups/h.group.tmp"), "multisnap-gr").unwrap();
        let volumes = load(tmp.path());
        let shown = volumes.groups.get(&name("g"));
        let members = holders(&volumes, "g");
        if step == Step::ReadyRecorded {
            assert!(shown.is_some(), "{step:?}: a durable group was lost");
            assert_eq!(members, ["a", "b", "c"], "{step:?}");
        } else {
            assert!(shown.is_none(), "{step:?}: an unfinished group is shown");
            assert!(members.is_empty(), "{step:?}: members left: {members:?}");
        }
        assert!(!tmp.path().join("groups/h.group.tmp").exists());
        // The name is usable again (or the same group is returned).
        create(&volumes, "g", &["a", "b", "c"]).unwrap();
        assert_eq!(holders(&volumes, "g"), ["a", "b", "c"]);
    }
    for step in [Step::DeletingRecorded, Step::FirstMemberDeleted] {
        let tmp = tempfile::tempdir().unwrap();
        let volumes = with_volumes(tmp.path(), &["a", "b", "c"]);
        create(&volumes, "g", &["a", "b", "c"]).unwrap();
        *volumes.groups.crash_at.lock() = Some(step);
        assert!(volumes
            .groups
            .delete(&volumes.current(), &name("g"))
            .is_err());
        drop(volumes);
        let volumes = load(tmp.path());
        assert!(volumes.groups.get(&name("g")).is_none(), "{step:?}");
        assert!(holders(&volumes, "g").is_empty(), "{step:?}");
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create(usize, BTreeSet<usize>),
    Delete(usize),
    Restart,
}

const VOLS: [&str; 3] = ["v0", "v1", "v2"];
const NAMES: [&str; 3] = ["g0", "g1", "g2"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NAMES.len(), proptest::collection::btree_set(0..VOLS.len(), 0..=VOLS.len()))
            .prop_map(|(n, v)| Op::Create(n, v)),
        2 => (0..NAMES.len()).prop_map(Op::Delete),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Any sequence of creations, deletions and restarts agrees with a map of name to
    /// member volumes, and every volume holds a snapshot of a group's name exactly when it is
    /// a member.
    #[test]
    fn groups_follow_a_model(ops in proptest::collection::vec(op(), 1..10)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut volumes = with_volumes(tmp.path(), &VOLS);
        let mut model: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Create(n, vols) => {
                    let members: Vec<&str> = vols.iter().map(|&v| VOLS[v]).collect();
                    let got = create(&volumes, NAMES[n], &members);
                    let want: Vec<String> = strings(&members);
                    match model.get(NAMES[n]) {
                        _ if members.is_empty() => prop_assert!(got.is_err()),
                        Some(existing) if *existing == want => prop_assert!(got.is_ok()),
                        Some(_) => prop_assert!(matches!(got, Err(VolumeError::GroupExists(_)))),
                        None => {
                            prop_assert!(got.is_ok(), "{:?}", got.err());
                            model.insert(NAMES[n], want);
                        }
                    }
                }
                Op::Delete(n) => {
                    let got = volumes.groups.delete(&volumes.current(), &name(NAMES[n]));
                    prop_assert_eq!(got.is_ok(), model.remove(NAMES[n]).is_some());
                }
                Op::Restart => {
                    drop(volumes);
                    volumes = load(tmp.path());
                }
            }
            let shown: BTreeMap<String, Vec<String>> = volumes
                .groups
                .list()
                .into_iter()
                .map(|r| (r.name.to_string(), strings(&r.volumes())))
                .collect();
            let want: BTreeMap<String, Vec<String>> =
                model.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            prop_assert_eq!(&shown, &want);
            for g in NAMES {
                let want = model.get(g).cloned().unwrap_or_default();
                prop_assert_eq!(holders(&volumes, g), want);
            }
        }
    }
}
