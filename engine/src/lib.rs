//! surge-engine
