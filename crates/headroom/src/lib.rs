//! The `headroom` command: the server, the admin client, the simulator, the
//! load tool and the throwaway PostgreSQL servers that its baselines and the
//! tests start.

pub mod bench;
pub mod client;
pub mod payments;
pub mod random;
pub mod server;
pub mod simulate;
pub mod throwaway_postgres;
pub mod worker;
pub mod workload;
