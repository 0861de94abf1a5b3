//! Exec-later gate: TODO (helper)
