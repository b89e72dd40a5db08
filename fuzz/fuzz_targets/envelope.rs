//! The simd-json in-place envelope parser (tape, no value tree) against serde_json.
//!
//! The input is the text message as-is. serde_json (through an order- and duplicate-keeping
//! tree, `customws_fuzz::json`) decides independently which rules of gateway.md §4 the text
//! breaks; then:
//! - nothing broken → the parser accepts, with the same `pid`, `type`, `targetUserId`, and a
//!   `payload` equal as a `serde_json::Value`;
//! - something broken → the parser refuses, naming one of the broken rules (its code is 400,
//!   413 or 422 and its `originalPid` is the request's pid when that could be read);
//! - serde_json refuses the text → the parser refuses it too.
//!
//! The payload is written back from the tape (`to_json_bytes`, the `data_event` writer's
//! walk) and read with serde_json.
//!
//! Documented differences: simd-json refuses integer literals outside i64/u64 (serde_json
//! reads them as floats), and may round a float literal with more than 19 significant digits
//! one ulp away from serde_json, and reads `-0` as the integer 0 (see `json::same_json`).
#![no_main]

use customws::proto::envelope::{
    to_json_bytes, EnvelopeLimits, EnvelopeParser, EnvelopeRule, MAX_USER_ID,
};
use customws_fuzz::json::{self, Tree};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const LIMITS: EnvelopeLimits = EnvelopeLimits {
    max_depth: 16,
    max_pid_len: 128,
};

/// The user-id rule, read from serde_json's view.
fn is_user_id(v: &Tree) -> Option<u64> {
    let id = match v {
        Tree::Number(n) => n.as_u64()?,
        Tree::String(s) => {
            let canonical = !s.is_empty()
                && s.len() <= 16
                && s.bytes().all(|b| b.is_ascii_digit())
                && !s.starts_with('0');
            if !canonical {
                return None;
            }
            s.parse().ok()?
        }
        _ => return None,
    };
    (1..=MAX_USER_ID).contains(&id).then_some(id)
}

struct Expected<'t> {
    broken: Vec<EnvelopeRule>,
    pid: Option<&'t str>,
    kind: Option<&'t str>,
    target: Option<u64>,
    payload: Option<&'t Tree>,
    /// `pid` appears more than once (the pre-scan may then pick a later one).
    pid_repeated: bool,
}

fn expected(tree: &Tree) -> Expected<'_> {
    let mut broken = Vec::new();
    if tree.depth() > LIMITS.max_depth {
        broken.push(EnvelopeRule::TooDeep);
    }
    let Tree::Object(fields) = tree else {
        broken.push(EnvelopeRule::NotAnObject);
        return Expected {
            broken,
            pid: None,
            kind: None,
            target: None,
            payload: None,
            pid_repeated: false,
        };
    };
    let first = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let count = |name: &str| fields.iter().filter(|(k, _)| k == name).count();
    if ["type", "pid", "targetUserId", "payload"]
        .iter()
        .any(|k| count(k) > 1)
    {
        broken.push(EnvelopeRule::DuplicateField);
    }
    let pid = match first("pid") {
        None | Some(Tree::Null) => None,
        Some(Tree::String(s)) if s.len() > LIMITS.max_pid_len => {
            broken.push(EnvelopeRule::PidTooLong);
            None
        }
        Some(Tree::String(s)) => Some(s.as_str()).filter(|s| !s.is_empty()),
        Some(_) => {
            broken.push(EnvelopeRule::PidNotString);
            None
        }
    };
    let kind = match first("type") {
        None => {
            broken.push(EnvelopeRule::MissingType);
            None
        }
        Some(Tree::String(s)) => Some(s.as_str()),
        Some(_) => {
            broken.push(EnvelopeRule::TypeNotString);
            None
        }
    };
    let payload = first("payload");
    if payload.is_none() {
        broken.push(EnvelopeRule::MissingPayload);
    }
    let target = first("targetUserId").and_then(|v| {
        let id = is_user_id(v);
        if id.is_none() {
            broken.push(EnvelopeRule::InvalidTargetUserId);
        }
        id
    });
    Expected {
        broken,
        pid,
        kind,
        target,
        payload,
        pid_repeated: count("pid") > 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let reference = json::parse(data);
    let mut buf = data.to_vec();
    let mut parser = EnvelopeParser::new(LIMITS);
    let result = parser.parse(&mut buf);

    if let Err(e) = &result {
        assert!(matches!(e.code, 400 | 413 | 422), "code {}", e.code);
        assert_eq!(e.code, e.rule.code());
        if let Some(p) = &e.original_pid {
            assert!(
                !p.is_empty() && p.len() <= LIMITS.max_pid_len,
                "echoed pid {p:?}"
            );
        }
    }
    let Some(tree) = reference else {
        assert!(
            result.is_err(),
            "serde_json refuses the text but the envelope parser accepted it"
        );
        return;
    };
    let want = expected(&tree);
    match result {
        Ok(env) => {
            assert!(
                want.broken.is_empty(),
                "accepted although it breaks {:?}",
                want.broken
            );
            assert_eq!(env.pid, want.pid, "pid");
            assert_eq!(Some(env.kind.as_str()), want.kind, "type");
            assert_eq!(env.target_user_id, want.target, "targetUserId");
            let payload = want.payload.expect("payload checked above");
            if !payload.has_duplicate_keys() {
                let ours: Value = serde_json::from_slice(&to_json_bytes(env.payload()))
                    .expect("the payload is written back as valid JSON");
                let reference = payload.to_value();
                assert!(
                    json::same_json(&ours, &reference),
                    "payload: {ours} vs serde_json's {reference}"
                );
            }
            // The helpers the gateway calls never panic on any accepted payload.
            let mut ids = Vec::new();
            let _ = env.target_users(3, &mut ids);
            let _ = env.user_ids(3, &mut ids);
            let _ = env.presence_target_user_id();
            let _ = (env.resource(), env.action(), env.status(), env.data_token());
            let _ = to_json_bytes(env.payload());
        }
        Err(e) => {
            let documented =
                e.rule == EnvelopeRule::MalformedJson && json::has_out_of_range_integer(data);
            assert!(
                want.broken.contains(&e.rule) || documented,
                "refused with {:?} but serde_json sees only {:?}",
                e.rule,
                want.broken
            );
            match e.rule {
                // The pre-scan's pid is best effort, but never another value.
                EnvelopeRule::TooDeep | EnvelopeRule::MalformedJson => {
                    if let (Some(p), false) = (&e.original_pid, want.pid_repeated) {
                        assert_eq!(Some(p.as_str()), want.pid, "originalPid");
                    }
                }
                EnvelopeRule::PidNotString | EnvelopeRule::PidTooLong => {}
                _ => assert_eq!(e.original_pid.as_deref(), want.pid, "originalPid"),
            }
        }
    }
});
