//! The in-memory twin: the same commands through the same core, with a log
//! kept in memory and faults injected on write and sync. A command that
//! meets a fault changes nothing: the engine is put back as it was.

use std::sync::{Arc, Mutex};

use headroom_core::{Catalog, Clock, Engine};

use crate::command::{Command, apply};
use crate::log::Logged;
use crate::{Reply, Store, StoreError};

/// Which writes and syncs fail: about one in `write_failure_one_in` writes
/// and one in `sync_failure_one_in` syncs, chosen by a seeded generator so
/// that a failing run replays.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub seed: u64,
    /// 0: never.
    pub write_failure_one_in: u64,
    pub sync_failure_one_in: u64,
}

struct Inner {
    engine: Engine,
    /// Everything acknowledged, in order: what a restart replays.
    log: Vec<Logged>,
    faults: Faults,
    random: u64,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    pub fn new(catalog: Arc<Catalog>, clock: Arc<dyn Clock>, faults: Faults) -> MemoryStore {
        let inner = Inner { engine: Engine::new(catalog), log: Vec::new(), faults, random: faults.seed };
        MemoryStore { inner: Mutex::new(inner), clock }
    }

    /// What a restart would recover: the acknowledged log replayed.
    pub fn recover(&self) -> Engine {
        let inner = self.inner.lock().expect("not poisoned");
        let mut engine = Engine::new(Arc::new(inner.engine.catalog().clone()));
        for logged in &inner.log {
            let response =
                apply(&mut engine, &logged.command, logged.at).expect("an acknowledged command applies again");
            assert_eq!(response.events(), logged.events.as_slice(), "replay recorded other events");
        }
        engine
    }

    pub fn acknowledged(&self) -> usize {
        self.inner.lock().expect("not poisoned").log.len()
    }
}

impl Inner {
    fn fails(&mut self, one_in: u64) -> bool {
        if one_in == 0 {
            return false;
        }
        // SplitMix64 step.
        self.random = self.random.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.random;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (mixed ^ (mixed >> 31)).is_multiple_of(one_in)
    }
}

impl Store for MemoryStore {
    fn submit(&self, command: Command, reply: Reply) {
        let now = self.clock.now();
        let mut inner = self.inner.lock().expect("not poisoned");
        // The transaction: keep the state before, apply, then "write" and
        // "sync"; on a fault, put the state back.
        let before = inner.engine.clone();
        let result = match apply(&mut inner.engine, &command, now) {
            Err(refusal) => Err(StoreError::Refused(refusal)),
            Ok(response) => {
                let faults = inner.faults;
                let write_fails = inner.fails(faults.write_failure_one_in);
                let sync_fails = !write_fails && inner.fails(faults.sync_failure_one_in);
                if write_fails || sync_fails {
                    inner.engine = before;
                    let what = if write_fails { "write" } else { "sync" };
                    Err(StoreError::Unavailable(format!("injected {what} failure")))
                } else {
                    let events = response.events().to_vec();
                    inner.log.push(Logged { at: now, command, events });
                    Ok(response)
                }
            }
        };
        drop(inner);
        reply(result);
    }

    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Engine) -> T + Send + 'static,
        answer: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) {
        let value = read(&self.inner.lock().expect("not poisoned").engine);
        answer(Ok(value));
    }
}
