//! How log entries and snapshot bodies are stored: MessagePack with named fields behind a tag
//! byte, or JSON as written before (read, never written).
//!
//! MessagePack (rmp-serde) rather than a positional format (postcard, bincode): the state's types
//! use `skip_serializing_if`, internally tagged and untagged enums and `serde_json::Value`, which
//! need a self-describing format; with field names, a field added with `#[serde(default)]` still
//! reads old data, as with JSON. Encoded as "human readable" (addresses and networks as strings,
//! as in JSON): serde reads untagged enums (a [`super::batch::Proposal`]) through a buffer that
//! always asks for the human-readable form. JSON always starts with `{` here (entries and snapshot bodies
//! are objects), so the tag byte [`TAG_MSGPACK`] tells the two apart.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First byte of a MessagePack record (never the first byte of a JSON object).
pub const TAG_MSGPACK: u8 = 0xB1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding MessagePack: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("decoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown encoding (first byte {0:#04x}): neither MessagePack nor JSON")]
    Unknown(u8),
    #[error("empty record")]
    Empty,
}

/// Encodes `value` as [`TAG_MSGPACK`] then MessagePack with named fields.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![TAG_MSGPACK];
    value.serialize(
        &mut rmp_serde::Serializer::new(&mut out)
            .with_struct_map()
            .with_human_readable(),
    )?;
    Ok(out)
}

/// Decodes what [`encode`] wrote, or JSON written by an earlier version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.first() {
        Some(&TAG_MSGPACK) => {
            let mut de = rmp_serde::Deserializer::from_read_ref(&bytes[1..]).with_human_readable();
            Ok(T::deserialize(&mut de)?)
        }
        Some(b'{') | Some(b' ') | Some(b'\n') => Ok(serde_json::from_slice(bytes)?),
        Some(other) => Err(CodecError::Unknown(*other)),
        None => Err(CodecError::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ClusterState, Command, CommandResult, NetworkSettings, NodeRecord, Op};

    fn cmd(op_id: &str, op: Op) -> Command {
        Command {
            op_id: op_id.into(),
            at_ms: 5,
            op,
        }
    }

    /// A state touching what the types' serde attributes do: skipped fields, defaults,
    /// internally tagged results, JSON values in specs, integer map keys, IP networks.
    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let yaml = "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: c\nspec:\n  data:\n    a: \"1\"\n    b: \"two\"\n---\nkind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: web\nspec:\n  image: busybox\n  replicas: 2\n  envs:\n    - X=(( .a ))\n  labels:\n    tier: web\n";
        let objects = crate::definitions::parse_str("t", yaml).expect("definitions");
        let network = NetworkSettings {
            cidr: "10.10.0.0/16".parse().unwrap(),
            subnet_len: 24,
            backend: "vxlan".into(),
        };
        let node = NodeRecord {
            id: 0,
            name: "n1".into(),
            host: "h".into(),
            domain: "d".into(),
            ip: "10.0.0.1".into(),
            public_ip: None,
            api_port: 1443,
            raft_port: 9212,
            labels: [("zone".to_string(), "a".to_string())].into(),
            joined_ms: 3,
            schedulable: true,
            lease: Some("10.10.1.0/24".parse().unwrap()),
            vtep_mac: Some("aa:bb:cc:dd:ee:ff".into()),
            wg_port: None,
            wg_public_key: None,
        };
        for c in [
            cmd("net", Op::SetNetwork { network }),
            cmd("node", Op::RegisterNode { node }),
            cmd(
                "apply",
                Op::Apply {
                    objects,
                    owner: None,
                },
            ),
            cmd("bad", Op::RemoveNode { id: 77 }),
            cmd("noop", Op::Noop),
        ] {
            s.apply(&c);
        }
        s
    }

    #[test]
    fn a_state_round_trips_and_json_of_the_earlier_version_reads() {
        let s = state();
        assert!(!s.objects.is_empty() && !s.nodes.is_empty());
        assert!(matches!(
            s.recent_result("bad"),
            Some(CommandResult::Rejected { .. })
        ));
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes[0], TAG_MSGPACK);
        let back: ClusterState = decode(&bytes).unwrap();
        // `readers_index` is derived, not stored: compare what is serialized.
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
        let json = serde_json::to_vec(&s).unwrap();
        assert!(
            bytes.len() < json.len(),
            "{} >= {}",
            bytes.len(),
            json.len()
        );
        let from_json: ClusterState = decode(&json).unwrap();
        assert_eq!(
            serde_json::to_value(&from_json).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
    }

    /// A log entry's payload is an untagged enum: read back through serde's buffer, which wants
    /// addresses in their human-readable form.
    #[test]
    fn entries_with_addresses_round_trip() {
        let node: NodeRecord = state().nodes.values().next().unwrap().clone();
        assert!(node.lease.is_some());
        let one = super::super::batch::Proposal::One(cmd("n", Op::RegisterNode { node }));
        let batch = super::super::batch::Proposal::Batch {
            batch: vec![one.commands()[0].clone(), cmd("x", Op::Noop)],
        };
        for proposal in [one, batch] {
            let back: super::super::batch::Proposal = decode(&encode(&proposal).unwrap()).unwrap();
            assert_eq!(back, proposal);
        }
    }

    #[test]
    fn an_unknown_encoding_is_refused_by_name() {
        let e = decode::<ClusterState>(&[0x07, 1, 2]).unwrap_err();
        assert!(
            e.to_string().contains("unknown encoding (first byte 0x07)"),
            "{e}"
        );
        assert!(matches!(
            decode::<ClusterState>(&[]),
            Err(CodecError::Empty)
        ));
        assert!(decode::<ClusterState>(&[TAG_MSGPACK, 0xc1]).is_err());
    }
}
