use super::*;
use crate::blockdev::MemDev;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

#[test]
fn delayed_reads_and_flushes_take_their_time_and_pass_data_through() {
    let dev = Delayed::new(MemDev::new(8192))
        .reads(Duration::from_millis(20))
        .flushes(Duration::from_millis(30));
    dev.write_at(&[7; 512], 512).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 512];
    dev.read_at(&mut buf, 512).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert_eq!(buf, [7; 512]);
    let t = Instant::now();
    dev.flush().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(dev.size().unwrap(), 8192);
}

#[test]
fn a_closed_gate_holds_flushes_until_it_opens() {
    let gate = Arc::new(FlushGate::new(MemDev::new(4096)));
    // Open: flushes pass.
    gate.flush().unwrap();
    assert!(!gate.wait_for_waiting_flush(Duration::from_millis(10)));

    gate.close();
    let (done_tx, done) = mpsc::channel();
    let g = gate.clone();
    let flusher = std::thread::spawn(move || {
        let r = g.flush();
        let _ = done_tx.send(());
        r
    });
    assert!(gate.wait_for_waiting_flush(Duration::from_secs(10)));
    assert!(
        done.recv_timeout(Duration::from_millis(50)).is_err(),
        "a flush passed the closed gate"
    );
    // Reads and writes are not gated.
    gate.write_at(&[1; 16], 0).unwrap();
    gate.open();
    done.recv_timeout(Duration::from_secs(10))
        .expect("the flush still waits after open");
    flusher.join().unwrap().unwrap();
    assert!(!gate.wait_for_waiting_flush(Duration::from_millis(10)));
}
