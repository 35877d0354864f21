//! Distributed execution: the communication trait and its in-process implementations
//! (`comm`), expert parallelism inside the MoE layer (`expert_parallel`) data parallelism
//! around it (`data_parallel`), load-balanced expert placement (`placement`) and moving
//! experts when it changes (`migrate`), and checkpoints written by every rank (`save`). MPI lives in the
//! `moe-mpi` crate, behind the `mpi` feature of the `moe` binary.

pub mod comm;
pub mod data_parallel;
pub mod expert_parallel;
pub mod migrate;
pub mod placement;
pub mod save;

pub use comm::{thread_ranks, Comm, CommError, CommResult, SingleRank, ThreadRank};
pub use data_parallel::{pack_stats, take_shard, unpack_stats, Dist};
pub use expert_parallel::ExpertParallel;
pub use placement::{Placement, Shard};
