//! The `headroom` command: the simulator now; the server, reconciliation and
//! the load tool as they arrive.

pub mod bench;
pub mod client;
pub mod random;
pub mod server;
pub mod simulate;
pub mod worker;
pub mod workload;
