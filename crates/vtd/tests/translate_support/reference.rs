//! A small reference walker, written plainly from the spec and independent of the model's
//! walker code: used by the property tests.
