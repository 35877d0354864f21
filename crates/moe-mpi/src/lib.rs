//! The engine's `Comm` over MPI (Open MPI through the `mpi` crate): all-to-all-v, all-reduce
//! and broadcast on MPI_COMM_WORLD. Built only with the `mpi` feature of the `moe` binary,
//! because it needs a system MPI (Debian: `libopenmpi-dev`, plus `libclang-dev` for bindgen).
//! MPI's default error handler is fatal: a failed collective or a rank that dies ends the whole
//! job (mpirun reports which rank), so these calls never return an error themselves.

use moe_engine::dist::{Comm, CommError, CommResult};
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

/// MPI_COMM_WORLD of this process; MPI is finalised when it is dropped.
pub struct MpiComm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Declared last: dropped (MPI_Finalize) after the communicator.
    _universe: Universe,
}

// SAFETY: MPI is initialised with MPI_THREAD_FUNNELED and the engine calls collectives from
// the thread that created the MpiComm only (the training loop; never from rayon workers).
unsafe impl Send for MpiComm {}
unsafe impl Sync for MpiComm {}

impl MpiComm {
    /// Initialises MPI; fails if it was initialised already.
    pub fn init() -> Result<Self, String> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or("MPI is already initialised in this process")?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(MpiComm { world, rank, size, _universe: universe })
    }

    fn counts(&self, bytes: &[usize]) -> CommResult<(Vec<Count>, Vec<Count>)> {
        let mut displs = Vec::with_capacity(bytes.len());
        let mut off: usize = 0;
        for &b in bytes {
            displs.push(off);
            off += b;
        }
        if off > Count::MAX as usize {
            return Err(CommError {
                rank: self.rank,
                what: format!("an all-to-all of {off} bytes exceeds MPI's 2 GiB count limit"),
            });
        }
        Ok((bytes.iter().map(|&b| b as Count).collect(), displs.iter().map(|&d| d as Count).collect()))
    }
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_to_all_v(&self, send: &[u8], sc: &[usize], recv: &mut [u8], rc: &[usize]) -> CommResult<()> {
        let (scounts, sdispls) = self.counts(sc)?;
        let (rcounts, rdispls) = self.counts(rc)?;
        // An empty slice's dangling pointer is 0x1, which Open MPI reads as MPI_IN_PLACE:
        // hand it a real (unused) byte instead.
        let (mut dummy_s, mut dummy_r) = ([0u8; 1], [0u8; 1]);
        let send: &[u8] = if send.is_empty() { &mut dummy_s[..] } else { send };
        let recv: &mut [u8] = if recv.is_empty() { &mut dummy_r[..] } else { recv };
        let s = Partition::new(send, scounts, sdispls);
        let mut r = PartitionMut::new(recv, rcounts, rdispls);
        self.world.all_to_all_varcount_into(&s, &mut r);
        Ok(())
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> CommResult<()> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> CommResult<()> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
        Ok(())
    }
    fn broadcast(&self, buf: &mut [u8], root: usize) -> CommResult<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
    fn abort(&self, message: &str) -> ! {
        eprintln!("error: rank {} of {}: {message}", self.rank, self.size);
        self.world.abort(1)
    }
}
