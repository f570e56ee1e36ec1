//! Consumer-group coordinator (placeholder until implemented).
