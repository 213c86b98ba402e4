//! API JSON request bodies (mTLS clients, and `POST /join` from anyone holding a token): no body
//! panics the parsing, the validation or the state machine applying what was accepted; an
//! accepted apply is idempotent and survives a JSON round trip.
#![no_main]

use agent::api::types::{
    ApplyRequest, DeleteRequest, ExecRequest, JoinRequest, ProposeRequest, SignRequest,
    TokenRequest,
};
use agent::definitions::validate;
use agent::state::{ClusterState, Command, CommandResult, Op, Outcome};
use libfuzzer_sys::fuzz_target;

fn command(op: Op) -> Command {
    Command {
        op_id: "fuzz".into(),
        at_ms: 1,
        op,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 7 {
        0 => {
            let Ok(req) = serde_json::from_slice::<ApplyRequest>(body) else {
                return;
            };
            if req.objects.is_empty() || req.objects.iter().any(|o| validate(o).is_err()) {
                return;
            }
            let json = serde_json::to_vec(&req.objects).expect("objects print as JSON");
            let again: Vec<agent::definitions::Object> =
                serde_json::from_slice(&json).expect("printed JSON parses");
            assert_eq!(again, req.objects, "JSON round trip changed the objects");
            let mut state = ClusterState::default();
            let first = state.apply(&command(Op::Apply {
                objects: req.objects.clone(),
                owner: None,
            }));
            let mut second = command(Op::Apply {
                objects: req.objects,
                owner: None,
            });
            second.op_id = "fuzz-again".into();
            if let (CommandResult::Objects { .. }, CommandResult::Objects { outcomes, .. }) =
                (&first, state.apply(&second))
            {
                assert!(
                    outcomes.iter().all(|o| o.outcome == Outcome::Unchanged),
                    "applying the same objects twice changed something: {outcomes:?}"
                );
            }
        }
        1 => {
            let Ok(req) = serde_json::from_slice::<DeleteRequest>(body) else {
                return;
            };
            let mut state = ClusterState::default();
            let _ = state.apply(&command(Op::Delete { keys: req.keys }));
        }
        2 => {
            let _ = serde_json::from_slice::<TokenRequest>(body);
        }
        3 => {
            if let Ok(req) = serde_json::from_slice::<JoinRequest>(body) {
                let _ = req.token.parse::<agent::pki::JoinToken>();
                let _ = agent::definitions::is_dns_label(&req.name);
            }
        }
        4 => {
            let _ = serde_json::from_slice::<SignRequest>(body);
        }
        5 => {
            let _ = serde_json::from_slice::<ExecRequest>(body);
        }
        _ => {
            // What a follower forwards to the leader (node certificates only), and what the
            // Raft log holds: any command is applied without panicking.
            if let Ok(req) = serde_json::from_slice::<ProposeRequest>(body) {
                let mut state = ClusterState::default();
                let _ = state.apply(&req.command);
                let _ = state.apply(&req.command);
            }
        }
    }
});
