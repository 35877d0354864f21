//! Distributed execution: the communication trait and its in-process implementations
//! (`comm`), and expert parallelism inside the MoE layer (`expert_parallel`). MPI lives in the
//! `moe-mpi` crate, behind the `mpi` feature of the `moe` binary.

pub mod comm;
pub mod expert_parallel;

pub use comm::{thread_ranks, Comm, CommError, SingleRank, ThreadRank};
pub use expert_parallel::{ExpertParallel, Shard};
