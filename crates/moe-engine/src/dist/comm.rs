//! Communication between the ranks of an expert-parallel job: the collectives the engine needs
//! (all-to-all-v, all-reduce, broadcast) behind a trait, implemented here for one rank and for
//! ranks that are threads of one process (tests), and by the `moe-mpi` crate over MPI.
//! A failed collective returns an error naming the rank; `abort` ends the whole job.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Why a collective failed.
#[derive(Debug, thiserror::Error)]
#[error("rank {rank}: {what}")]
pub struct CommError {
    pub rank: usize,
    pub what: String,
}

pub type CommResult<T> = std::result::Result<T, CommError>;

/// The collectives of an expert-parallel job. Every rank calls the same collectives in the
/// same order.
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sends `send_counts[q]` bytes to each rank q (consecutive pieces of `send`, in rank order)
    /// and receives `recv_counts[q]` bytes from each rank q into consecutive pieces of `recv`.
    fn all_to_all_v(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> CommResult<()>;
    /// Element-wise sum over ranks, in place; every rank ends with the same values.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> CommResult<()>;
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> CommResult<()>;
    /// Copies `buf` of rank `root` into `buf` of every rank (same length everywhere).
    fn broadcast(&self, buf: &mut [u8], root: usize) -> CommResult<()>;
    /// Ends every rank of the job with `message` (MPI_Abort); does not return.
    fn abort(&self, message: &str) -> !;
}

/// A job of one rank: collectives are copies.
pub struct SingleRank;

impl Comm for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_to_all_v(&self, send: &[u8], sc: &[usize], recv: &mut [u8], rc: &[usize]) -> CommResult<()> {
        if sc != rc {
            return Err(CommError { rank: 0, what: format!("sends {sc:?} bytes but expects {rc:?}") });
        }
        recv[..sc[0]].copy_from_slice(&send[..sc[0]]);
        Ok(())
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> CommResult<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> CommResult<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [u8], _: usize) -> CommResult<()> {
        Ok(())
    }
    fn abort(&self, message: &str) -> ! {
        eprintln!("error: {message}");
        std::process::exit(1)
    }
}

/// A reusable barrier that gives up after a timeout or when a rank breaks it, so a rank that
/// died or stopped calling collectives ends the others with an error instead of a hang.
struct Gate {
    state: Mutex<(usize, u64, Option<String>)>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self, n: usize, rank: usize, timeout: Duration) -> CommResult<()> {
        let fail = |what: String| Err(CommError { rank, what });
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &s.2 {
            return fail(why.clone());
        }
        let generation = s.1;
        s.0 += 1;
        if s.0 == n {
            s.0 = 0;
            s.1 += 1;
            self.cv.notify_all();
            return Ok(());
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (g, _) = self.cv.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner());
            s = g;
            if s.1 != generation {
                return Ok(());
            }
            if let Some(why) = &s.2 {
                return fail(why.clone());
            }
            if std::time::Instant::now() >= deadline {
                let why = format!("a rank did not reach a collective within {timeout:?}");
                s.2 = Some(why.clone());
                self.cv.notify_all();
                return fail(why);
            }
        }
    }
    fn break_with(&self, why: String) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.2.get_or_insert(why);
        self.cv.notify_all();
    }
}

struct Hub {
    n: usize,
    gate: Gate,
    /// [src * n + dst] bytes in flight.
    mail: Mutex<Vec<Vec<u8>>>,
    timeout: Duration,
}

/// One rank of an in-process job (a thread); see [`thread_ranks`].
pub struct ThreadRank {
    rank: usize,
    hub: Arc<Hub>,
}

/// The ranks of an in-process job of `n` ranks; hand one to each thread. A collective that
/// waits longer than `timeout` for the other ranks fails on every rank.
pub fn thread_ranks(n: usize, timeout: Duration) -> Vec<ThreadRank> {
    let hub = Arc::new(Hub {
        n,
        gate: Gate { state: Mutex::new((0, 0, None)), cv: Condvar::new() },
        mail: Mutex::new(vec![vec![]; n * n]),
        timeout,
    });
    (0..n).map(|rank| ThreadRank { rank, hub: hub.clone() }).collect()
}

impl ThreadRank {
    fn sync(&self) -> CommResult<()> {
        self.hub.gate.wait(self.hub.n, self.rank, self.hub.timeout)
    }
    /// Posts one piece per destination, then takes one piece from every source.
    fn exchange(&self, pieces: Vec<Vec<u8>>) -> CommResult<Vec<Vec<u8>>> {
        let n = self.hub.n;
        {
            let mut m = self.hub.mail.lock().unwrap_or_else(|p| p.into_inner());
            for (q, piece) in pieces.into_iter().enumerate() {
                m[self.rank * n + q] = piece;
            }
        }
        self.sync()?;
        let got = {
            let mut m = self.hub.mail.lock().unwrap_or_else(|p| p.into_inner());
            (0..n).map(|s| std::mem::take(&mut m[s * n + self.rank])).collect()
        };
        self.sync()?;
        Ok(got)
    }
    fn reduce<T: Copy + std::ops::AddAssign>(
        &self,
        buf: &mut [T],
        to: fn(&[T]) -> Vec<u8>,
        from: fn(&[u8]) -> Vec<T>,
    ) -> CommResult<()> {
        let bytes = to(buf);
        let all = self.exchange(vec![bytes; self.hub.n])?;
        // Summed in rank order on every rank: identical results everywhere.
        let mut acc: Vec<T> = from(&all[0]);
        for piece in &all[1..] {
            let v = from(piece);
            if v.len() != acc.len() {
                return Err(CommError { rank: self.rank, what: "all-reduce buffers differ in length".into() });
            }
            acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
        }
        buf.copy_from_slice(&acc);
        Ok(())
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f32_from(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f64_from(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
}

impl Comm for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.hub.n
    }
    fn all_to_all_v(&self, send: &[u8], sc: &[usize], recv: &mut [u8], rc: &[usize]) -> CommResult<()> {
        let mut off = 0;
        let pieces = sc
            .iter()
            .map(|&c| {
                off += c;
                send[off - c..off].to_vec()
            })
            .collect();
        let got = self.exchange(pieces)?;
        let mut off = 0;
        for (s, (piece, &want)) in got.iter().zip(rc).enumerate() {
            if piece.len() != want {
                return Err(CommError {
                    rank: self.rank,
                    what: format!("expected {want} bytes from rank {s}, got {}", piece.len()),
                });
            }
            recv[off..off + want].copy_from_slice(piece);
            off += want;
        }
        Ok(())
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> CommResult<()> {
        self.reduce(buf, f32_bytes, f32_from)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> CommResult<()> {
        self.reduce(buf, f64_bytes, f64_from)
    }
    fn broadcast(&self, buf: &mut [u8], root: usize) -> CommResult<()> {
        let pieces = if self.rank == root { vec![buf.to_vec(); self.hub.n] } else { vec![vec![]; self.hub.n] };
        let got = self.exchange(pieces)?;
        if got[root].len() != buf.len() {
            return Err(CommError { rank: self.rank, what: "broadcast buffers differ in length".into() });
        }
        buf.copy_from_slice(&got[root]);
        Ok(())
    }
    fn abort(&self, message: &str) -> ! {
        self.hub.gate.break_with(format!("rank {} aborted: {message}", self.rank));
        panic!("rank {} aborted: {message}", self.rank)
    }
}
