//! The parts of the `depot` binary that other crates need: the configuration parser (the fuzz
//! targets feed it outside bytes).

pub mod config;
