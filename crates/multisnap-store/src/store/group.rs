//! Snapshots of several volumes cut at one instant (a database and its log on two volumes):
//! every write acknowledged before the cut is in every member, none that starts after it is in
//! any.
//!
//! A single snapshot holds its volume's write barrier exclusively while it is cut. A group
//! holds every member's barrier at once, taken in volume-uuid order so that two groups over
//! overlapping volumes cannot each hold one barrier while waiting for the other's. Writes to
//! any member wait until every member is cut, so a writer that saw its write to one volume
//! acknowledged before writing to another can never find the second write in a member while
//! the first is missing from its.
//!
//! Each member is an ordinary snapshot committed in its own store; what makes them a group is
//! the caller's record (the agent's group records), which it writes once they all exist.

use super::*;
use crate::store::snapshots::validate_snapshot_name;

/// Cuts snapshot `name` of every store in `stores` at one instant and returns the members in
/// the order of `stores`. Refused before any member is made if a store appears twice, or one
/// already has a snapshot of that name. If a later member fails (a full store, an I/O error),
/// the members made before it remain and the error is returned: the caller deletes them.
pub fn create_snapshot_group(stores: &[&Store], name: &str) -> Result<Vec<SnapshotInfo>> {
    validate_snapshot_name(name)?;
    let mut order: Vec<usize> = (0..stores.len()).collect();
    order.sort_by_key(|&i| stores[i].volume_uuid());
    if let Some(pair) = order
        .windows(2)
        .find(|w| stores[w[0]].volume_uuid() == stores[w[1]].volume_uuid())
    {
        return Err(StoreError::GroupMemberTwice(stores[pair[0]].volume_uuid()));
    }
    let _barriers: Vec<_> = order
        .iter()
        .map(|&i| stores[i].exclusive_barrier())
        .collect();
    for &i in &order {
        let m = stores[i].meta.read();
        m.check_usable()?;
        if m.by_name.contains_key(name) {
            return Err(StoreError::SnapshotExists(name.to_string()));
        }
    }
    let mut members: Vec<Option<SnapshotInfo>> = vec![None; stores.len()];
    for &i in &order {
        members[i] = Some(stores[i].cut_snapshot(name, false)?);
    }
    tracing::info!(snapshot = %name, members = stores.len(), "group snapshot cut");
    Ok(members.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDev;

    const MIB: usize = 1 << 20;

    fn store() -> Store {
        let origin = Arc::new(MemDev::new(MIB as u64));
        let dev = Arc::new(MemDev::new(4 * MIB as u64));
        let opts = CreateOptions {
            chunk_size: 4096,
            ..Default::default()
        };
        Store::create(origin, dev, &opts).expect("create")
    }

    #[test]
    fn members_hold_what_was_written_before_the_cut_and_nothing_after() {
        let (a, b) = (store(), store());
        a.write_origin(0, &[1; 4096]).unwrap();
        b.write_origin(0, &[2; 4096]).unwrap();
        let members = create_snapshot_group(&[&a, &b], "g").unwrap();
        assert_eq!(members.len(), 2);
        a.write_origin(0, &[3; 4096]).unwrap();
        b.write_origin(0, &[4; 4096]).unwrap();
        let mut buf = [0u8; 4096];
        a.read(View::Snapshot(members[0].id), 0, &mut buf).unwrap();
        assert_eq!(buf, [1; 4096]);
        b.read(View::Snapshot(members[1].id), 0, &mut buf).unwrap();
        assert_eq!(buf, [2; 4096]);
    }

    #[test]
    fn a_name_taken_on_one_member_makes_no_member() {
        let (a, b) = (store(), store());
        b.create_snapshot("g").unwrap();
        let err = create_snapshot_group(&[&a, &b], "g").unwrap_err();
        assert!(matches!(err, StoreError::SnapshotExists(_)), "{err}");
        assert!(a.list_snapshots().is_empty());
    }

    #[test]
    fn a_store_named_twice_is_refused() {
        let a = store();
        let err = create_snapshot_group(&[&a, &a], "g").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(a.list_snapshots().is_empty());
    }

    #[test]
    fn writers_racing_two_cuts_in_opposite_orders_do_not_deadlock() {
        let (a, b) = (Arc::new(store()), Arc::new(store()));
        let writer = {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    a.write_origin((i % 16) * 4096, &[i as u8; 4096]).unwrap();
                    b.write_origin((i % 16) * 4096, &[i as u8; 4096]).unwrap();
                }
            })
        };
        let other = {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                for i in 0..20 {
                    create_snapshot_group(&[&b, &a], &format!("ba{i}")).unwrap();
                }
            })
        };
        for i in 0..20 {
            create_snapshot_group(&[&a, &b], &format!("ab{i}")).unwrap();
        }
        other.join().unwrap();
        writer.join().unwrap();
        assert_eq!(a.list_snapshots().len(), 40);
    }
}
