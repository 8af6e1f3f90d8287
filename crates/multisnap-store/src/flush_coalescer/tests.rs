use super::FlushCoalescer;
use std::cell::Cell;

#[test]
fn coalescer_flushes_only_when_a_write_returned_since_the_last_flush_started() {
    let gate = FlushCoalescer::default();
    let flushes = Cell::new(0);
    let flush = || -> Result<(), ()> {
        flushes.set(flushes.get() + 1);
        Ok(())
    };
    gate.flush(flush).unwrap();
    assert_eq!(flushes.get(), 0, "nothing written yet");
    gate.wrote();
    gate.flush(flush).unwrap();
    gate.flush(flush).unwrap();
    assert_eq!(flushes.get(), 1, "the second flush is covered by the first");
    gate.wrote();
    gate.flush(flush).unwrap();
    assert_eq!(flushes.get(), 2);
}

#[test]
fn coalescer_retries_after_a_failed_flush() {
    let gate = FlushCoalescer::default();
    gate.wrote();
    assert_eq!(gate.flush(|| Err("EIO")), Err("EIO"));
    let flushed = Cell::new(false);
    gate.flush(|| -> Result<(), ()> {
        flushed.set(true);
        Ok(())
    })
    .unwrap();
    assert!(flushed.get(), "a failed flush covers nothing");
}

#[test]
fn coalescer_does_not_count_a_write_that_returned_during_the_flush() {
    let gate = FlushCoalescer::default();
    gate.wrote();
    // A write returns while the flush runs: the flush may or may not have caught it, so
    // the next flush must not be skipped.
    gate.flush(|| -> Result<(), ()> {
        gate.wrote();
        Ok(())
    })
    .unwrap();
    let flushed = Cell::new(false);
    gate.flush(|| -> Result<(), ()> {
        flushed.set(true);
        Ok(())
    })
    .unwrap();
    assert!(flushed.get());
}

#[test]
fn a_write_is_counted_when_its_guard_drops() {
    let gate = FlushCoalescer::default();
    let flushes = Cell::new(0);
    let flush = || -> Result<(), ()> {
        flushes.set(flushes.get() + 1);
        Ok(())
    };
    {
        let _write = gate.count_write();
        gate.flush(flush).unwrap();
        assert_eq!(flushes.get(), 0, "a write still running is not counted yet");
    }
    gate.flush(flush).unwrap();
    assert_eq!(flushes.get(), 1, "the write counted once it returned");
}

/// Threads writing and flushing at once, as NBD workers do: every flush returns only after
/// a flush that started once its caller's write had returned (the "disk" records, at the
/// start of each flush, how many writes had returned by then).
#[test]
fn coalescer_covers_each_callers_writes_under_contention() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let gate = FlushCoalescer::default();
    let returned = AtomicU64::new(0);
    let durable = AtomicU64::new(0);
    let flushes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..500 {
                    let mine = returned.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.wrote();
                    gate.flush(|| -> Result<(), ()> {
                        let covered = returned.load(Ordering::SeqCst);
                        flushes.fetch_add(1, Ordering::SeqCst);
                        std::thread::yield_now();
                        durable.fetch_max(covered, Ordering::SeqCst);
                        Ok(())
                    })
                    .unwrap();
                    assert!(
                        durable.load(Ordering::SeqCst) >= mine,
                        "a flush returned before write {mine} was durable"
                    );
                }
            });
        }
    });
    assert!(flushes.load(Ordering::SeqCst) >= 1);
}
