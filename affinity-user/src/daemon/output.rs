//! Report lines leave the event loop through a bounded queue to a writer
//! thread: a stalled stdout reader (a paused pager, a full pipe) must never
//! stop enforcement. When the queue is full, lines are dropped and counted.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::Duration,
};

/// Lines the queue holds before it drops new ones.
pub const QUEUE_LINES: usize = 4096;

/// A `Write` that hands each flushed chunk (a report line) to the writer.
pub struct LineQueue {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    /// The writer's end, on the handle that spawned it (not on shares).
    done: Option<Receiver<()>>,
}

impl LineQueue {
    /// Starts the writer thread on `out`.
    pub fn spawn(mut out: impl Write + Send + 'static, capacity: usize) -> io::Result<LineQueue> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(capacity);
        let (done_tx, done) = mpsc::channel();
        thread::Builder::new()
            .name("affinity-output".into())
            .spawn(move || {
                for chunk in rx {
                    // A closed stdout must not stop the daemon: drop output.
                    let _ = out.write_all(&chunk).and_then(|()| out.flush());
                }
                let _ = done_tx.send(());
            })?;
        Ok(LineQueue {
            buf: Vec::new(),
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            done: Some(done),
        })
    }

    /// Another handle on the same writer and drop count, for another thread
    /// (the IRQ steering worker). The writer ends once every handle is
    /// finished or dropped.
    pub fn share(&self) -> LineQueue {
        LineQueue {
            buf: Vec::new(),
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
            done: None,
        }
    }

    /// Lines dropped so far because the writer was not keeping up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Closes the queue and, on the handle that spawned the writer, waits
    /// up to `timeout` for it to finish the lines already queued (a stalled
    /// reader cannot hold the exit).
    pub fn finish(&mut self, timeout: Duration) {
        let _ = self.flush();
        self.tx = None;
        if let Some(done) = &self.done {
            let _ = done.recv_timeout(timeout);
        }
    }
}

impl Write for LineQueue {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        match self.tx.as_ref().map(|tx| tx.try_send(chunk)) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;

    /// (released, what was written so far)
    type Gate = (Mutex<(bool, Vec<u8>)>, Condvar);

    /// A writer that blocks until released, like a pipe nobody reads.
    #[derive(Clone, Default)]
    struct Stalled(Arc<Gate>);

    impl Write for Stalled {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut g = cv
                .wait_while(lock.lock().expect("lock"), |(open, _)| !*open)
                .expect("lock");
            g.1.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_costs_lines_not_time() {
        let out = Stalled::default();
        let mut q = LineQueue::spawn(out.clone(), 4).expect("spawn");
        let start = std::time::Instant::now();
        for i in 0..100 {
            writeln!(q, "line {i}").expect("write");
            q.flush().expect("flush");
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never blocked");
        // Four wait in the queue, and the writer holds one (if it had
        // taken it by the time the queue filled).
        let dropped = q.dropped();
        assert!((95..=96).contains(&dropped), "{dropped} dropped");
        let (lock, cv) = &*out.0;
        lock.lock().expect("lock").0 = true;
        cv.notify_all();
        q.finish(Duration::from_secs(5));
        let written = String::from_utf8(lock.lock().expect("lock").1.clone()).expect("utf-8");
        assert_eq!(written.lines().count() as u64, 100 - dropped, "{written}");
        assert!(written.starts_with("line 0\n"), "{written}");
    }
}
