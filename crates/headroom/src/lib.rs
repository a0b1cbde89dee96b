//! The `headroom` command: the simulator now; the server, reconciliation and
//! the load tool as they arrive.

pub mod random;
pub mod simulate;
pub mod worker;
pub mod workload;
