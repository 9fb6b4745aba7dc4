//! Shared pieces of Depot services.
