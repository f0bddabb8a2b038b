//! Root package of the surge workspace: it owns `benches/` and `examples/`.
