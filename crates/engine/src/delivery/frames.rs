//! The server → client frames of the WebSocket protocol, serialised once each, straight from
//! borrowed data (no JSON DOM): `ack`, `error`, `adjust`.

use std::collections::BTreeMap;
use trimtab_wire::Code;

use bytestring::ByteString;
use serde::Serialize;

use crate::pipeline::Decision;

fn to_frame<T: Serialize>(v: &T) -> ByteString {
    // Plain structs of strings and numbers: serialising into a Vec cannot fail.
    let bytes = serde_json::to_vec(v).expect("frame is serialisable");
    // serde_json writes UTF-8 only.
    ByteString::try_from(bytes).expect("serde_json writes UTF-8")
}

#[derive(Serialize)]
struct Ack<'a, I: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    ids: I,
    duplicates: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_consented: Option<usize>,
    #[serde(skip)]
    _p: std::marker::PhantomData<&'a ()>,
}

/// `{"type":"ack","ids":[…],"duplicates":n}`: the ids are durable (or were duplicates) and the
/// client may forget them.
pub fn ack<'a>(ids: impl Iterator<Item = &'a str> + Clone, duplicates: usize) -> ByteString {
    to_frame(&Ack {
        kind: "ack",
        ids: Iter(ids),
        duplicates,
        not_consented: None,
        _p: std::marker::PhantomData,
    })
}

/// The ack of a batch none of whose events was stored because none had analytics consent.
pub fn ack_not_consented(ids: &[String]) -> ByteString {
    to_frame(&Ack {
        kind: "ack",
        ids,
        duplicates: 0,
        not_consented: Some(ids.len()),
        _p: std::marker::PhantomData,
    })
}

/// Serialises an iterator as a JSON array.
struct Iter<I>(I);

impl<'a, I: Iterator<Item = &'a str> + Clone> Serialize for Iter<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

#[derive(Serialize)]
struct Error<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: Code,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ids: &'a [String],
}

/// `{"type":"error","code","message","path"?,"ids"?}`; `ids` names events the client should
/// retry (or drop, for input errors).
pub fn error(code: Code, message: &str, path: Option<&str>, ids: &[String]) -> ByteString {
    to_frame(&Error {
        kind: "error",
        code,
        message,
        path,
        ids,
    })
}

#[derive(Serialize)]
struct Wire<'a> {
    id: &'a str,
    source: &'a str,
    rule: &'a Option<String>,
    experiment: &'a Option<String>,
    arm: &'a Option<String>,
    propensity: f64,
}

#[derive(Serialize)]
struct Adjust<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    slot: &'a str,
    variant: &'a str,
    params: &'a BTreeMap<String, String>,
    decision: Wire<'a>,
}

/// `{"type":"adjust","slot","variant","params","decision":{…}}` of a decision.
pub fn adjust(d: &Decision) -> ByteString {
    to_frame(&Adjust {
        kind: "adjust",
        slot: &d.slot,
        variant: &d.variant,
        params: &d.params,
        decision: Wire {
            id: &d.id,
            source: &d.source,
            rule: &d.rule,
            experiment: &d.experiment,
            arm: &d.arm,
            propensity: d.propensity,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(b: &ByteString) -> Value {
        serde_json::from_str(b).unwrap()
    }

    #[test]
    fn frames_have_the_v1_shapes() {
        let ids = ["a".to_string(), "b\"q".to_string()];
        assert_eq!(
            parse(&ack(ids.iter().map(String::as_str), 1)),
            json!({"type":"ack","ids":["a","b\"q"],"duplicates":1})
        );
        assert_eq!(
            parse(&ack_not_consented(&ids)),
            json!({"type":"ack","ids":["a","b\"q"],"duplicates":0,"not_consented":2})
        );
        assert_eq!(
            parse(&error(Code::Overloaded, "busy", None, &ids)),
            json!({"type":"error","code":"overloaded","message":"busy","ids":["a","b\"q"]})
        );
        assert_eq!(
            parse(&error(Code::InvalidType, "x", Some("events[0].ts"), &[])),
            json!({"type":"error","code":"invalid_type","message":"x","path":"events[0].ts"})
        );
        let d = Decision {
            id: "00ff".into(),
            slot: "offer".into(),
            variant: "discount".into(),
            params: BTreeMap::from([("code".into(), "READ15".into())]),
            source: "rule".into(),
            rule: Some("scroll_offer".into()),
            experiment: None,
            arm: None,
            propensity: 1.0,
            ts: 5,
            session: "s".into(),
            trigger: None,
        };
        // The same object the v1 code built with json!().
        assert_eq!(
            parse(&adjust(&d)),
            serde_json::from_str::<Value>(&d.adjust_message()).unwrap()
        );
    }
}
