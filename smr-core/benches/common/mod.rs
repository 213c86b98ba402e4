//! What the state benchmarks apply: 200-byte configuration objects, one per command.

use std::collections::BTreeMap;

use smr_core::definitions::{DataSpec, Object, Spec};
use smr_core::state::{Command, Op};

/// Configuration object `n` of about 200 bytes (as JSON in the log); `version` makes its data
/// differ from every other version's.
pub fn object(n: usize, version: usize) -> Object {
    let mut data = BTreeMap::new();
    data.insert("database".to_string(), format!("app-{n}"));
    data.insert("port".to_string(), "3306".to_string());
    data.insert("version".to_string(), format!("{version:08}"));
    data.insert("padding".to_string(), "x".repeat(48));
    Object::new(
        "bench",
        format!("config-{n:06}"),
        Spec::Configuration(DataSpec { data: data.into() }),
    )
}

/// Command number `op` applying `object`.
pub fn command(op: usize, object: Object) -> Command {
    Command {
        op_id: format!("{op:032x}"),
        at_ms: 1_700_000_000_000 + op as u64,
        op: Op::Apply {
            objects: vec![object],
            owner: None,
        },
    }
}
