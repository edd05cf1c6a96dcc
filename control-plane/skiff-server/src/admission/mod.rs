//! What happens to an object between decoding and storage: defaulting and validation.

pub mod defaults;
pub mod validation;
