//! The real backend (placeholder while the sim lands).
