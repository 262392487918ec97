//! The `streamscore` command-line program's library side: the local stack (tansu broker and
//! the built-in registry as background processes) and the commands' building blocks, so that
//! tests drive the same code the CLI runs.

pub mod demo;
pub mod stack;
