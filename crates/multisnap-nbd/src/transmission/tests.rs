use super::*;
use crate::error::Errno;
use crate::export::{Extent, Fua, ZeroMode};

fn limits() -> Limits {
    Limits {
        size: 1 << 20,
        read_only: false,
        structured: true,
        has_contexts: true,
        max_payload: 64 * 1024,
    }
}

fn hdr(cmd: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
    RequestHeader {
        flags,
        command: cmd,
        handle: Handle(1),
        offset,
        length,
    }
}

fn errno_of(r: Result<Op, NbdError>) -> Errno {
    match r {
        Ok(op) => panic!("expected an error, got {op:?}"),
        Err(e) => e.errno(),
    }
}

#[test]
fn read_in_range_is_accepted() {
    let op = validate(&hdr(proto::CMD_READ, 0, 4096, 4096), None, &limits()).unwrap();
    assert!(matches!(
        op,
        Op::Read {
            offset: 4096,
            len: 4096,
            df: false
        }
    ));
}

#[test]
fn read_past_end_or_overflowing_is_einval() {
    let l = limits();
    assert_eq!(
        errno_of(validate(&hdr(proto::CMD_READ, 0, l.size, 1), None, &l)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(validate(&hdr(proto::CMD_READ, 0, u64::MAX, 10), None, &l)),
        Errno::EINVAL
    );
}

#[test]
fn read_over_max_payload_is_einval() {
    let l = limits();
    assert_eq!(
        errno_of(validate(
            &hdr(proto::CMD_READ, 0, 0, l.max_payload + 1),
            None,
            &l
        )),
        Errno::EINVAL
    );
}

#[test]
fn write_past_end_is_enospc() {
    let l = limits();
    let r = validate(
        &hdr(proto::CMD_WRITE, 0, l.size - 1, 2),
        Some(Buffer::from(vec![0; 2])),
        &l,
    );
    assert_eq!(errno_of(r), Errno::ENOSPC);
    let r = validate(
        &hdr(proto::CMD_WRITE, 0, u64::MAX - 1, 2),
        Some(Buffer::from(vec![0; 2])),
        &l,
    );
    assert_eq!(errno_of(r), Errno::ENOSPC);
}

#[test]
fn writes_on_read_only_export_are_eperm() {
    let l = Limits {
        read_only: true,
        ..limits()
    };
    for cmd in [proto::CMD_WRITE, proto::CMD_TRIM, proto::CMD_WRITE_ZEROES] {
        let r = validate(&hdr(cmd, 0, 0, 4), Some(Buffer::from(vec![0; 4])), &l);
        assert_eq!(errno_of(r), Errno::EPERM, "command {cmd}");
    }
    // Reads and flushes still work.
    assert!(validate(&hdr(proto::CMD_READ, 0, 0, 4), None, &l).is_ok());
    assert!(validate(&hdr(proto::CMD_FLUSH, 0, 0, 0), None, &l).is_ok());
}

#[test]
fn unknown_command_and_flags_are_einval() {
    let l = limits();
    assert_eq!(
        errno_of(validate(&hdr(99, 0, 0, 0), None, &l)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(validate(&hdr(5, 0, 0, 0), None, &l)),
        Errno::EINVAL
    ); // CACHE
    assert_eq!(
        errno_of(validate(&hdr(proto::CMD_READ, 0x8000, 0, 1), None, &l)),
        Errno::EINVAL
    );
    // NO_HOLE is only valid on WRITE_ZEROES.
    assert_eq!(
        errno_of(validate(
            &hdr(proto::CMD_TRIM, proto::CMD_FLAG_NO_HOLE, 0, 1),
            None,
            &l
        )),
        Errno::EINVAL
    );
    // DF needs structured replies.
    let simple = Limits {
        structured: false,
        ..l
    };
    assert_eq!(
        errno_of(validate(
            &hdr(proto::CMD_READ, proto::CMD_FLAG_DF, 0, 1),
            None,
            &simple
        )),
        Errno::EINVAL
    );
}

#[test]
fn fua_and_no_hole_are_passed_through() {
    let l = limits();
    let op = validate(
        &hdr(
            proto::CMD_WRITE_ZEROES,
            proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE,
            0,
            8192,
        ),
        None,
        &l,
    )
    .unwrap();
    assert!(matches!(
        op,
        Op::WriteZeroes {
            mode: ZeroMode::NoHole,
            fua: Fua(true),
            ..
        }
    ));
}

#[test]
fn block_status_needs_contexts_and_range() {
    let l = limits();
    assert!(validate(
        &hdr(proto::CMD_BLOCK_STATUS, proto::CMD_FLAG_REQ_ONE, 0, 100),
        None,
        &l
    )
    .is_ok());
    let none = Limits {
        has_contexts: false,
        ..l
    };
    assert_eq!(
        errno_of(validate(
            &hdr(proto::CMD_BLOCK_STATUS, 0, 0, 100),
            None,
            &none
        )),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(validate(
            &hdr(proto::CMD_BLOCK_STATUS, 0, l.size, 1),
            None,
            &l
        )),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(validate(&hdr(proto::CMD_BLOCK_STATUS, 0, 0, 0), None, &l)),
        Errno::EINVAL
    );
}

#[test]
fn descriptors_clip_merge_and_never_empty() {
    assert_eq!(descriptors(100, [(60, 3), (60, 3)], false), vec![(100, 3)]);
    assert_eq!(
        descriptors(100, [(10, 0), (0, 1), (20, 3)], false),
        vec![(10, 0), (20, 3)]
    );
    assert_eq!(descriptors(100, [], false), vec![(100, 0)]);
    assert_eq!(descriptors(100, [(10, 0), (90, 3)], true), vec![(10, 0)]);
    assert_eq!(
        descriptors(u32::MAX, [(u64::MAX, 1)], false),
        vec![(u32::MAX, 1)]
    );
}

#[test]
fn read_plan_turns_only_zero_extents_into_holes() {
    let e = |len, hole, zero| Extent { len, hole, zero };
    let plan = plan_read(
        100,
        &[
            e(10, false, false),
            e(20, true, true),
            e(30, true, false),
            e(100, true, true),
        ],
    );
    assert_eq!(
        plan,
        vec![
            ReadPiece::Data(0..10),
            ReadPiece::Hole(10..30),
            ReadPiece::Data(30..60),
            ReadPiece::Hole(60..100)
        ]
    );
    // Uncovered tail is data.
    assert_eq!(
        plan_read(50, &[e(20, true, true)]),
        vec![ReadPiece::Hole(0..20), ReadPiece::Data(20..50)]
    );
    assert_eq!(plan_read(50, &[]), vec![ReadPiece::Data(0..50)]);
}

#[test]
fn meta_context_queries() {
    use crate::handshake::query_matches;
    assert!(query_matches("base:allocation", "base:allocation"));
    assert!(query_matches("base:", "base:allocation"));
    assert!(!query_matches("base:alloc", "base:allocation"));
    assert!(!query_matches("multisnap:", "base:allocation"));
    assert!(query_matches("multisnap:", "multisnap:changed:3"));
    assert!(!query_matches("", "base:allocation"));
}

#[test]
fn pool_starts_workers_on_demand_up_to_its_cap_and_drains_on_close() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Barrier, Mutex};

    let done = Arc::new(AtomicUsize::new(0));
    // The first three jobs wait for each other: they can only finish if the
    // pool started three workers for them.
    let barrier = Arc::new(Barrier::new(3));
    let order = Arc::new(Mutex::new(Vec::new()));
    let (d, b, o) = (done.clone(), barrier.clone(), order.clone());
    let mut pool = workers::Pool::new(
        3,
        Arc::new(move |job: usize| {
            if job < 3 {
                b.wait();
            }
            o.lock().unwrap().push(job);
            d.fetch_add(1, Ordering::SeqCst);
        }),
    );
    for job in 0..20 {
        pool.submit(job).unwrap();
    }
    assert!(pool.threads() <= 3);
    // Every job queued before close runs; the threads then exit.
    for t in pool.close() {
        t.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 20);
    let mut seen = order.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
}

#[test]
fn dropping_the_pool_lets_its_idle_workers_exit() {
    let mut pool = workers::Pool::new(2, Arc::new(|_: u8| {}));
    pool.submit(1).unwrap();
    let queue_alive = Arc::downgrade(&pool.queue_for_test());
    drop(pool);
    // Each worker holds the queue until it exits.
    for _ in 0..500 {
        if queue_alive.upgrade().is_none() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("a worker is still waiting on a dropped pool's queue");
}

/// The bytes a reply puts on the wire after its headers: its data.
fn data_bytes(parts: &[reply::Part]) -> Vec<u8> {
    parts
        .iter()
        .filter(|p| matches!(p, reply::Part::Data(_) | reply::Part::Slice(..)))
        .flat_map(|p| p.as_slice().to_vec())
        .collect()
}

#[test]
fn a_simple_read_reply_zeroes_holes_of_a_reused_buffer() {
    // The buffer still holds an earlier request's bytes where the plan has
    // a hole; a simple reply sends every byte, so the hole must be zeroed.
    let mut buf = Buffer::from(vec![0xAB; 12]);
    buf[..4].fill(0x11);
    let plan = [ReadPiece::Data(0..4), ReadPiece::Hole(4..12)];
    let parts = reply::read_reply(false, Handle(1), 0, &plan, buf);
    assert_eq!(data_bytes(&parts), [[0x11; 4].as_slice(), &[0; 8]].concat());
}

#[test]
fn a_structured_read_reply_sends_no_byte_of_a_hole() {
    let mut buf = Buffer::from(vec![0xAB; 12]);
    buf[..4].fill(0x11);
    buf[8..].fill(0x22);
    let plan = [
        ReadPiece::Data(0..4),
        ReadPiece::Hole(4..8),
        ReadPiece::Data(8..12),
    ];
    let parts = reply::read_reply(true, Handle(1), 0, &plan, buf);
    assert_eq!(data_bytes(&parts), [[0x11; 4], [0x22; 4]].concat());
}

fn pool_with_one_idle_buffer() -> Arc<BufferPool> {
    let pool = BufferPool::new(PoolLimits {
        max_idle_buffers: 4,
        max_idle_bytes: 1 << 20,
        max_buffer: 256 * 1024,
        budget: 2 << 20,
    });
    drop(pool.take(64 * 1024));
    assert_eq!(pool.usage().0, 1, "the returned buffer is kept idle");
    pool
}

#[tokio::test]
async fn an_idle_connection_frees_its_idle_buffers_and_still_takes_the_next_request() {
    let pool = pool_with_one_idle_buffer();
    let (mut client, mut server) = tokio::io::duplex(64);
    let waiting = pool.clone();
    let waiter = tokio::spawn(async move {
        let mut first = [0u8; 1];
        let got = first_byte(&mut server, &mut first, &waiting, Duration::from_millis(20)).await;
        (got.unwrap(), first[0])
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.usage() != (0, 0, 0) {
        assert!(
            Instant::now() < deadline,
            "idle buffers kept: {:?}",
            pool.usage()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.write_all(&[0x25]).await.unwrap();
    assert_eq!(waiter.await.unwrap(), (Some(()), 0x25));
}

#[tokio::test]
async fn a_request_arriving_in_time_keeps_the_idle_buffers() {
    let pool = pool_with_one_idle_buffer();
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(&[0x25]).await.unwrap();
    let mut first = [0u8; 1];
    let got = first_byte(&mut server, &mut first, &pool, Duration::from_secs(60)).await;
    assert_eq!((got.unwrap(), first[0]), (Some(()), 0x25));
    assert_eq!(pool.usage().0, 1);
    drop(client);
    assert_eq!(
        first_byte(&mut server, &mut first, &pool, Duration::from_secs(60))
            .await
            .unwrap(),
        None,
        "the client's end is the end of the wait"
    );
}
