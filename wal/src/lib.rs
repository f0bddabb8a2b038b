//! surge-wal (being written).
