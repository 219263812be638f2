//! Architecture-specific setup (x86_64 only).

pub mod x86_64;
