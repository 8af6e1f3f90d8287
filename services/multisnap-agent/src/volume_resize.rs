//! Growing a volume (`ResizeVolume`): the origin grows to the size asked for, the store file
//! in proportion, within what the store's bitmap can describe (see `Store::resize`).

use crate::volumes::{check_size, Volume, VolumeError, Volumes, MAX_VOLUME_BYTES};
use std::sync::Arc;

/// The store size that keeps a volume's store in the proportion it was made with: a store
/// made at the agent's default (the origin plus 1/8 plus 16 MiB and the journal) or at a size
/// given at creation grows by the same factor as the origin. Rounded up to whole 4 KiB blocks.
pub fn proportional_store_bytes(store_bytes: u64, origin_size: u64, new_size: u64) -> u64 {
    if origin_size == 0 || new_size <= origin_size {
        return store_bytes;
    }
    let scaled = (u128::from(store_bytes) * u128::from(new_size)).div_ceil(u128::from(origin_size));
    u64::try_from(scaled.next_multiple_of(4096)).unwrap_or(u64::MAX)
}

/// Grows volume `name` to `size_bytes`. Refused while `attached` names a ublk device serving
/// its origin: the kernel fixes a ublk device's size when it is added, and changing it needs
/// `UBLK_U_CMD_UPDATE_SIZE` (Linux 6.16 and later, on a device made with
/// `UBLK_F_UPDATE_SIZE`), which the kernels this agent supports (6.0 on) mostly lack. Detach,
/// resize, attach again. Snapshots' devices keep their size and need nothing.
pub fn resize_volume(
    volumes: &Volumes,
    name: &str,
    size_bytes: u64,
    attached: Option<String>,
) -> Result<Arc<Volume>, VolumeError> {
    let v = volumes
        .get(name)
        .ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
    if let Some(dev) = attached {
        return Err(VolumeError::FailedPrecondition(format!(
            "volume {name} is served as ublk device {dev}, whose size the kernel keeps; detach it first (multisnap ublk detach {dev}), resize, and attach again"
        )));
    }
    // The limit CreateVolume sets, for the same reason.
    check_size("size_bytes", size_bytes, MAX_VOLUME_BYTES)?;
    let store = &v.store;
    let store_bytes =
        proportional_store_bytes(store.store_bytes(), store.origin_size(), size_bytes);
    store.resize(size_bytes, store_bytes)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_grows_in_the_proportion_it_was_made_with() {
        let gib = 1u64 << 30;
        // The agent's default for 1 GiB: 1 GiB + 128 MiB + 16 MiB + a 256 MiB journal.
        let made = gib + gib / 8 + (16 << 20) + (256 << 20);
        assert_eq!(proportional_store_bytes(made, gib, 2 * gib), 2 * made);
        assert_eq!(proportional_store_bytes(made, gib, gib), made, "same size");
        assert_eq!(
            proportional_store_bytes(made, gib, gib / 2),
            made,
            "never shrinks"
        );
        let odd = proportional_store_bytes(5 << 20, 3 << 20, (3 << 20) + 1);
        assert_eq!(odd % 4096, 0);
        assert!(odd > 5 << 20);
    }

    #[test]
    fn a_volume_grows_with_its_files_and_an_attached_origin_is_refused() {
        use crate::volumes::NewVolume;
        use multisnap_store::FullPolicy;
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::datadir::DataDir::open_locked(tmp.path()).unwrap();
        let policy = crate::origin_policy::OriginPolicy::new(tmp.path(), &[]).unwrap();
        let volumes = Volumes::load(dir, policy, 1 << 20, 0).unwrap();
        let v = volumes
            .create(&NewVolume {
                name: "v".into(),
                size_bytes: 4 << 20,
                chunk_size: 4096,
                store_size_bytes: None,
                origin_path: None,
                full_policy: FullPolicy::Error,
                origin_cache: multisnap_store::OriginCache::Buffered,
                labels: Default::default(),
            })
            .unwrap();
        let store_before = v.store.store_bytes();
        let e = resize_volume(&volumes, "v", 8 << 20, Some("/dev/ublkb3".into()))
            .err()
            .expect("refused");
        assert!(
            matches!(&e, VolumeError::FailedPrecondition(m) if m.contains("/dev/ublkb3")),
            "{e}"
        );
        assert!(matches!(
            resize_volume(&volumes, "nope", 8 << 20, None),
            Err(VolumeError::NotFound(_))
        ));

        let v = resize_volume(&volumes, "v", 8 << 20, None).unwrap();
        assert_eq!(v.store.origin_size(), 8 << 20);
        assert_eq!(std::fs::metadata(&v.origin_path).unwrap().len(), 8 << 20);
        assert_eq!(v.store.store_bytes(), 2 * store_before);
        assert_eq!(
            std::fs::metadata(&v.store_path).unwrap().len(),
            2 * store_before
        );
        let shrink = resize_volume(&volumes, "v", 4 << 20, None)
            .err()
            .expect("refused");
        assert!(
            shrink.to_string().contains(&(8u64 << 20).to_string()),
            "{shrink}"
        );
        // Eight times the store it was made with is as far as its bitmap reaches.
        let e = resize_volume(&volumes, "v", 64 << 20, None)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("grow in place only"), "{e}");
    }
}
