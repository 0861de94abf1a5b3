//! Shell command analysis: TODO (helper)
